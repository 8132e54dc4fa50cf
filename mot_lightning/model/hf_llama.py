"""The Hugging Face Llama family (Llama, Qwen2, Qwen3) in this backbone's terms: config keys and tensors.

Pure translation, no files (``checkpoints/hf_folder.py`` reads a folder, ``checkpoints/hf_export.py``
writes one). A Llama-family decoder is exactly a dense pre-norm ``TokenLM``: RMSNorm, SwiGLU, RoPE,
grouped-query attention, Qwen2's Q/K/V biases (``qkv_bias``), Qwen3's per-head QK-norm before RoPE
(``qk_norm``), a head width apart from ``dim / n_heads`` (``attn_head_dim``).

RoPE. This backbone rotates channel pairs ``(2i, 2i+1)`` of a head; HF's ``rotate_half`` pairs ``(i, i + hd/2)``
with the same frequency ``i``. Moving a weight across permutes the rows of every query and key head (and
the Q/K biases and QK-norm weights) so that app channel ``2i`` is HF channel ``i`` and ``2i+1`` is
``i + hd/2``; attention scores are dot products over the whole head, unchanged by a permutation applied to
both queries and keys, so the logits are the same. Values and outputs are untouched.

Tied embeddings (``tie_word_embeddings``): the app's LM has its own head, so a tied checkpoint imports as two
equal matrices (equal logits at the start; they then train apart) and exports untied.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

# model_type -> (architecture, qkv_bias, qk_norm): the families whose decoder this backbone reproduces
FAMILIES: dict[str, tuple[str, bool, bool]] = {
    "llama": ("LlamaForCausalLM", False, False),
    "qwen2": ("Qwen2ForCausalLM", True, False),
    "qwen3": ("Qwen3ForCausalLM", False, True),
}
# keys whose presence with a true / non-default value means a model this backbone does not implement
_MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size")
_FALSE_KEYS = ("attention_bias", "mlp_bias", "use_sliding_window")


class UnsupportedConfig(ValueError):
    """config.json asks for something this backbone does not implement; the message names the key."""


def _refuse(key: str, value, why: str) -> UnsupportedConfig:
    return UnsupportedConfig(f"config.json: {key}={value!r} is not supported ({why}); this backbone implements "
                             "Llama / Qwen2 / Qwen3 dense decoders with plain RoPE, full attention and SwiGLU")


def _rope(hf: Mapping) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling")
    if scaling:
        raise _refuse("rope_scaling", scaling, "RoPE scaling changes the frequencies")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise _refuse("rope_parameters.rope_type", kind, "RoPE scaling changes the frequencies")
    extra = sorted(set(params) - {"rope_type", "type", "rope_theta"})
    if extra:
        raise _refuse(f"rope_parameters.{extra[0]}", params[extra[0]], "a RoPE variant")
    return float(params.get("rope_theta", hf.get("rope_theta", 10_000.0)))


def _check_family(hf: Mapping) -> str:
    family = hf.get("model_type")
    if family not in FAMILIES:
        raise _refuse("model_type", family, f"supported: {', '.join(FAMILIES)}")
    arch = hf.get("architectures") or [FAMILIES[family][0]]
    if list(arch) != [FAMILIES[family][0]]:
        raise _refuse("architectures", arch, f"expected [{FAMILIES[family][0]}]")
    for key in _MOE_KEYS:
        if hf.get(key):
            raise _refuse(key, hf[key], "a mixture-of-experts LLM")
    for key in _FALSE_KEYS:
        if hf.get(key):
            raise _refuse(key, hf[key], "biases outside Q/K/V or sliding-window attention")
    if hf.get("hidden_act", "silu") != "silu":
        raise _refuse("hidden_act", hf["hidden_act"], "the FFN is SwiGLU (silu)")
    if hf.get("attention_dropout"):
        raise _refuse("attention_dropout", hf["attention_dropout"], "the backbone has no dropout")
    types = set(hf.get("layer_types") or ["full_attention"])
    if types != {"full_attention"}:
        raise _refuse("layer_types", sorted(types), "only full attention")
    return family


def backbone_kwargs(hf: Mapping) -> dict:
    """``TransformerConfig`` arguments (a dense single-tower backbone) of a config.json, or
    ``UnsupportedConfig`` naming the first key this backbone does not implement."""
    family = _check_family(hf)
    _, qkv_bias, qk_norm = FAMILIES[family]
    dim, n_heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    head_dim = hf.get("head_dim")
    return dict(
        dim=dim, n_layers=int(hf["num_hidden_layers"]), n_heads=n_heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
        attn_head_dim=None if head_dim in (None, dim // n_heads) else int(head_dim),
        ffn_hidden=int(hf["intermediate_size"]), norm_layout="pre", qk_norm=qk_norm, qkv_bias=qkv_bias,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_theta=_rope(hf),
        init_std=float(hf.get("initializer_range", 0.02)), sparsity="dense", n_modalities=1,
    )


def family_of(cfg) -> str:
    """The HF family a backbone exports as (Qwen3 if it has QK-norm, Qwen2 if Q/K/V biases, else Llama)."""
    if cfg.norm_layout != "pre":
        raise ValueError(f"norm_layout={cfg.norm_layout!r} has no Hugging Face equivalent: export needs 'pre'")
    if cfg.qk_norm and cfg.qkv_bias:
        raise ValueError("QK-norm together with Q/K/V biases is no Hugging Face Llama-family model")
    return "qwen3" if cfg.qk_norm else "qwen2" if cfg.qkv_bias else "llama"


def hf_config(cfg, vocab_size: int, **extra) -> dict:
    """config.json of one tower of ``cfg`` (a ``TransformerConfig``) as a HF model of ``family_of(cfg)``."""
    family = family_of(cfg)
    out = {
        "architectures": [FAMILIES[family][0]], "model_type": family, "vocab_size": vocab_size,
        "hidden_size": cfg.dim, "intermediate_size": cfg.ffn_hidden, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
        "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "initializer_range": cfg.init_std, "tie_word_embeddings": False, "attention_dropout": 0.0,
        "max_position_embeddings": 4096, "torch_dtype": "float32",
    }
    if family != "qwen2":
        out["attention_bias"] = False
    return {**out, **extra}


# ------------------------------------------------------------------ tensors
@dataclass(frozen=True)
class TensorMap:
    """One app tensor (``slot``: the ``towers.Place`` slot) = the HF tensors ``hf`` concatenated on dim 0;
    ``heads[i]``: the RoPE head count whose rows ``hf[i]`` holds (0: no permutation)."""

    slot: str
    hf: tuple[str, ...]
    heads: tuple[int, ...] = ()

    @property
    def dense_name(self) -> str:
        """The tensor's name in a one-tower ``TokenLM`` state dict."""
        return self.slot + ".0" if self.slot.endswith(".weights") else self.slot


