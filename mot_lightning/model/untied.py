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
"""
from __future__ import annotations

import itertools
import math
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

    The portable form of a grouped GEMM: one matmul per tower, no concatenation
    copies forward or backward. ``UntiedLinear.reference`` is its simple twin.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, counts: tuple[int, ...]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.counts = counts
        out = x.new_empty(x.shape[0], weight.shape[1])
        for xs, w, ys in zip(x.split(counts), weight, out.split(counts)):
            torch.mm(xs, w.t(), out=ys)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        grad_w = torch.empty_like(weight) if ctx.needs_input_grad[1] else None
        gx_parts = grad_x.split(ctx.counts) if grad_x is not None else [None] * len(ctx.counts)
        for k, (xs, gs, gx) in enumerate(zip(x.split(ctx.counts), grad.split(ctx.counts), gx_parts)):
            if gx is not None:
                torch.mm(gs, weight[k], out=gx)
            if grad_w is not None:
                torch.mm(gs.t(), xs, out=grad_w[k])
        return grad_x, grad_w, None


class _GroupedScale(torch.autograd.Function):
    """``y[slice_k] = x[slice_k] * w_k`` (per-tower norm weights), written into one output."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, counts: tuple[int, ...]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.counts = counts
        out = torch.empty_like(x)
        for xs, w, ys in zip(x.split(counts), weight, out.split(counts)):
            torch.mul(xs, w, out=ys)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        grad_w = torch.empty_like(weight) if ctx.needs_input_grad[1] else None
        gx_parts = grad_x.split(ctx.counts) if grad_x is not None else [None] * len(ctx.counts)
        for k, (xs, gs, gx) in enumerate(zip(x.split(ctx.counts), grad.split(ctx.counts), gx_parts)):
            if gx is not None:
                torch.mul(gs, weight[k], out=gx)
            if grad_w is not None:
                grad_w[k] = (gs * xs).reshape(-1, xs.shape[-1]).sum(0)
        return grad_x, grad_w, None


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


class UntiedLinear(nn.Module):
    """``n_weights`` bias-free linear maps; token slices of tower ``k`` use weight ``k``.

    ``weight: (n_weights, out_features, in_features)``. With one weight set it
    is an ordinary linear layer and ignores the routing.
    """

    def __init__(self, in_features: int, out_features: int, n_weights: int = 1, *, std: float = 0.02,
                 copy_towers: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.std, self.copy_towers = std, copy_towers
        self.weight = nn.Parameter(torch.empty(n_weights, out_features, in_features))
        self.reset_parameters()

    @property
    def n_weights(self) -> int:
        return self.weight.shape[0]

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.copy_towers:
                nn.init.normal_(self.weight[0], std=self.std)
                self.weight[1:].copy_(self.weight[:1].expand_as(self.weight[1:]))
            else:
                nn.init.normal_(self.weight, std=self.std)

    def forward(self, x: Tensor, routing: Routing) -> Tensor:
        """x: (N, in) tower-sorted -> (N, out) tower-sorted, in the autocast dtype under autocast
        (as ``F.linear`` would be), else in ``x``'s dtype."""
        if self.n_weights == 1:
            return F.linear(x, self.weight[0])
        _check_towers(self.n_weights, routing)
        weight, dtype = self.weight, _autocast_dtype(x)
        if dtype is not None:  # the kernels below are not autocast ops: cast as F.linear would
            x, weight = x.to(dtype), weight.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            if routing.gemm == "grouped_mm":
                return grouped_mm_linear(x, weight, routing.group_offsets(x.device))
            if torch.compiler.is_compiling():  # the out= matmuls do not trace: the compiler fuses the cat
                return self.reference(x, routing, weight)
            return _GroupedLinear.apply(x.contiguous(), weight, routing.counts)

    def reference(self, x: Tensor, routing: Routing, weight: Tensor | None = None) -> Tensor:
        """The simple twin of ``forward``: one ``F.linear`` per tower slice, then ``cat``."""
        weight = self.weight if weight is None else weight
        return torch.cat([F.linear(xs, w) for xs, w in zip(routing.split(x), weight)], dim=0)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, n_weights={self.n_weights}"


class UntiedRMSNorm(nn.Module):
    """RMSNorm over the last dimension with one weight vector per tower (``weight: (n_weights, dim)``)."""

    def __init__(self, dim: int, n_weights: int = 1, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(n_weights, dim))

    @property
    def n_weights(self) -> int:
        return self.weight.shape[0]

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: Tensor, routing: Routing) -> Tensor:
        if self.n_weights == 1:  # weight in x's dtype, as the untied scale below (and the fused kernel) needs
            return F.rms_norm(x, (self.dim,), self.weight[0].to(x.dtype), self.eps)
        _check_towers(self.n_weights, routing)
        normed = F.rms_norm(x, (self.dim,), None, self.eps)  # (N, ..., dim), no weight yet
        weight = self.weight.to(normed.dtype)
        if torch.compiler.is_compiling():  # traceable form; the compiler fuses it into the norm
            return torch.cat([xs * w for xs, w in zip(routing.split(normed), weight)], dim=0)
        return _GroupedScale.apply(normed.contiguous(), weight, routing.counts)

    def reference(self, x: Tensor, routing: Routing) -> Tensor:
        """The simple twin of ``forward``: one weighted ``rms_norm`` per tower slice, then ``cat``."""
        parts = [F.rms_norm(xs, (self.dim,), w, self.eps) for xs, w in zip(routing.split(x), self.weight)]
        return torch.cat(parts, dim=0)

    def extra_repr(self) -> str:
        return f"{self.dim}, n_weights={self.n_weights}, eps={self.eps}"


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
