"""Mixture-of-Experts feed-forward: a router and ``n_experts`` SwiGLU experts (MoE-4x, docs/paper.md).

Every expert has the dense FFN's width, so at capacity factor 1 a token costs
one expert's FLOPs plus the router's ``dim x n_experts`` matmul: MoE-4x is
iso-FLOP with dense (``accounting.py`` counts the router separately).

Routers (``cfg.moe_router``); ``N`` is the number of tokens this FFN sees in
the batch (all of them for ``sparsity="moe"``, one tower's for a hybrid):

- ``expert_choice`` (Zhou et al. 2022; the paper's MoE-4x): softmax over the
  experts per token, then each expert picks its top ``C`` tokens by that
  probability, ``C = min(N, ceil(capacity_factor * N / n_experts))``. Load is
  balanced by construction; a token may be picked by several experts or by
  none (its FFN output is then zero: it passes through on the residual).
  **Look-ahead**: a token is ranked against every token of the batch, later
  positions of its own sequence included, so at autoregressive evaluation its
  output depends on the future (the paper's caveat). See the evaluation mode.
- ``token_choice`` (Switch / GShard): each token takes its ``top_k`` experts;
  an expert keeps at most ``C = min(N, ceil(capacity_factor * N * top_k /
  n_experts))`` assignments, first come first served in token order (every
  first choice before any second choice); the rest are dropped. A token's
  output depends only on tokens before it in the flattened batch, so it is
  causal within a sequence. Trained with the Switch load-balancing loss
  ``n_experts * sum_e f_e * P_e`` (``f_e``: fraction of assignments to ``e``
  before capacity, ``P_e``: mean router probability of ``e``).

Evaluation (``cfg.moe_eval_mode``, only when ``not self.training``):
``"batch"`` routes exactly as in training; ``"causal"`` lets every token take
its own ``top_k`` experts with no capacity limit, so nothing about other tokens
enters its output (no look-ahead). For expert choice this is a different
routing than training (top-1 of the same router instead of the experts'
choice): the price of honest autoregressive evaluation, stated, not hidden.

Gates: a token's output is ``sum_e p_e * expert_e(x)`` over the experts that
process it, ``p`` the softmax router probability. With one expert ``p == 1``
exactly, so a 1-expert MoE at capacity factor 1 is the dense FFN.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mot_lightning.model.config import TransformerConfig
from mot_lightning.model.untied import Routing, UntiedLinear, scaled_std


@dataclass(frozen=True)
class MoEStats:
    """Per-forward routing statistics (detached), for logging."""

    # float[E]: fraction of the (token, expert) assignments that go to expert e: what the router asks for,
    # before capacity (token choice; the f_e of the aux loss); exactly 1/E-balanced by construction for expert choice
    load: Tensor
    # expert choice: fraction of tokens no expert picked; token choice: fraction of assignments dropped
    dropped: Tensor  # float[]
    aux_loss: Tensor  # float[]: unweighted load-balancing loss (0 for expert choice)
    entropy: Tensor  # float[]: mean over tokens of the router distribution's entropy (nats; log E = uniform)
    mean_probs: Tensor  # float[E]: router probability of each expert averaged over tokens


@dataclass(frozen=True)
class Dispatch:
    """The (token, expert) pairs to compute, grouped by expert (expert-major)."""

    tokens: Tensor  # long[M]: token index of each pair
    gates: Tensor  # float[M]: router probability of the pair
    counts: tuple[int, ...]  # pairs per expert (sums to M)


def expert_choice(probs: Tensor, capacity: int) -> Dispatch:
    """probs: (N, E) -> each expert's top-``capacity`` tokens."""
    gates, tokens = probs.t().topk(capacity, dim=1)  # (E, C) each
    return Dispatch(tokens=tokens.reshape(-1), gates=gates.reshape(-1), counts=(capacity,) * probs.shape[1])


def token_choice(probs: Tensor, top_k: int, capacity: int) -> tuple[Dispatch, Tensor]:
    """probs: (N, E) -> every token's top-``top_k`` experts, at most ``capacity`` pairs per expert.

    Also returns ``assigned: long[E]``, the pairs per expert before capacity.
    """
    N, E = probs.shape
    gates, experts = probs.topk(top_k, dim=-1)  # (N, k)
    experts, gates = experts.t().reshape(-1), gates.t().reshape(-1)  # (k*N,) first choices first
    tokens = torch.arange(N, device=probs.device).repeat(top_k)  # (k*N,)
    onehot = F.one_hot(experts, E)  # (k*N, E)
    arrival = (onehot.cumsum(0) * onehot).sum(-1) - 1  # (k*N,) place in its expert's queue
    keep = arrival < capacity
    experts, gates, tokens = experts[keep], gates[keep], tokens[keep]
    order = torch.argsort(experts, stable=True)  # expert-major, token order inside an expert
    counts = torch.bincount(experts, minlength=E).tolist()  # one host sync: the matmul split sizes
    dispatch = Dispatch(tokens=tokens[order], gates=gates[order], counts=tuple(counts))
    return dispatch, onehot.sum(0)


