"""``TransformerConfig``: every backbone variant is a value of this one dataclass.

Dense, MoT, partially-untied MoT (the paper's component ablation) and grouped
towers (leave-one-modality-out) differ only in ``sparsity``, ``untie`` and
``towers``. MoE-4x is ``sparsity="moe"`` (dense attention and norms, an
``n_experts`` feed-forward, see ``model/moe.py``); the hybrid MoT+MoE is
``sparsity="mot"`` with ``moe_towers`` naming the towers whose FFN is an MoE. Derived fields are computed in
``__post_init__``; named presets hold the paper's size ladder (``TransformerConfig.from_preset``).

Initialisation (the one place it is described; ``UntiedLinear`` and ``scaled_std`` in ``model/untied.py``
and ``TokenLM`` in ``model/lm.py`` implement it):
linear weights ~ N(0, init_std); the output projection of every sublayer
(attention W_O, FFN W_2) uses ``init_std / sqrt(2 * n_layers)`` (GPT-2); norm
weights are ones. ``tower_init="independent"`` (default, as the paper's
reference code, which builds one module per modality) draws every tower on its
own; ``tower_init="copy"`` draws tower 0 and copies it into the others, so an
MoT starts out as exactly the dense model with the same seed and only the
untying differs during training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Literal, Sequence

Sparsity = Literal["dense", "mot", "moe"]
Component = Literal["attn", "ffn", "norm"]
NormLayout = Literal["pre", "post_sublayer"]
MoERouter = Literal["expert_choice", "token_choice"]
MoEEvalMode = Literal["batch", "causal"]
AttnBackend = Literal["auto", "sdpa", "flex"]
TowerInit = Literal["independent", "copy"]
GroupedGemm = Literal["loop", "grouped_mm", "auto"]

COMPONENTS: tuple[str, ...] = ("attn", "ffn", "norm")


@dataclass
class TransformerConfig:
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_modalities: int = 1
    sparsity: Sparsity = "mot"
    # Which components get one weight set per tower. None: all three for "mot",
    # none for "dense". ("ffn",) / ("ffn", "attn") are the paper's ablations.
    untie: Sequence[Component] | None = None
    # Modality -> tower map, e.g. [0, 0, 1]: text and image share tower 0 and
    # speech has its own (leave-one-modality-out). None: one tower per modality.
    towers: Sequence[int] | None = None
    n_kv_heads: int | None = None  # grouped-query attention; None = n_heads
    attn_head_dim: int | None = None  # width of one head; None = dim // n_heads (Qwen3 sets it apart from dim)
    qkv_bias: bool = False  # a bias on the Q/K/V projections (Qwen2), untied with "attn"; zeros at init
    ffn_hidden: int | None = None  # SwiGLU hidden width; None = 8/3 * dim rounded up to ffn_multiple_of
    ffn_multiple_of: int = 64
    norm_layout: NormLayout = "pre"  # "post_sublayer" = Chameleon's norm reordering
    qk_norm: bool = True  # per-head RMSNorm on queries and keys (untied with "attn")
    norm_eps: float = 1e-5
    rope_theta: float = 10_000.0
    attn_backend: AttnBackend = "auto"  # auto: FlexAttention on CUDA, SDPA elsewhere
    # Kernel of the untied (per-tower) projections: "loop" = one matmul per tower (anywhere, any dtype);
    # "grouped_mm" = one torch._grouped_mm over all towers (CPU; CUDA sm90+ in bf16; compiled: bf16 only);
    # "auto" = grouped_mm on CUDA sm90+ when the compute dtype is bf16, loop elsewhere. Same weights and
    # results either way; benchmarks/gpu_check.sh measures which is faster on a GPU.
    grouped_gemm: GroupedGemm = "loop"
    tower_init: TowerInit = "independent"
    init_std: float = 0.02
    # ---- MoE feed-forward (sparsity="moe", or the towers in `moe_towers`); see model/moe.py
    n_experts: int = 4  # each expert is a SwiGLU of width ffn_hidden: MoE-4x = 4 experts
    # expert_choice: each expert takes its top-C tokens (paper's MoE-4x; balanced, but sees the whole batch);
    # token_choice: each token takes its top_k experts, overflow past capacity is dropped (causal in training).
    moe_router: MoERouter = "expert_choice"
    # Expert choice: C = ceil(capacity_factor * n_tokens / n_experts) tokens per expert (1.0 = dense FLOPs).
    # Token choice: C = ceil(capacity_factor * n_tokens * top_k / n_experts).
    capacity_factor: float = 1.0
    top_k: int = 1  # experts per token (token choice; also the causal evaluation mode's k)
    aux_loss_coef: float = 0.01  # weight of the Switch load-balancing loss (token choice) in Transformer.aux_loss()
    # Evaluation routing. "batch": route as in training (expert choice then looks at every token of the
    # batch, future ones included); "causal": each token takes its own top_k experts, no capacity, no look-ahead.
    moe_eval_mode: MoEEvalMode = "batch"
    # Hybrid MoT+MoE: towers whose FFN is an MoE (e.g. [0] = the text tower); only with sparsity="mot"
    # and "ffn" untied. The other towers keep their plain SwiGLU.
    moe_towers: Sequence[int] | None = None

    # derived in __post_init__ (not constructor arguments)
    head_dim: int = field(init=False)
    n_towers: int = field(init=False)
    untied: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self._check_shapes()
        self.n_kv_heads = self.n_kv_heads or self.n_heads
        self.head_dim = self.attn_head_dim or self.dim // self.n_heads
        if self.ffn_hidden is None:
            hidden = int(8 * self.dim / 3)
            self.ffn_hidden = self.ffn_multiple_of * math.ceil(hidden / self.ffn_multiple_of)
        self.towers = self._resolve_towers()
        self.n_towers = (max(self.towers) + 1) if self.towers else 1
        self.untied = self._resolve_untie()
        self._check_moe()

    def _check_shapes(self) -> None:
        if self.sparsity not in ("dense", "mot", "moe"):
            raise ValueError(f"sparsity must be 'dense', 'mot' or 'moe', got {self.sparsity!r}")
        if self.attn_head_dim is None and self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} must be divisible by n_heads={self.n_heads} (or set attn_head_dim)")
        head_dim = self.attn_head_dim or self.dim // self.n_heads
        if head_dim <= 0 or head_dim % 2:
            raise ValueError(f"head_dim={head_dim} must be positive and even for RoPE")
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={kv}")
        if self.n_modalities < 1:
            raise ValueError(f"n_modalities must be >= 1, got {self.n_modalities}")
        if self.norm_layout not in ("pre", "post_sublayer"):
            raise ValueError(f"norm_layout must be 'pre' or 'post_sublayer', got {self.norm_layout!r}")
        if self.attn_backend not in ("auto", "sdpa", "flex"):
            raise ValueError(f"attn_backend must be 'auto', 'sdpa' or 'flex', got {self.attn_backend!r}")
        if self.tower_init not in ("independent", "copy"):
            raise ValueError(f"tower_init must be 'independent' or 'copy', got {self.tower_init!r}")
        if self.grouped_gemm not in ("loop", "grouped_mm", "auto"):
            raise ValueError(f"grouped_gemm must be 'loop', 'grouped_mm' or 'auto', got {self.grouped_gemm!r}")

    def _resolve_towers(self) -> list[int]:
        if self.sparsity in ("dense", "moe"):
            if self.towers is not None and len(set(self.towers)) > 1:
                raise ValueError(f"sparsity={self.sparsity!r} has one tower; drop `towers` or use sparsity='mot' "
                                 "(with moe_towers for a hybrid)")
            return [0] * self.n_modalities
        towers = list(range(self.n_modalities)) if self.towers is None else [int(t) for t in self.towers]
        if len(towers) != self.n_modalities:
            raise ValueError(
                f"towers has {len(towers)} entries but n_modalities={self.n_modalities}: "
                "give one tower index per modality, e.g. [0, 0, 1]"
            )
        if sorted(set(towers)) != list(range(max(towers) + 1)):
            raise ValueError(f"towers={towers} must use every tower index from 0 to max without gaps")
        return towers

    def _resolve_untie(self) -> frozenset[str]:
        if self.sparsity in ("dense", "moe"):
            if self.untie:
                raise ValueError(f"sparsity={self.sparsity!r} unties nothing; remove `untie` or use sparsity='mot'")
            return frozenset()
        untie = COMPONENTS if self.untie is None else tuple(self.untie)
        unknown = set(untie) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown components in untie: {sorted(unknown)}; choose from {COMPONENTS}")
        return frozenset(untie)

    def _check_moe(self) -> None:
        if self.moe_router not in ("expert_choice", "token_choice"):
            raise ValueError(f"moe_router must be 'expert_choice' or 'token_choice', got {self.moe_router!r}")
        if self.moe_eval_mode not in ("batch", "causal"):
            raise ValueError(f"moe_eval_mode must be 'batch' or 'causal', got {self.moe_eval_mode!r}")
        if self.n_experts < 1 or not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"need n_experts >= 1 and 1 <= top_k <= n_experts, got n_experts={self.n_experts}, "
                             f"top_k={self.top_k}")
        if self.capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be > 0, got {self.capacity_factor}")
        if self.moe_towers is None:
            return
        if self.sparsity != "mot" or "ffn" not in self.untied:
            raise ValueError("moe_towers (hybrid MoT+MoE) needs sparsity='mot' with 'ffn' untied; "
                             "for a plain MoE use sparsity='moe' and drop moe_towers")
        moe = [int(k) for k in self.moe_towers]
        if not moe or len(set(moe)) != len(moe) or not all(0 <= k < self.n_towers for k in moe):
            raise ValueError(f"moe_towers={moe} must list distinct tower indices in [0, {self.n_towers}), "
                             "e.g. [0] for the text tower")
        self.moe_towers = sorted(moe)

    # ------------------------------------------------------------------ helpers
    def towers_for(self, component: str) -> int:
        """Number of weight sets a component holds (1 when it is tied)."""
        return self.n_towers if component in self.untied else 1

    def tower_ids_for(self, component: str) -> list[int] | None:
        """The tower owning each weight set of a component: ``[0, ..., n_towers-1]`` when it is untied,
        None when tied (one weight shared by every tower)."""
        return list(range(self.n_towers)) if component in self.untied else None

    def ffn_is_moe(self, modality: int) -> bool:
        """True when tokens of ``modality`` go through an MoE feed-forward."""
        if self.sparsity == "moe":
            return True
        return self.moe_towers is not None and self.towers[modality] in self.moe_towers

    @property
    def is_routed(self) -> bool:
        """True when some component is untied across more than one tower."""
        return self.n_towers > 1 and bool(self.untied)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "TransformerConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        """Constructor arguments only (round-trips through ``TransformerConfig(**d)``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        tied = self.sparsity in ("dense", "moe")
        out["towers"] = None if tied else list(self.towers)
        out["untie"] = None if tied else sorted(self.untied)
        out["moe_towers"] = None if self.moe_towers is None else list(self.moe_towers)
        return out

    def replace(self, **changes) -> "TransformerConfig":
        """A copy with ``changes``; changing ``sparsity`` re-derives ``towers``/``untie`` and drops
        ``moe_towers`` unless given."""
        base = self.to_dict()
        if "sparsity" in changes:
            base.update(towers=None, untie=None, moe_towers=None)
        return replace(self, **{**base, **changes})


# Size presets. Paper sizes count a 65,536-token vocabulary with untied input
# embedding and output head (the sizes docs/paper.md names); the backbone
# itself holds only the non-embedding part. Heads are unconfirmed (head_dim 64
# up to 1536, 128 above), as are Transfusion widths/depths (taken from the
# Transfusion paper's ladder).
PRESETS: dict[str, dict] = {
    # tiny ones for tests and CPU demos
    "tiny": dict(dim=32, n_layers=2, n_heads=4),
    "cpu-small": dict(dim=128, n_layers=4, n_heads=4),
    "cpu-base": dict(dim=256, n_layers=6, n_heads=4),
    # Chameleon ladder (dim x layers from the paper)
    "chameleon-37m": dict(dim=256, n_layers=4, n_heads=4),
    "chameleon-94m": dict(dim=512, n_layers=8, n_heads=8),
    "chameleon-443m": dict(dim=1024, n_layers=24, n_heads=16),
    "chameleon-880m": dict(dim=1536, n_layers=24, n_heads=24),
    "chameleon-1.5b": dict(dim=2048, n_layers=24, n_heads=16),
    "chameleon-7b": dict(dim=4096, n_layers=32, n_heads=32),
    # Transfusion ladder (unconfirmed shapes)
    "transfusion-163m": dict(dim=768, n_layers=16, n_heads=12),
    "transfusion-760m": dict(dim=1536, n_layers=24, n_heads=24),
    "transfusion-1.4b": dict(dim=2048, n_layers=24, n_heads=16),
    "transfusion-7b": dict(dim=4096, n_layers=32, n_heads=32),
}
