"""Where ``mot generate`` takes its model from: a checkpoint file + the run's YAML, or an export folder.

``weights_source`` checks the inputs (files exist, the folder is an export, EMA averages are there when
asked for) before anything heavy is built, and says which configs and overrides build the model;
``WeightsSource.load_into`` then loads the weights (weights-only, config compared first).

``ema=True`` takes the exponential moving average of the weights instead of the live ones: from a
checkpoint, the averages the ``EMA`` callback saved in it (``checkpoints/loading.py``: ``ema_state_dict``; a
consolidated FSDP2 checkpoint keeps them); from an export folder, only when it was written with
``mot export --ema`` (its ``export.json`` says which weights it holds).

An export folder (``export.py``) holds::

    export.json        what it is, made from which checkpoint at which step, which weights (live or EMA)
    model.safetensors  TokenLM weights (the LightningModule's ``net.`` prefix removed)
    model.yaml         TokenLM's constructor: backbone (TransformerConfig fields), vocab_size, latent_dim,
                       and the joint vocabulary's ranges
    config.yaml        model + data sections of the training config (LightningCLI YAML)
    tokenizers/        the fitted tokenizer files (<modality>.pt), named in config.yaml
    README.md          how to use it, with plain PyTorch
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from mot_lightning.checkpoints.loading import ema_state_dict, is_sharded, load_checkpoint
from mot_lightning.checkpoints.model_config import check_model_config

EXPORT_FILE, WEIGHTS_FILE, MODEL_FILE, CONFIG_FILE = "export.json", "model.safetensors", "model.yaml", "config.yaml"
TOKENIZER_DIR = "tokenizers"
EXPORT_FORMAT = "mot_lightning.export"
LIVE, EMA = "live", "ema"  # which weights an export holds (export.json "weights"; older exports: live)


def is_export(path: str | Path) -> bool:
    return (Path(path) / EXPORT_FILE).is_file()


@dataclass
class WeightsSource:
    path: Path  # a checkpoint file or an export folder
    configs: list[str]  # --config files that build the model and data (the export's config.yaml first)
    overrides: list[str]  # further --key value arguments, in order
    ema: bool = False  # the EMA averages instead of the live weights

    @property
    def exported(self) -> bool:
        return is_export(self.path)

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint file (None for an export, which carries its own tokenizers)."""
        return None if self.exported else self.path

    @property
    def kind(self) -> str:
        """Which weights ``load_into`` loads: ``EMA`` (the averages) or ``LIVE``."""
        if self.exported:
            return json.loads((self.path / EXPORT_FILE).read_text()).get("weights", LIVE)
        return EMA if self.ema else LIVE

    def load_into(self, model, device: str = "cpu") -> int | None:
        """Weights into ``model`` (a ``MultiModalLM`` after ``configure_model``), moved to ``device``, eval
        mode; returns the optimizer step they were saved at. Refuses weights trained with another model
        config, naming the differences. With ``ema``, the EMA averages (checked by ``weights_source``)."""
        if self.exported:
            from safetensors.torch import load_file

            spec = yaml.safe_load((self.path / MODEL_FILE).read_text())
            check_model_config(spec, exported_model_spec(model), source=str(self.path), take_hint=False)
            model.net.load_state_dict(load_file(self.path / WEIGHTS_FILE))
            step = json.loads((self.path / EXPORT_FILE).read_text()).get("global_step")
        else:
            checkpoint = load_checkpoint(self.path, mmap=True)  # tensors read as load_state_dict copies them
            if self.ema:
                checkpoint = {**checkpoint, "state_dict": _ema_weights(checkpoint, self.path)}
            model.on_load_checkpoint(checkpoint)  # model config and shapes compared, differences named
            model.load_state_dict(checkpoint["state_dict"])
            step = checkpoint.get("global_step")
        model.to(device).eval()
        return step


def exported_model_spec(model) -> dict:
    """What ``model.yaml`` records of a ``MultiModalLM``: ``TokenLM``'s constructor arguments."""
    return {"backbone": model.cfg.to_dict(), "vocab_size": model.vocab_size, "latent_dim": model.latent_dim}


