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
- Continuous-image ends (latent projections, timestep MLP; Transfusion) cost
  6 training FLOPs per parameter at each latent position (``Accounting``).

MoE feed-forwards (``sparsity="moe"``, and the ``moe_towers`` of a hybrid):
- total parameters hold every expert and the router (``dim x n_experts`` per layer);
- active parameters per token are what a token uses at capacity factor 1: the
  router plus one expert (expert choice) or ``top_k`` experts (token choice);
- training FLOPs count the experts' capacity, ``expert_slots`` expert FFNs per
  token: ``min(capacity_factor, n_experts)`` for expert choice (exact: every
  expert runs exactly its capacity; the ``ceil`` of a fractional capacity is
  ignored), ``top_k * min(capacity_factor, 1)`` for token choice (an upper
  bound: dropped and unfilled slots cost nothing), plus the router matmul,
  reported on its own as ``router_flops_per_token``.

MoT, dense and MoE-4x (expert choice, capacity factor 1) of one size therefore
have equal FLOPs per token up to the MoE's router term (``3 * 2 * n_layers *
dim * n_experts``, under 0.1% at paper sizes); MoT holds about ``n_towers``
times the parameters, MoE-4x about 4x the FFN parameters.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mot_lightning.model.config import TransformerConfig


@dataclass(frozen=True)
class ComponentSizes:
    """Parameters of ONE tower of each component, summed over layers."""

    attn_matmul: int  # W_QKV + W_O (+ the Q/K/V biases with qkv_bias)
    attn_norm: int  # per-head QK-norm weights
    ffn_matmul: int  # SwiGLU W_1, W_3, W_2
    norm: int  # sublayer norms + final norm


def component_sizes(cfg: TransformerConfig) -> ComponentSizes:
    q_out, kv_out = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    L = cfg.n_layers
    return ComponentSizes(
        attn_matmul=L * ((cfg.dim + int(cfg.qkv_bias)) * (q_out + 2 * kv_out) + q_out * cfg.dim),
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
    # modality id -> the router's share of flops_per_token (0 for modalities without an MoE FFN)
    router_flops_per_token: dict[int, float] = field(default_factory=dict)

    @property
    def mean_flops_per_token(self) -> float:
        return sum(self.flops_per_token.values()) / len(self.flops_per_token)


def expert_slots(cfg: TransformerConfig) -> float:
    """Expert FFNs computed per token of an MoE feed-forward, at the configured capacity."""
    if cfg.moe_router == "expert_choice":
        return min(cfg.capacity_factor, cfg.n_experts)
    return cfg.top_k * min(cfg.capacity_factor, 1.0)


def _ffn_total(cfg: TransformerConfig, ffn_matmul: int, router: int) -> int:
    """FFN parameters of all towers: plain SwiGLU towers plus MoE feed-forwards (experts + router)."""
    n_moe = 1 if cfg.sparsity == "moe" else len(cfg.moe_towers or ())
    n_plain = 0 if cfg.sparsity == "moe" else cfg.towers_for("ffn") - n_moe
    return n_plain * ffn_matmul + n_moe * (cfg.n_experts * ffn_matmul + router)


def backbone_stats(cfg: TransformerConfig, seq_len: int, *, causal: bool = True,
                   vocab_size: int = 0) -> BackboneStats:
    s = component_sizes(cfg)
    router = cfg.n_layers * cfg.dim * cfg.n_experts  # one MoE FFN's router matrices
    active_experts = cfg.top_k if cfg.moe_router == "token_choice" else 1  # at capacity factor 1
    one_tower = s.attn_matmul + s.ffn_matmul + s.attn_norm + s.norm
    total = (
        (s.attn_matmul + s.attn_norm) * cfg.towers_for("attn")
        + _ffn_total(cfg, s.ffn_matmul, router)
        + s.norm * cfg.towers_for("norm")
    )
    ctx = (seq_len + 1) / 2 if causal else seq_len
    attn_fwd = 4 * cfg.n_layers * cfg.n_heads * cfg.head_dim * ctx
    head_fwd = 2 * cfg.dim * vocab_size
    active, flops, router_flops = {}, {}, {}
    for m in range(cfg.n_modalities):
        moe = cfg.ffn_is_moe(m)
        slots = expert_slots(cfg) if moe else 1
        active[m] = one_tower + ((active_experts - 1) * s.ffn_matmul + router if moe else 0)
        router_flops[m] = 3.0 * 2 * router if moe else 0.0
        flops[m] = 3.0 * (2 * (s.attn_matmul + slots * s.ffn_matmul) + attn_fwd + head_fwd) + router_flops[m]
    return BackboneStats(total_params=total, active_params=active, flops_per_token=flops,
                         n_towers=cfg.n_towers, router_flops_per_token=router_flops)


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class Accounting:
    """What a whole language model trains, the one source for logged sizes and FLOPs axes.

    ``params``: parameter counts by name, logged as ``params/<name>``: ``backbone_total``,
    ``total_with_embeddings`` (backbone + embedding + head + latent ends) and ``active_per_token``
    (a text token's backbone parameters + embedding + head).
    ``flops_per_token``: training FLOPs per position of backbone + head, mean over modalities.
    ``flops_per_latent``: training FLOPs added at each latent-image position by the latent ends.
    """

    params: dict[str, int]
    flops_per_token: float
    flops_per_latent: float = 0.0

    def batch_flops(self, n_positions: int, n_latent: int = 0) -> float:
        """Training FLOPs of one batch of ``n_positions`` positions, ``n_latent`` of them latent patches."""
        return self.flops_per_token * n_positions + self.flops_per_latent * n_latent


def lm_accounting(cfg: TransformerConfig, seq_len: int, vocab_size: int, embed_params: int,
                  latent_params: int = 0) -> Accounting:
    """``Accounting`` of backbone + shared embedding and head (``embed_params`` together) + latent ends."""
    stats = backbone_stats(cfg, seq_len, vocab_size=vocab_size)
    return Accounting(
        params={"backbone_total": stats.total_params,
                "total_with_embeddings": stats.total_params + embed_params + latent_params,
                "active_per_token": stats.active_params[0] + embed_params},
        flops_per_token=stats.mean_flops_per_token,
        flops_per_latent=6.0 * latent_params,
    )
