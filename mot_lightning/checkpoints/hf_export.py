"""``mot export --format hf``: one tower of a trained model as a Hugging Face Llama / Qwen2 / Qwen3 folder.

    mot export --format hf --ckpt RUN/checkpoints/last.ckpt --config RUN.yaml --out DIR [--tower text]

The folder holds ``config.json``, ``model.safetensors``, ``tokenizer.json`` and ``tokenizer_config.json``;
``transformers`` loads it with ``AutoModelForCausalLM.from_pretrained(DIR)`` /
``AutoTokenizer.from_pretrained(DIR)`` and gives the app's logits (the test suite checks it). The family
follows the backbone (``model/hf_llama.py``: QK-norm -> Qwen3, Q/K/V biases -> Qwen2, else Llama); the
tower is the one serving ``--tower``'s modality (tied components are shared). Vocabulary rows: the text
block and the app's boundary tokens (``<|BOS|>``, ``<|EOS|>``, ... at their joint ids; config.json's
``mot_vocab_layout`` records the two blocks so ``model.init_from`` maps them back). Image / speech code rows
stay out: a HF causal LM of text. Refused: MoE feed-forwards and the post-sublayer norm layout (no HF twin).
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from mot_lightning.data.vocab import SPECIAL_TOKENS
from mot_lightning.modality import Modality
from mot_lightning.model.hf_llama import hf_config, tensor_maps, to_hf
from mot_lightning.model.towers import parameter_places
from mot_lightning.tokenizers.hf_text import LAYOUT_KEY, TOKENIZER_JSON, hf_tokenizer_json, special_name


def tower_tensors(net, tower: int, n_rows: int) -> dict:
    """HF tensors of ``tower`` of ``net`` (a ``TokenLM``), embedding and head cut to the first ``n_rows``."""
    cfg = net.backbone.cfg
    if cfg.sparsity == "moe" or (cfg.moe_towers is not None and tower in cfg.moe_towers):
        raise ValueError(f"tower {tower} has an MoE feed-forward: a Llama-family model has none")
    one = cfg.replace(sparsity="dense", n_modalities=1)
    state = {name: p.detach() for name, p in net.named_parameters()}
    by_place = {(p.slot, p.tower): name for name, p in parameter_places(net).items()}
    out = {}
    for m in tensor_maps(one):
        name = by_place.get((m.slot, tower), by_place.get((m.slot, None)))
        value = state[name].float()
        if m.slot in ("embed.weight", "head.weight"):
            value = value[:n_rows]
        out.update(to_hf(m, value, cfg.head_dim))
    return out


def write_hf(model, vocab, text_tokenizer, out: Path, modality: Modality = Modality.TEXT) -> None:
    """Write the HF folder ``out`` (created) for the tower of ``modality`` of ``model`` (a ``MultiModalLM``
    holding its weights); ``vocab``: its ``JointVocab``; ``text_tokenizer``: the data's text tokenizer."""
    from safetensors.torch import save_file

    cfg = model.cfg
    tower = cfg.towers[int(modality)]
    n_rows = vocab.text_size + len(SPECIAL_TOKENS)
    tensors = tower_tensors(model.net, tower, n_rows)
    specials = {special_name(n): vocab.special(n) for n in SPECIAL_TOKENS}
    ids = {f"{key}_token_id": vocab.special(name) for key, name in (("bos", "BOS"), ("eos", "EOS"), ("pad", "PAD"))}
    config = hf_config(cfg.replace(sparsity="dense", n_modalities=1), n_rows, **ids,
                       **{LAYOUT_KEY: {"text": vocab.text_size, "special": len(SPECIAL_TOKENS)}})
    out.mkdir(parents=True)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / TOKENIZER_JSON).write_text(hf_tokenizer_json(text_tokenizer, specials))
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": special_name("BOS"),
                  "eos_token": special_name("EOS"), "pad_token": special_name("PAD"),
                  "model_max_length": config["max_position_embeddings"]}
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps({k: v for k, v in ids.items()}, indent=2) + "\n")


TEXT_TOKENIZER = "mot_lightning.tokenizers.hf_text.HFTextTokenizer"


def backbone_yaml(folder: str) -> str:
    """The ``model.backbone`` keys, ``model.init_from`` and ``data.text_tokenizer`` YAML that import ``folder``
    (no ``sparsity``: a recipe's dense or MoT setting stays)."""
    from mot_lightning.checkpoints.hf_folder import HFFolder

    hf = HFFolder(folder)
    keep = ("dim", "n_layers", "n_heads", "n_kv_heads", "attn_head_dim", "ffn_hidden", "norm_layout", "qk_norm",
            "qkv_bias", "norm_eps", "rope_theta", "init_std")
    backbone = {k: getattr(hf.cfg, k) for k in keep if getattr(hf.cfg, k) is not None}
    return (f"# {folder}: {hf.config.get('model_type')}, vocab {hf.vocab_size}, tied embeddings {hf.tied}\n"
            + yaml.safe_dump({"model": {"backbone": backbone, "init_from": {"checkpoint": str(folder)}},
                              "data": {"text_tokenizer": {"class_path": TEXT_TOKENIZER,
                                                          "init_args": {"path": str(folder)}}}}, sort_keys=False))
