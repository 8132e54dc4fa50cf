"""Modality routing and the untied layers that use it.

``Routing`` is computed once per batch (``Routing.build``): the flattened
tokens are stably sorted by tower, so every tower's tokens form one contiguous
slice. The backbone keeps its residual stream in this tower-sorted order for
the whole forward pass; only attention goes back to sequence order (one gather
in, one gather out per layer). Untied layers then run one matmul per tower on a
contiguous slice: no boolean masks, no per-layer ``nonzero``, and no tower ever
computes on another tower's tokens.

Every tower's matmul runs even when its slice is empty, so its parameters
always take part in the graph (gradient exactly zero). DDP therefore never sees
an unused parameter when a batch lacks a modality.

Kernels (``Routing.gemm``, resolved once per batch from ``TransformerConfig.grouped_gemm``):
``"loop"`` runs one matmul per tower; ``"grouped_mm"`` runs all towers in one
``torch._grouped_mm`` driven by the offsets tensor, so no shape depends on the
tower sizes. Under ``torch.compile`` the loop takes its traceable form (the
``reference`` twin with size hints) and the tower sizes are unbacked symbolic
ints (``compile_friendly_counts``): one graph serves every batch.

Parameters: an untied layer holds one ``nn.Parameter`` per tower (``weights[k]``, an ``nn.ParameterList``),
never slices of one stacked tensor, so a tower can be frozen, given its own learning rate or weight decay
(optimizer parameter groups), or warm-started on its own. The loop kernel takes the list as it is; only
``grouped_mm`` stacks it, one ``(K, out, in)`` copy per call and its split in backward (a weight-sized
memory pass per linear, small beside the matmuls at the sizes where grouped GEMM pays). ``tower_ids``
says which tower owns each weight (None: the weights are not towers: one tied weight, or MoE experts).
Checkpoints written before this layout (one stacked ``weight``) load unchanged (``split_stacked``).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


@dataclass(frozen=True)
class Routing:
    """Which tower each token of a flattened ``(B*T)`` batch uses.

    ``order[i]`` is the flat token index at sorted position ``i``;
    ``inverse`` undoes it. ``counts[k]`` is the number of tokens of tower ``k``
    (Python ints: the split sizes). ``order is None`` means a single tower and
    sorted order == sequence order (no gathers at all).
    """

    counts: tuple[int, ...]
    order: Tensor | None = None  # long[N]
    inverse: Tensor | None = None  # long[N]
    offsets: Tensor | None = None  # int32[n_towers]: cumulative counts (grouped_mm's group ends), on device
    gemm: str = "loop"  # kernel of the untied linears: "loop" or "grouped_mm"

    @property
    def n_towers(self) -> int:
        return len(self.counts)

    @classmethod
    def build(cls, modality: Tensor, towers: list[int], n_towers: int, gemm: str = "loop") -> Routing:
        """Route ``modality: long[B, T]`` (values ``0..len(towers)-1``) to ``n_towers`` towers."""
        flat = modality.reshape(-1)
        n_modalities = len(towers)
        per_modality = _modality_counts(flat, n_modalities)  # one host sync per batch
        counts = [0] * n_towers
        for m, c in enumerate(per_modality):
            counts[towers[m]] += c
        if n_towers == 1:
            return cls(counts=tuple(counts))
        tower_of = torch.tensor(towers, device=flat.device, dtype=torch.long)[flat]  # (N,)
        order = torch.argsort(tower_of, stable=True)  # stable: keeps sequence order within a tower
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        offsets = torch.tensor(list(itertools.accumulate(counts)), dtype=torch.int32).to(flat.device)
        return cls(counts=tuple(counts), order=order, inverse=inverse, offsets=offsets, gemm=gemm)

    def group_offsets(self, device: torch.device) -> Tensor:
        """int32[n_towers] group ends for ``torch._grouped_mm`` (built here if the routing has none)."""
        if self.offsets is not None:
            return self.offsets
        return torch.tensor(list(itertools.accumulate(self.counts)), dtype=torch.int32, device=device)

    def to_sorted(self, x: Tensor) -> Tensor:
        """(N, ...) in sequence order -> (N, ...) in tower-sorted order."""
        return x if self.order is None else _Permute.apply(x, self.order, self.inverse)

    def to_sequence(self, x: Tensor) -> Tensor:
        """(N, ...) in tower-sorted order -> (N, ...) in sequence order."""
        return x if self.inverse is None else _Permute.apply(x, self.inverse, self.order)

    def split(self, x: Tensor) -> tuple[Tensor, ...]:
        """Tower-sorted (N, ...) -> one contiguous slice per tower."""
        if torch.compiler.is_compiling():  # unbacked tower sizes: tell the compiler they tile the rows
            for c in self.counts:
                torch._check(c >= 0)
            torch._check(sum(self.counts) == x.shape[0])
        return torch.split(x, self.counts, dim=0)


# Source names of the per-batch tower sizes as the compiled blocks see them (``ctx.routing.counts[k]``,
# also behind wrappers such as activation checkpointing's ``args[1]``); a regex for torch.compiler.config.
ROUTING_COUNTS_SOURCE = r".*\.routing\.counts\[\d+\]$"


def compile_friendly_counts() -> None:
    """Compile the tower sizes as unbacked symbolic ints, from the first compilation on.

    Left alone, dynamo bakes each batch's ``counts`` into the graph (a recompile per batch until its
    automatic-dynamic kicks in), then specialises sizes 0 and 1 (more recompiles when a batch lacks a
    modality). Unbacked sizes give one graph for every split. Only sources named ``*.routing.counts[k]``
    are affected; calling this again changes nothing.
    """
    current = torch.compiler.config.unbacked_sources
    if ROUTING_COUNTS_SOURCE not in current.split(","):
        torch.compiler.config.unbacked_sources = ",".join(s for s in (current, ROUTING_COUNTS_SOURCE) if s)


class _Permute(torch.autograd.Function):
    """Row gather by a permutation; its backward is the gather by the inverse permutation
    (cheaper than ``index_select``'s generic scatter-add backward)."""

    @staticmethod
    def forward(ctx, x: Tensor, perm: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(0, perm)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


class _GroupedLinear(torch.autograd.Function):
    """``y[slice_k] = x[slice_k] @ W_k^T`` for contiguous tower slices, written into one output.

    The portable form of a grouped GEMM: one matmul per tower, no concatenation or stacking copies
    forward or backward; each tower's weight is its own tensor (its own gradient, skipped when that
    tower is frozen). ``UntiedLinear.reference`` is its simple twin.
    """

    @staticmethod
    def forward(ctx, x: Tensor, counts: tuple[int, ...], *weights: Tensor) -> Tensor:
        ctx.save_for_backward(x, *weights)
        ctx.counts = counts
        out = x.new_empty(x.shape[0], weights[0].shape[0])
        for xs, w, ys in zip(x.split(counts), weights, out.split(counts)):
            torch.mm(xs, w.t(), out=ys)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, *weights = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        gx_parts = grad_x.split(ctx.counts) if grad_x is not None else [None] * len(ctx.counts)
        grad_ws: list[Tensor | None] = []
        for k, (xs, gs, gx) in enumerate(zip(x.split(ctx.counts), grad.split(ctx.counts), gx_parts)):
            if gx is not None:
                torch.mm(gs, weights[k], out=gx)
            grad_ws.append(torch.mm(gs.t(), xs) if ctx.needs_input_grad[2 + k] else None)  # (out, in)
        return grad_x, None, *grad_ws


class _GroupedScale(torch.autograd.Function):
    """``y[slice_k] = x[slice_k] * w_k`` (per-tower norm weights), written into one output."""

    @staticmethod
    def forward(ctx, x: Tensor, counts: tuple[int, ...], *weights: Tensor) -> Tensor:
        ctx.save_for_backward(x, *weights)
        ctx.counts = counts
        out = torch.empty_like(x)
        for xs, w, ys in zip(x.split(counts), weights, out.split(counts)):
            torch.mul(xs, w, out=ys)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, *weights = ctx.saved_tensors
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        gx_parts = grad_x.split(ctx.counts) if grad_x is not None else [None] * len(ctx.counts)
        grad_ws: list[Tensor | None] = []
        for k, (xs, gs, gx) in enumerate(zip(x.split(ctx.counts), grad.split(ctx.counts), gx_parts)):
            if gx is not None:
                torch.mul(gs, weights[k], out=gx)
            grad_ws.append((gs * xs).reshape(-1, xs.shape[-1]).sum(0) if ctx.needs_input_grad[2 + k] else None)
        return grad_x, None, *grad_ws


class _RMSNorm(torch.autograd.Function):
    """``y[slice_k] = rms_norm(x[slice_k]) * w_k`` over the last dimension, slices along dim 0; one weight and
    one slice is the tied norm. Forward and backward by hand, for CPU eager float32/float64.

    One autograd node and about five passes over the activations each way, where ``F.rms_norm`` on CPU runs
    a dozen composite ops (and an untied norm added a per-tower scale on top); it saves only ``x`` and the
    per-row ``1/rms``. With ``n = x / rms`` and ``s = sum_j g_j w_j x_j`` per row:
    ``dx = rstd * (g * w) - rstd**3 * s / d * x`` and ``dw_k = sum over slice k of g * n``.
    ``UntiedRMSNorm.reference`` is its simple twin.
    """

    @staticmethod
    def forward(ctx, x: Tensor, eps: float, counts: tuple[int, ...], *weights: Tensor) -> Tensor:
        d = x.shape[-1]
        rstd = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(d).add_(eps).rsqrt_()
        out = torch.mul(x, rstd)
        for part, w in zip(out.split(counts), weights):
            part.mul_(w)
        ctx.save_for_backward(x, rstd, *weights)
        ctx.counts = counts
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, rstd, *weights = ctx.saved_tensors
        d, counts = x.shape[-1], ctx.counts
        gxw = grad.mul(x).reshape(-1, d)  # g * x, one row per normalised vector
        s = torch.empty(gxw.shape[0], dtype=x.dtype, device=x.device)
        rows = [c * math.prod(x.shape[1:-1]) for c in counts]  # vectors per slice (x may be (N, heads, d))
        grad_ws: list[Tensor | None] = []
        for k, (ts, ss, rs, w) in enumerate(zip(gxw.split(rows), s.split(rows), rstd.reshape(-1).split(rows),
                                                weights)):
            torch.mv(ts, w, out=ss)  # s = (g * x) . w
            grad_ws.append(torch.mv(ts.t(), rs) if ctx.needs_input_grad[3 + k] else None)  # sum of g * x * rstd
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
            for gs, gxs, w in zip(grad.split(counts), grad_x.split(counts), weights):
                torch.mul(gs, w, out=gxs)  # g * w
            coef = rstd.pow(3).mul_(s.view(rstd.shape)).div_(-d)
            grad_x.mul_(rstd).addcmul_(x, coef)
        return grad_x, None, None, *grad_ws


def _hand_norm(x: Tensor) -> bool:
    """``_RMSNorm`` runs for CPU eager float32/float64 outside autocast; elsewhere ``F.rms_norm`` (fused on CUDA,
    traced by the compiler, upcast in low precision)."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and not torch.compiler.is_compiling()
            and not torch.is_autocast_enabled("cpu"))


def _autocast_dtype(x: Tensor) -> torch.dtype | None:
    """The autocast compute dtype for ``x``'s device, or None outside autocast."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None


def _modality_counts(flat: Tensor, n_modalities: int) -> list[int]:
    if flat.is_floating_point() or flat.is_complex() or flat.dtype == torch.bool:
        raise TypeError(f"modality must be an integer tensor, got dtype {flat.dtype}")
    bad = (flat < 0) | (flat >= n_modalities)
    counts = torch.bincount(flat.clamp(0, n_modalities - 1).long(), minlength=n_modalities)
    stats = torch.cat([counts, bad.sum().reshape(1)]).tolist()
    if stats[-1]:
        raise ValueError(
            f"modality ids must be in [0, {n_modalities}) for a backbone with n_modalities={n_modalities}; "
            f"found {stats[-1]} token(s) outside that range"
        )
    return stats[:-1]


def _tower_ids(towers: Sequence[int] | None, n_weights: int) -> tuple[int, ...] | None:
    if towers is None:
        return None
    ids = tuple(int(t) for t in towers)
    if len(ids) != n_weights:
        raise ValueError(f"tower_ids names {len(ids)} towers for {n_weights} weights")
    return ids


class _UntiedWeights(nn.Module):
    """What both untied layers share: ``weights`` (one Parameter per tower), their owners, old layouts."""

    weights: nn.ParameterList
    tower_ids: tuple[int, ...] | None

    @property
    def n_weights(self) -> int:
        return len(self.weights)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        split_stacked(state_dict, prefix, self.n_weights)  # a checkpoint of the stacked layout
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class UntiedLinear(_UntiedWeights):
    """``n_weights`` bias-free linear maps; token slices of tower ``k`` use ``weights[k]: (out, in)``.

    ``tower_ids[k]``: the tower owning ``weights[k]`` (None when the weights are not towers: one tied
    weight, or MoE experts). With one weight it is an ordinary linear layer and ignores the routing.
    """

    def __init__(self, in_features: int, out_features: int, n_weights: int = 1, *, std: float = 0.02,
                 copy_towers: bool = False, tower_ids: Sequence[int] | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.std, self.copy_towers = std, copy_towers
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(out_features, in_features))
                                        for _ in range(n_weights))
        self.tower_ids = _tower_ids(tower_ids, n_weights)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.normal_(self.weights[0], std=self.std)
            for w in self.weights[1:]:  # one after another: the stacked layout's values when out*in % 16 == 0
                if self.copy_towers:
                    w.copy_(self.weights[0])
                else:
                    nn.init.normal_(w, std=self.std)

    def forward(self, x: Tensor, routing: Routing) -> Tensor:
        """x: (N, in) tower-sorted -> (N, out) tower-sorted, in the autocast dtype under autocast
        (as ``F.linear`` would be), else in ``x``'s dtype."""
        if self.n_weights == 1:
            return F.linear(x, self.weights[0])
        _check_towers(self.n_weights, routing)
        weights, dtype = list(self.weights), _autocast_dtype(x)
        if dtype is not None:  # the kernels below are not autocast ops: cast as F.linear would
            x, weights = x.to(dtype), [w.to(dtype) for w in weights]
        with torch.autocast(x.device.type, enabled=False):
            if routing.gemm == "grouped_mm":  # the one place the towers are stacked (a copy per call)
                return grouped_mm_linear(x, torch.stack(weights), routing.group_offsets(x.device))
            if torch.compiler.is_compiling():  # the out= matmuls do not trace: the compiler fuses the cat
                return self.reference(x, routing, weights)
            return _GroupedLinear.apply(x.contiguous(), routing.counts, *weights)

    def reference(self, x: Tensor, routing: Routing, weights: Sequence[Tensor] | None = None) -> Tensor:
        """The simple twin of ``forward``: one ``F.linear`` per tower slice, then ``cat``."""
        weights = self.weights if weights is None else weights
        return torch.cat([F.linear(xs, w) for xs, w in zip(routing.split(x), weights)], dim=0)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, n_weights={self.n_weights}, towers={self.tower_ids}"


class UntiedRMSNorm(_UntiedWeights):
    """RMSNorm over the last dimension with one weight vector per tower (``weights[k]: (dim,)``)."""

    def __init__(self, dim: int, n_weights: int = 1, eps: float = 1e-5,
                 tower_ids: Sequence[int] | None = None) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weights = nn.ParameterList(nn.Parameter(torch.ones(dim)) for _ in range(n_weights))
        self.tower_ids = _tower_ids(tower_ids, n_weights)

    def reset_parameters(self) -> None:
        for w in self.weights:
            nn.init.ones_(w)

    def forward(self, x: Tensor, routing: Routing) -> Tensor:
        """x: (N, ..., dim), tower-sorted along dim 0 -> the same shape, in ``x``'s dtype."""
        if not _hand_norm(x):
            return self.rms_norm_path(x, routing)
        if self.n_weights == 1:  # tied or untied, the same kernel: dense and MoT pay alike
            return _RMSNorm.apply(x, self.eps, (x.shape[0],), self.weights[0].to(x.dtype))
        _check_towers(self.n_weights, routing)
        return _RMSNorm.apply(x, self.eps, routing.counts, *(w.to(x.dtype) for w in self.weights))

    def rms_norm_path(self, x: Tensor, routing: Routing) -> Tensor:
        """``forward`` off the CPU float32 eager path: ``F.rms_norm`` (fused on CUDA, traced when compiling,
        composite ops on CPU) and, untied, a per-tower scale."""
        if self.n_weights == 1:  # weight in x's dtype, as the untied scale below (and the fused kernel) needs
            return F.rms_norm(x, (self.dim,), self.weights[0].to(x.dtype), self.eps)
        _check_towers(self.n_weights, routing)
        normed = F.rms_norm(x, (self.dim,), None, self.eps)  # (N, ..., dim), no weight yet
        weights = [w.to(normed.dtype) for w in self.weights]
        if torch.compiler.is_compiling():  # traceable form; the compiler fuses it into the norm
            return torch.cat([xs * w for xs, w in zip(routing.split(normed), weights)], dim=0)
        return _GroupedScale.apply(normed.contiguous(), routing.counts, *weights)

    def reference(self, x: Tensor, routing: Routing) -> Tensor:
        """The simple twin of ``forward``: one weighted ``rms_norm`` per tower slice, then ``cat``."""
        parts = [F.rms_norm(xs, (self.dim,), w, self.eps) for xs, w in zip(routing.split(x), self.weights)]
        return torch.cat(parts, dim=0)

    def extra_repr(self) -> str:
        return f"{self.dim}, n_weights={self.n_weights}, eps={self.eps}, towers={self.tower_ids}"


class UntiedBias(_UntiedWeights):
    """A bias per tower (``weights[k]: (dim,)``, zeros at init) added to tower-sorted rows (Qwen2's Q/K/V bias)."""

    def __init__(self, dim: int, n_weights: int = 1, tower_ids: Sequence[int] | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.weights = nn.ParameterList(nn.Parameter(torch.zeros(dim)) for _ in range(n_weights))
        self.tower_ids = _tower_ids(tower_ids, n_weights)

    def reset_parameters(self) -> None:
        for w in self.weights:
            nn.init.zeros_(w)

    def forward(self, x: Tensor, routing: Routing) -> Tensor:
        """x: (N, dim) tower-sorted -> x + each tower's bias on its rows."""
        if self.n_weights == 1:
            return x + self.weights[0].to(x.dtype)
        _check_towers(self.n_weights, routing)
        return torch.cat([xs + w.to(x.dtype) for xs, w in zip(routing.split(x), self.weights)], dim=0)

    def extra_repr(self) -> str:
        return f"{self.dim}, n_weights={self.n_weights}, towers={self.tower_ids}"


def split_stacked(state_dict: dict, prefix: str, n_weights: int) -> None:
    """In place: ``<prefix>weight`` of the stacked layout (``(n_weights, ...)``, before one Parameter per
    tower) becomes ``<prefix>weights.<k>``. Other state dicts are left as they are."""
    stacked = state_dict.get(prefix + "weight")
    if stacked is None or prefix + "weights.0" in state_dict or stacked.dim() < 2 or stacked.shape[0] != n_weights:
        return
    del state_dict[prefix + "weight"]
    for k in range(n_weights):
        state_dict[f"{prefix}weights.{k}"] = stacked[k]


def grouped_mm_linear(x: Tensor, weight: Tensor, offsets: Tensor) -> Tensor:
    """One grouped GEMM: ``y[group k] = x[group k] @ weight[k]^T``; x: (N, in), weight: (K, out, in),
    offsets: int32[K] group ends. Same result as the per-tower loop (``UntiedLinear.reference``)."""
    if x.is_cuda and x.dtype != torch.bfloat16:  # (compiled, torch itself refuses other dtypes on any device)
        raise ValueError(f"grouped_gemm='grouped_mm' runs in bf16 on CUDA, got {x.dtype}: train with trainer."
                         "precision bf16-mixed, or set model.backbone.grouped_gemm to 'loop' or 'auto'")
    return torch._grouped_mm(x, weight.transpose(-2, -1), offs=offsets)  # (N, out)


def _check_towers(n_weights: int, routing: Routing) -> None:
    if routing.n_towers != n_weights:
        raise ValueError(f"layer has {n_weights} towers but the batch was routed to {routing.n_towers}")


def scaled_std(base_std: float, n_layers: int) -> float:
    """GPT-2 style std for projections that write into the residual stream."""
    return base_std / math.sqrt(2 * n_layers)