def load_balancing_loss(probs: Tensor, assigned: Tensor) -> Tensor:
    """Switch loss ``E * sum_e f_e * P_e``; 1 when perfectly balanced. probs: (N, E), assigned: long[E]."""
    if probs.shape[0] == 0:
        return probs.sum()  # 0, still in the graph
    f = assigned.float() / assigned.sum().clamp(min=1)
    return probs.shape[1] * (f * probs.mean(0)).sum()


class MoEFeedForward(nn.Module):
    """Router + ``n_experts`` SwiGLU experts of width ``ffn_hidden``; ``x: (N, dim) -> (N, dim)``."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        E = cfg.n_experts
        self.n_experts, self.hidden, self.std = E, cfg.ffn_hidden, cfg.init_std
        self.router_kind, self.top_k, self.capacity_factor = cfg.moe_router, cfg.top_k, cfg.capacity_factor
        self.eval_mode = cfg.moe_eval_mode
        self.router = nn.Parameter(torch.empty(E, cfg.dim))  # (E, dim)
        # experts stacked like untied towers: one matmul per expert on its gathered tokens
        self.w13 = UntiedLinear(cfg.dim, 2 * cfg.ffn_hidden, E, std=cfg.init_std)
        self.w2 = UntiedLinear(cfg.ffn_hidden, cfg.dim, E, std=scaled_std(cfg.init_std, cfg.n_layers))
        self.last_stats: MoEStats | None = None
        self.last_aux_loss: Tensor | None = None  # with graph; read through Transformer.aux_loss()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.router, std=self.std)  # experts reset themselves (UntiedLinear)

    def capacity(self, n_tokens: int) -> int:
        per_token = self.top_k if self.router_kind == "token_choice" else 1
        return min(n_tokens, math.ceil(self.capacity_factor * n_tokens * per_token / self.n_experts))

    def forward(self, x: Tensor, routing: Routing | None = None) -> Tensor:
        """x: (N, dim) -> (N, dim). ``routing`` is unused: every token of ``x`` may go to every expert."""
        N = x.shape[0]
        probs = F.linear(x, self.router.to(x.dtype)).float().softmax(dim=-1)  # (N, E)
        if not self.training and self.eval_mode == "causal":
            dispatch, assigned = token_choice(probs, self.top_k, capacity=N)  # no capacity: no look-ahead
        elif self.router_kind == "expert_choice":
            dispatch, assigned = expert_choice(probs, self.capacity(N)), None
        else:
            dispatch, assigned = token_choice(probs, self.top_k, self.capacity(N))
        aux = load_balancing_loss(probs, assigned) if self.router_kind == "token_choice" else probs.new_zeros(())
        self.last_aux_loss = aux
        self.last_stats = self._stats(dispatch, assigned, probs, aux)
        return self._run_experts(x, dispatch)

    def _run_experts(self, x: Tensor, d: Dispatch) -> Tensor:
        xs = x.index_select(0, d.tokens)  # (M, dim) expert-major
        r = Routing(counts=d.counts)
        gate, up = self.w13(xs, r).split(self.hidden, dim=-1)  # (M, hidden) each
        ys = self.w2(F.silu(gate) * up, r)  # (M, dim)
        ys = ys * d.gates.to(ys.dtype).unsqueeze(-1)
        return ys.new_zeros(x.shape[0], ys.shape[-1]).index_add(0, d.tokens, ys)  # (N, dim)

    @torch.no_grad()
    def _stats(self, d: Dispatch, assigned: Tensor | None, probs: Tensor, aux: Tensor) -> MoEStats:
        n_tokens = probs.shape[0]
        counts = torch.tensor(d.counts, dtype=torch.float32, device=d.gates.device)  # processed pairs
        if assigned is None:  # expert choice: tokens that no expert picked
            load = counts / counts.sum().clamp(min=1)
            picked = torch.zeros(n_tokens, dtype=torch.bool, device=d.tokens.device).index_fill(0, d.tokens, True)
            dropped = (n_tokens - picked.float().sum()) / max(n_tokens, 1)  # 0 without tokens; no branch
        else:
            load = assigned.float() / assigned.sum().clamp(min=1)
            dropped = 1.0 - counts.sum() / assigned.sum().clamp(min=1)
        # means over the tokens, 0 without tokens; no branch on the (data-dependent) token count under compile
        entropy = -(probs * probs.clamp_min(1e-30).log()).sum() / max(n_tokens, 1)
        mean_probs = probs.sum(0) / max(n_tokens, 1)
        return MoEStats(load=load, dropped=dropped, aux_loss=aux.detach(), entropy=entropy, mean_probs=mean_probs)

    def extra_repr(self) -> str:
        return (f"n_experts={self.n_experts}, router={self.router_kind}, capacity_factor={self.capacity_factor}, "
                f"top_k={self.top_k}, eval_mode={self.eval_mode}")
