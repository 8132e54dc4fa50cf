"""Validation losses with their standard errors over documents.

Each logged validation loss is a ratio over the documents ``i`` of a set: ``R = sum_i y_i / sum_i x_i``
(``y``: summed loss of the document, ``x``: the target tokens or latent positions it averages over;
``StepLosses.doc_sums`` / ``doc_weights``). Documents, not tokens, are the independent draws (the tokens
of one document are correlated), so the standard error is the linearised (delta-method) one of a ratio
estimator:

    SE(R)^2 = n / (n - 1) * sum_i (y_i - R x_i)^2 / (sum_i x_i)^2

with ``n`` the documents of the set; a document without the modality adds a zero residual (the domain
estimator of survey sampling), so every loss of a set uses the same ``n``. ``val/loss`` combines
modalities as the objective says (``Objective.eval_groups``: ``sum_g c_g R_g``, each group pooled), with
the residual ``z_i = sum_g c_g (y_ig - R_g x_ig) / X_g`` and ``SE^2 = n / (n - 1) * sum_i z_i^2``.

Every quantity is a linear function of ``u_i = [x_i, y_i]`` (float[2M]), so the whole state is
``sum_i u_i``, ``sum_i u_i u_i^T`` and ``n`` in float64: torchmetrics sum states that ranks sync by
all-reduce, of fixed size however large the set.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from mot_lightning.modality import Modality

Groups = Sequence[tuple[Sequence[int], float]]  # (modality ids pooled together, coefficient)


@dataclass  # not frozen: torchmetrics rebuilds what compute returns
class LossMoments:
    """Sums over the documents of a set; ``M`` modalities."""

    first: Tensor  # float64[2M]: sum_i [x_i, y_i]
    second: Tensor  # float64[2M, 2M]: sum_i u_i u_i^T
    n_docs: Tensor  # float64[]: documents with at least one target

    def combined(self, groups: Groups) -> tuple[Tensor, Tensor | None] | None:
        """(value, standard error) of ``sum_g c_g R_g`` over the groups that have targets; ``None`` when
        none has (no data: nothing to log), the error ``None`` with fewer than two documents. Non-finite
        losses give non-finite values (they are logged as such)."""
        M = self.first.numel() // 2
        coef_of: dict[int, Tensor] = {}  # index into u -> coefficient of z_i = sum_k a_k u_ik
        value = None
        for cols, coef in groups:
            x_cols, y_cols = list(cols), [M + c for c in cols]
            X = self.first[x_cols].sum()
            if X <= 0:  # this group has no target in the set
                continue
            R = self.first[y_cols].sum() / X
            value = coef * R if value is None else value + coef * R
            coef_of.update({k: -coef * R / X for k in x_cols} | {k: coef / X for k in y_cols})
        if value is None:
            return None
        n = self.n_docs
        if n < 2:
            return value, None
        # only the entries that enter (indexing, not 0 * u: another modality's inf must not make NaN)
        idx = list(coef_of)
        a = torch.stack([coef_of[k] for k in idx])
        return value, (n / (n - 1) * (a @ self.second[idx][:, idx] @ a)).clamp_min(0).sqrt()


class DocumentLosses(Metric):
    """Accumulates ``LossMoments`` from per-document sums and weights float[N, M] (rows of padding or of
    documents without targets count nothing)."""

    full_state_update = False

    def __init__(self, n_modalities: int) -> None:
        super().__init__()
        size = 2 * n_modalities
        self.add_state("first", default=torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("second", default=torch.zeros(size, size, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_docs", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, sums: Tensor, weights: Tensor) -> None:
        sums = torch.where(weights > 0, sums, 0.0)  # a loss without targets is no loss (and may be NaN)
        u = torch.cat([weights, sums], dim=1).to(torch.float64)  # (N, 2M)
        self.first += u.sum(0)
        self.second += u.T @ u
        self.n_docs += (weights.sum(1) > 0).sum()

    def compute(self) -> LossMoments:
        return LossMoments(self.first, self.second, self.n_docs)


class EvalLosses(nn.Module):
    """The validation (or test) losses of every set and of all sets together, with standard errors."""

    ALL = "all"

    def __init__(self, set_names: Sequence[str], modalities: Sequence[Modality]) -> None:
        super().__init__()
        self.set_names, self.modalities = list(set_names), list(modalities)
        self.metrics = nn.ModuleDict({self._key(s): DocumentLosses(len(self.modalities))
                                      for s in [self.ALL, *self.set_names]})

    @staticmethod
    def _key(set_name: str) -> str:
        return f"set__{set_name}".replace(".", "_")

    def update(self, set_name: str, sums: Tensor, weights: Tensor) -> None:
        for name in (self.ALL, set_name):
            self.metrics[self._key(name)].update(sums, weights)

    def compute(self, stage: str, groups: Groups) -> dict[str, Tensor]:
        """Tags -> values, then reset: ``<stage>/loss_<m>`` (all sets), ``<stage>/<set>/loss_<m>``,
        ``<stage>/loss`` (combined by ``groups``), each with ``..._se`` beside it. A modality with no target
        in a set has no tag there; a non-finite loss is logged as NaN/inf. Every rank must call this
        (the states are all-reduced)."""
        values: dict[str, Tensor] = {}
        for set_name in [self.ALL, *self.set_names]:
            prefix = stage if set_name == self.ALL else f"{stage}/{set_name}"
            metric = self.metrics[self._key(set_name)]
            moments = metric.compute()
            metric.reset()
            estimates = {f"{prefix}/loss_{m.label}": moments.combined([([int(m)], 1.0)])
                         for m in self.modalities}
            if set_name == self.ALL:
                estimates[f"{stage}/loss"] = moments.combined(groups)
            for tag, estimate in estimates.items():
                if estimate is None:
                    continue
                values[tag] = estimate[0].float()
                if estimate[1] is not None:
                    values[f"{tag}_se"] = estimate[1].float()
        return values
