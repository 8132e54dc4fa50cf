"""What a training step logs (``log_train_losses``): the losses of its whole optimizer step, and the MoE
routing statistics.

Lightning logs a step's metrics once, after its last micro-batch, with the last value each ``self.log``
received; logged raw, ``train/loss`` under ``accumulate_grad_batches: K`` would be the loss of 1/K of
the step. ``StepAverage`` pools what the step optimises instead: the total as the mean of the
micro-batch totals (Lightning backpropagates each divided by K), a modality's loss over all its
targets of the step, extras as means. Without accumulation it returns one micro-batch's values.

The optimised loss weighs each micro-batch's token mean equally (as DDP weighs ranks), which equals the
token mean of the whole step when micro-batches hold equal target counts; packed rows nearly do
(documents' last tokens and padding have no target).
"""
from __future__ import annotations

import lightning.pytorch as pl
import torch

from mot_lightning.data.batch import MultiModalBatch
from mot_lightning.objectives import StepLosses
from mot_lightning.training.source_losses import SourceSums, add_sums, source_names, source_sums


class StepAverage:
    def __init__(self) -> None:
        self.step = -1
        self._reset()

    def _reset(self) -> None:
        self._n, self._total, self._sums, self._weights = 0, 0.0, 0.0, 0.0
        self._extras: dict = {}
        self.by_source: SourceSums = {}  # the step's losses per training source so far (source_losses.py)

    def add(self, step: int, out: StepLosses, batch: MultiModalBatch | None = None) -> StepLosses:
        """Add micro-batch ``out`` (of ``batch``) of optimizer step ``step``; -> the step's losses so far
        (detached), and in ``by_source`` its losses per source when the batch carries ``source_ids``."""
        if step != self.step:  # a new optimizer step
            self.step = step
            self._reset()
        sums = torch.where(out.weights > 0, out.values.detach() * out.weights, 0.0)  # absent: no NaN * 0
        self._n += 1
        self._total = self._total + out.total.detach()
        self._sums, self._weights = self._sums + sums, self._weights + out.weights
        self.by_source = add_sums(self.by_source, source_sums(out, batch))
        for name, value in out.extras.items():
            self._extras[name] = self._extras.get(name, 0.0) + value.detach()
        n = self._n
        return StepLosses(total=self._total / n, values=self._sums / self._weights.clamp_min(1),
                          weights=self._weights, extras={k: v / n for k, v in self._extras.items()})


def forget_step_value(module: pl.LightningModule, name: str) -> None:
    """Log nothing for ``name`` at this step. Lightning logs a step metric's last value again at every later
    step that does not log it, so a modality absent from a step would show the loss of an earlier step
    there. The reset touches Lightning's result collection (``lightning<2.7`` is pinned;
    ``tests/app/test_objective_and_module.py`` checks that no stale value is logged)."""
    results = getattr(module.trainer, "_results", None)
    metric = results.get(f"training_step.{name}") if results is not None else None
    if metric is not None:
        metric.reset()


def moe_metrics(backbone) -> dict[str, float]:
    """Expert load, dropped fraction and auxiliary loss, averaged over MoE layers ({} without MoE)."""
    stats = list(backbone.moe_stats().values())
    if not stats:
        return {}
    n = len(stats)
    return {"train/moe_max_expert_load": sum(float(s.load.max()) for s in stats) / n,
            "train/moe_dropped_fraction": sum(float(s.dropped) for s in stats) / n,
            "train/moe_aux_loss": sum(float(s.aux_loss) for s in stats) / n}


def log_train_losses(module: pl.LightningModule, step: StepLosses, batch_size: int,
                     by_source: SourceSums | None = None) -> None:
    """``train/loss``, ``train/loss_<modality>`` (modalities with targets in the step), the objective's extras
    (``train/<name>``), the MoE statistics and, with ``by_source``, ``train/<source>/loss_<modality>``,
    through ``module.log``."""
    module.log("train/loss", step.total, prog_bar=True, batch_size=batch_size)
    for m, value, n in zip(module.modalities, step.values, step.weights.tolist()):
        if n > 0:
            module.log(f"train/loss_{m.label}", value, prog_bar=True, batch_size=int(n))
        else:  # a step without this modality has no loss for it
            forget_step_value(module, f"train/loss_{m.label}")
    for name, value in step.extras.items():
        module.log(f"train/{name}", value, batch_size=batch_size)
    module.log_dict(moe_metrics(module.net.backbone), batch_size=batch_size)  # {} without MoE
    if by_source:  # several training sources
        for i, name in enumerate(source_names(module, by_source)):
            sums, weights = by_source.get(i, (None, None))
            counts = weights.tolist() if weights is not None else [0.0] * len(module.modalities)
            for j, (m, n) in enumerate(zip(module.modalities, counts)):
                if n > 0:
                    module.log(f"train/{name}/loss_{m.label}", sums[j] / n, batch_size=int(n))
                else:  # absent from this step
                    forget_step_value(module, f"train/{name}/loss_{m.label}")