def add_weights_arguments(parser) -> None:
    """``--ckpt`` / ``--export`` / ``--config``: where a tool's weights and config come from (``weights_source``
    reads them)."""
    parser.add_argument("--ckpt", help="a Lightning checkpoint file (e.g. .../checkpoints/last.ckpt) or an export "
                        "folder")
    parser.add_argument("--export", help="a folder written by `mot export` (carries its config: no --config needed)")
    parser.add_argument("--config", action="append", help="the run's YAML (repeatable, as for fit); needed with "
                        "--ckpt")


def weights_source(ckpt: str | None, export: str | None, configs: list[str] | None,
                   overrides: list[str], ema: bool = False) -> WeightsSource:
    """Check the inputs of a command that loads a trained model, before anything is built.

    ``ckpt``: a checkpoint file (needs ``configs``, the run's YAML) or an export folder; ``export``: an
    export folder (``configs`` then apply on top of its config.yaml); ``ema``: load the EMA averages
    (refused, saying why, where there are none)."""
    if (ckpt is None) == (export is None):
        raise ValueError("give a trained model: --ckpt <checkpoint file> --config <the run's YAML>, "
                         "or --export <folder written by `mot export`>")
    path = Path(ckpt if ckpt is not None else export)
    exported = path.is_dir() and is_export(path)
    if export is not None and not exported:
        raise FileNotFoundError(f"--export {path} is not an export folder (no {EXPORT_FILE}): write one with "
                                "`mot export --ckpt ... --config ... --out DIR`")
    if not exported and path.is_dir() and is_sharded(path):
        raise FileNotFoundError(f"--ckpt {path} is a sharded checkpoint directory: make one file of it with "
                                f"`mot checkpoint consolidate {path} --out model.ckpt`")
    if not exported and not path.is_file():
        raise FileNotFoundError(f"--ckpt {path} is not a checkpoint file (no such file)")
    for config in configs or []:
        if not Path(config).is_file():
            raise FileNotFoundError(f"--config {config}: no such file")
    if exported:
        return _export_source(path, configs or [], overrides, ema)
    if not configs:
        raise ValueError(f"--ckpt {path} needs --config <the YAML it was trained with> (or use an export folder, "
                         "which carries its config)")
    if ema:
        _ema_weights(load_checkpoint(path, mmap=True), path)  # refused here, before the model is built
    return WeightsSource(path, list(configs), list(overrides), ema)


def _ema_weights(checkpoint: dict, path: Path) -> dict:
    state_dict = ema_state_dict(checkpoint)
    if state_dict is None:
        raise ValueError(f"--ema: {path} holds no EMA averages: the run had no EMA callback (add "
                         "`- class_path: mot_lightning.callbacks.ema.EMA` to trainer.callbacks when "
                         "training), or it is a sharded checkpoint consolidated before `mot checkpoint "
                         "consolidate` kept them (consolidate it again). Without --ema the live weights are "
                         "used.")
    return state_dict


def _export_source(path: Path, configs: list[str], overrides: list[str], ema: bool) -> WeightsSource:
    manifest = json.loads((path / EXPORT_FILE).read_text())
    if manifest.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path / EXPORT_FILE} is not a mot_lightning export (format {manifest.get('format')!r})")
    if ema and manifest.get("weights", LIVE) != EMA:
        raise ValueError(f"--ema: export folder {path} holds the live weights: export the checkpoint again "
                         "with `mot export --ema ...` for the EMA averages, or drop --ema")
    for name in (WEIGHTS_FILE, MODEL_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"export folder {path} lacks {name}: write it again with `mot export`")
    # the tokenizer files are named relative to the folder in config.yaml; LightningCLI reads paths as given
    files = {m: str((path / f).resolve()) for m, f in manifest.get("tokenizer_files", {}).items()}
    missing = [f for f in files.values() if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"export folder {path} lacks its tokenizer files {missing}")
    own = ["--data.tokenizer_files.files", json.dumps(files)] if files else []
    return WeightsSource(path, [str(path / CONFIG_FILE), *configs], [*own, *overrides], ema)
