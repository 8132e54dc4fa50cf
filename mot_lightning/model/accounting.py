"""Parameter and FLOPs accounting, per modality, from the config alone.

Conventions (stated once, used everywhere FLOPs are logged or compared):
- *active parameters per token* of modality m: every parameter a token of m
  multiplies or scales (shared components plus m's own tower).
- *training FLOPs per token* = 3 x forward (backward costs 2x forward), where
  forward = 2 x active matmul parameters + attention scores and values:
  ``4 * n_layers * n_heads * head_dim * ctx`` with ``ctx`` the mean number of
  keys a query sees ((T + 1) / 2 causal, T bidirectional). Norms and
  elementwise work are not counted (as in the Chinchilla/PaLM conventions).
- An optional output head (``vocab_size``) adds ``2 * dim * vocab_size``
  forward FLOPs per token; embedding look-ups cost none.

MoT, dense and (later) MoE-4x of one size therefore have equal FLOPs per
token; MoT holds about ``n_towers`` times the parameters.
"""
from __future__ import annotations

from dataclasses import dataclass

from mot_lightning.model.config import TransformerConfig


@dataclass(frozen=True)
class ComponentSizes:
    """Parameters of ONE tower of each component, summed over layers."""

    attn_matmul: int  # W_QKV + W_O
    attn_norm: int  # per-head QK-norm weights
    ffn_matmul: int  # SwiGLU W_1, W_3, W_2
    norm: int  # sublayer norms + final norm


def component_sizes(cfg: TransformerConfig) -> ComponentSizes:
    q_out, kv_out = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    L = cfg.n_layers
    return ComponentSizes(
        attn_matmul=L * (cfg.dim * (q_out + 2 * kv_out) + q_out * cfg.dim),
        attn_norm=L * 2 * cfg.head_dim if cfg.qk_norm else 0,
        ffn_matmul=L * 3 * cfg.dim * cfg.ffn_hidden,
        norm=(2 * L + 1) * cfg.dim,
    )


@dataclass(frozen=True)
class BackboneStats:
    total_params: int  # everything the backbone holds (all towers)
    active_params: dict[int, int]  # modality id -> parameters used per token of that modality
    flops_per_token: dict[int, float]  # modality id -> training FLOPs per token
    n_towers: int

    @property
    def mean_flops_per_token(self) -> float:
        return sum(self.flops_per_token.values()) / len(self.flops_per_token)


def backbone_stats(cfg: TransformerConfig, seq_len: int, *, causal: bool = True,
                   vocab_size: int = 0) -> BackboneStats:
    s = component_sizes(cfg)
    matmul_one = s.attn_matmul + s.ffn_matmul
    one_tower = matmul_one + s.attn_norm + s.norm
    total = (
        (s.attn_matmul + s.attn_norm) * cfg.towers_for("attn")
        + s.ffn_matmul * cfg.towers_for("ffn")
        + s.norm * cfg.towers_for("norm")
    )
    ctx = (seq_len + 1) / 2 if causal else seq_len
    attn_fwd = 4 * cfg.n_layers * cfg.n_heads * cfg.head_dim * ctx
    fwd = 2 * matmul_one + attn_fwd + 2 * cfg.dim * vocab_size
    modalities = range(cfg.n_modalities)
    return BackboneStats(
        total_params=total,
        active_params={m: one_tower for m in modalities},
        flops_per_token={m: 3.0 * fwd for m in modalities},
        n_towers=cfg.n_towers,
    )


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())
