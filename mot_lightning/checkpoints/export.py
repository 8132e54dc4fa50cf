"""A trained model as one folder that travels (weights, config, tokenizers): what ``mot export`` writes
(``commands/export.py``; ``--format hf`` writes a Hugging Face folder instead, ``hf_export.py``).

The folder is the one described in ``weights.py`` (safetensors weights, ``model.yaml`` for plain PyTorch,
``config.yaml`` + tokenizer files for ``mot generate --export DIR``, a README with the snippet that
rebuilds ``TokenLM``); ``export.json`` and the README say which weights it holds (``live`` or ``ema``).
A sharded FSDP2 checkpoint is consolidated first (``mot checkpoint consolidate``, which keeps the EMA
averages).
Pretrained (diffusers) tokenizers are referenced by their folder in config.yaml, not copied.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from mot_lightning.checkpoints.weights import (
    CONFIG_FILE,
    EMA,
    EXPORT_FILE,
    EXPORT_FORMAT,
    LIVE,
    MODEL_FILE,
    TOKENIZER_DIR,
    WEIGHTS_FILE,
    exported_model_spec,
)
from mot_lightning.modality import Modality

# The plain-PyTorch way to use an export (the README of every export and docs/checkpoints.md show it)
SNIPPET = '''\
import yaml
from safetensors.torch import load_file

from mot_lightning.model import TransformerConfig
from mot_lightning.model.lm import TokenLM

export_dir = "{export_dir}"
with open(f"{{export_dir}}/model.yaml") as f:
    spec = yaml.safe_load(f)
net = TokenLM(TransformerConfig(**spec["backbone"]), spec["vocab_size"], latent_dim=spec["latent_dim"])
net.load_state_dict(load_file(f"{{export_dir}}/model.safetensors"))
net.eval()
# tokens, modality: long[B, T] joint-vocabulary ids (ranges in spec["vocab"]) and their modality ids
# (0 text, 1 image, 2 speech); logits = net(tokens, modality) is float[B, T, vocab_size]
'''


def vocab_spec(vocab) -> dict:
    """The joint vocabulary's id ranges and special ids (``data/vocab.py``), for code outside the app."""
    from mot_lightning.data.vocab import SPECIAL_TOKENS

    ranges = {m.label: list(vocab.range(m)) for m in Modality}
    return {"ranges": ranges, "special": {name: vocab.special(name) for name in SPECIAL_TOKENS},
            "image_latent": vocab.image_latent}


def resolved_config(cli, tokenizer_files: dict[str, str]) -> dict:
    """The model and data sections of ``cli``'s parsed config, tokenizer files pointing into the export."""
    config = yaml.safe_load(cli.parser.dump(cli.config, skip_none=False))
    data = dict(config["data"])
    data["tokenizer_files"] = {"dir": TOKENIZER_DIR, "files": tokenizer_files}  # loaded, never refitted
    return {"seed_everything": config.get("seed_everything"), "model": config["model"], "data": data}


def write_export(cli, out: Path, checkpoint_path: Path, global_step: int | None, final: Path | None = None,
                 weights_kind: str = LIVE) -> None:
    """Write the export folder ``out`` of ``cli``'s model (weights loaded) and data module (tokenizers
    loaded); ``final``: where it will live (named in its README), default ``out``; ``weights_kind``: which
    weights the model holds (``LIVE`` or ``EMA``), recorded in export.json and the README."""
    from safetensors.torch import save_file

    from mot_lightning.tokenizers.fitting import FittableTokenizer

    model, dm = cli.model, cli.datamodule
    out.mkdir(parents=True)
    (out / TOKENIZER_DIR).mkdir()
    files = {}
    for modality, tok in dm.tokenizers.items():
        if isinstance(tok, FittableTokenizer):  # fitted files; ByteTokenizer / pretrained ones need none
            files[modality.label] = f"{TOKENIZER_DIR}/{modality.label}.pt"
            tok.save(str(out / files[modality.label]))
    weights = {k[len("net."):]: v.detach().contiguous() for k, v in model.state_dict().items()
               if k.startswith("net.")}
    save_file(weights, out / WEIGHTS_FILE, metadata={"format": "pt", "global_step": str(global_step)})
    spec = {**exported_model_spec(model), "vocab": vocab_spec(dm.vocab)}
    (out / MODEL_FILE).write_text(yaml.safe_dump(spec, sort_keys=False))
    (out / WEIGHTS_FILE).chmod((out / MODEL_FILE).stat().st_mode)  # safetensors writes it owner-only
    (out / CONFIG_FILE).write_text(yaml.safe_dump(resolved_config(cli, files), sort_keys=False))
    (out / "README.md").write_text(readme(final or out, checkpoint_path, global_step, weights_kind))
    manifest = {"format": EXPORT_FORMAT, "version": 1, "checkpoint": str(checkpoint_path),
                "global_step": global_step, "weights": weights_kind, "tokenizer_files": files}
    (out / EXPORT_FILE).write_text(json.dumps(manifest, indent=2) + "\n")  # last: marks the folder complete


def readme(out: Path, checkpoint_path: Path, global_step: int | None, weights_kind: str = LIVE) -> str:
    which = ("the exponential moving average of the weights (EMA callback)" if weights_kind == EMA
             else "the trained weights (not an EMA average)")
    return f"""# Exported model

Written by `mot export` from `{checkpoint_path}` (optimizer step {global_step}): {which}.

| file | what |
|---|---|
| `{WEIGHTS_FILE}` | `TokenLM` weights (safetensors) |
| `{MODEL_FILE}` | `TokenLM` constructor: `backbone` (TransformerConfig), `vocab_size`, `latent_dim`; joint vocabulary ranges |
| `{CONFIG_FILE}` | model + data sections of the training config (LightningCLI YAML); tokenizer files relative to this folder |
| `{TOKENIZER_DIR}/` | fitted tokenizer files |
| `{EXPORT_FILE}` | what this folder is |

Samples, without the training config:

    mot generate --export {out} --out samples/

(`image_to_caption` reads validation images from the data section of `{CONFIG_FILE}`; point it elsewhere
with e.g. `--data.demo.dir DIR` or `--data.val_sets ...`.)

Plain PyTorch (needs `mot_lightning` for the module's code, not its training config):

```python
{SNIPPET.format(export_dir=out.resolve())}```
"""  # noqa: E501 (the table's rows are markdown: they cannot wrap)