def tensor_maps(cfg, tied: bool = False) -> list[TensorMap]:
    """Every tensor of a one-tower backbone ``cfg`` and where it sits in a HF Llama-family checkpoint."""
    H, KV = cfg.n_heads, cfg.n_kv_heads
    maps = [TensorMap("embed.weight", ("model.embed_tokens.weight",)),
            TensorMap("head.weight", ("model.embed_tokens.weight" if tied else "lm_head.weight",)),
            TensorMap("backbone.norm.weights", ("model.norm.weight",))]
    for i in range(cfg.n_layers):
        a, h = f"backbone.layers.{i}.", f"model.layers.{i}."
        att = h + "self_attn."
        maps += [TensorMap(a + "attn_norm.weights", (h + "input_layernorm.weight",)),
                 TensorMap(a + "ffn_norm.weights", (h + "post_attention_layernorm.weight",)),
                 TensorMap(a + "attn.wqkv.weights", tuple(att + f"{p}_proj.weight" for p in "qkv"), (H, KV, 0)),
                 TensorMap(a + "attn.wo.weights", (att + "o_proj.weight",)),
                 TensorMap(a + "ffn.w13.weights", (h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight")),
                 TensorMap(a + "ffn.w2.weights", (h + "mlp.down_proj.weight",))]
        if cfg.qkv_bias:
            maps.append(TensorMap(a + "attn.qkv_bias.weights", tuple(att + f"{p}_proj.bias" for p in "qkv"),
                                  (H, KV, 0)))
        if cfg.qk_norm:
            maps += [TensorMap(a + "attn.q_norm.weights", (att + "q_norm.weight",), (1,)),
                     TensorMap(a + "attn.k_norm.weights", (att + "k_norm.weight",), (1,))]
    return maps


def _half_to_pairs(head_dim: int) -> Tensor:
    """App channel ``j`` of a head takes HF channel ``perm[j]``: ``[0, hd/2, 1, hd/2 + 1, ...]``."""
    half = torch.arange(head_dim // 2)
    return torch.stack([half, half + head_dim // 2], dim=1).flatten()


def _permute_heads(t: Tensor, n_heads: int, perm: Tensor) -> Tensor:
    head_dim = perm.numel()
    rows = t.reshape(n_heads, head_dim, -1)  # (heads, hd, in) or (heads, hd, 1) for vectors
    return rows[:, perm].reshape(t.shape)


def to_app(m: TensorMap, read: Callable[[str], Tensor], head_dim: int) -> Tensor:
    """The app tensor of ``m`` from HF tensors (``read(name)`` gives one)."""
    perm = _half_to_pairs(head_dim)
    parts = [read(name) for name in m.hf]
    heads = m.heads or (0,) * len(parts)
    parts = [_permute_heads(p, n, perm) if n else p for p, n in zip(parts, heads)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def to_hf(m: TensorMap, value: Tensor, head_dim: int) -> dict[str, Tensor]:
    """The HF tensors of ``m`` from the app tensor ``value`` (``to_app``'s inverse)."""
    inverse = torch.argsort(_half_to_pairs(head_dim))
    heads = m.heads or (0,) * len(m.hf)
    sizes = [n * head_dim for n in heads] if m.heads and 0 not in heads[:-1] else None
    if len(m.hf) == 1:
        parts = [value]
    elif sizes is not None:  # Q, K, V (or their biases): V takes what Q and K leave
        parts = list(value.split([*sizes[:-1], value.shape[0] - sum(sizes[:-1])], dim=0))
    else:  # gate and up halves
        parts = list(value.chunk(len(m.hf), dim=0))
    parts = [_permute_heads(p, n, inverse) if n else p for p, n in zip(parts, heads)]
    return {name: p.contiguous() for name, p in zip(m.hf, parts)}
