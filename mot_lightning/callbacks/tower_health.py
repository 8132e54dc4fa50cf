"""Per-tower training health in TensorBoard, every N optimizer steps (``configs/experiments/diagnostics.yaml``).

Tags (``<tower>/<component>`` groups of ``training/tower_stats.py``; dense runs have one tower, ``shared``):

- ``diag/grad_norm/<tower>/<component>``: 2-norm of the group's gradients exactly as the trainer clips them
  (before clipping; the squares of all groups add up to ``train/grad_norm``'s square);
- ``diag/weight_norm/<tower>/<component>``: 2-norm of the group's weights before the optimizer step;
- ``diag/update_ratio/<tower>/<component>``: ``|W_after - W_before| / |W_before|`` over the step (0 for a
  frozen tower);
- ``diag/tokens/<tower>``: tokens the tower's attention computed on in the step (all micro-batches and ranks,
  padding included: it costs the tower compute);
- MoE and hybrid runs (averaged over MoE layers, last micro-batch, mean over ranks): ``diag/router/entropy``
  (nats per token; ``log E`` is uniform), ``diag/router/load_imbalance`` (largest expert load x E; 1 is
  balanced), ``diag/router/dropped`` (``MoEStats.dropped``), ``diag/router/dead_experts`` (share of experts
  whose mean router probability is under ``dead_fraction / E``).

Logged at the step axis of ``train/loss``. Cost: a weight snapshot (one model-sized copy) and three passes
over the parameters at a logging step; nothing at other steps but a token count (benchmarks/README.md).
Under FSDP2 shards are reduced across ranks; FSDP1 flattens parameters and is refused.
"""
from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import Tensor

from mot_lightning.training.tower_stats import TowerGroups, modality_tower_labels


class TowerHealth(pl.Callback):
    def __init__(self, every_n_steps: int = 10, router: bool = True, dead_fraction: float = 0.1) -> None:
        """
        Args:
            every_n_steps: measure at every N-th optimizer step (norms, update ratios, router); tokens are
                counted at every step but logged with the rest.
            router: log the MoE router health (MoE and hybrid backbones only).
            dead_fraction: an expert is dead when its mean router probability is below ``dead_fraction / E``.
        """
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps, self.router, self.dead_fraction = every_n_steps, router, dead_fraction
        self.groups: TowerGroups | None = None
        self._grads: Tensor | None = None
        self._before: dict[int, Tensor] | None = None
        self._tokens: Tensor | None = None
        self._token_step = -1
        self._last_step = -1

    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        if isinstance(trainer.strategy, FSDPStrategy):
            raise ValueError("TowerHealth reads each tower's parameters, which FSDP1 (FSDPStrategy) flattens: "
                             "train with ModelParallelStrategy (configs/trainer/fsdp2.yaml) or DDP, or drop the "
                             "callback")

    def _due(self, step_after: int) -> bool:
        return step_after % self.every_n_steps == 0

    def _tower_groups(self, pl_module) -> TowerGroups:
        if self.groups is None:  # after configure_model and any sharding: the parameters the optimizer holds
            self.groups = TowerGroups.of(pl_module.net, pl_module.cfg)
        return self.groups

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx: int) -> None:
        labels = modality_tower_labels(pl_module.cfg)
        towers = sorted(set(labels))
        counts = torch.bincount(batch.modality.reshape(-1), minlength=len(labels)).double()
        per_tower = torch.stack([counts[[m for m, lb in enumerate(labels) if lb == t]].sum() for t in towers])
        if trainer.global_step != self._token_step or self._tokens is None:  # a new optimizer step
            self._token_step, self._tokens = trainer.global_step, torch.zeros_like(per_tower)
        self._tokens += per_tower

    def before_clipping(self, trainer: pl.Trainer, pl_module, params: list) -> None:
        """Called by ``MultiModalLM.configure_gradient_clipping`` with the parameters it clips, before it does."""
        if not self._due(trainer.global_step + 1):
            return
        groups = self._tower_groups(pl_module)
        self._grads = groups.square_sums(lambda p: p.grad)
        self._before = {id(p): p.detach().clone() for ps in groups.params for p in ps}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        stepped, self._last_step = step != self._last_step, step
        if not stepped or not self._due(step) or self._before is None:
            return
        metrics = self._norm_metrics(pl_module)
        metrics.update(self._token_metrics(trainer, pl_module))
        if self.router:
            metrics.update(self._router_metrics(trainer, pl_module))
        self._before, self._grads = None, None
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step - 1)  # the step train/loss and train/grad_norm are at

    def _norm_metrics(self, pl_module) -> dict[str, float]:
        groups, before = self._tower_groups(pl_module), self._before
        weights = groups.square_sums(lambda p: before[id(p)])
        updates = groups.square_sums(lambda p: p.detach() - before[id(p)])
        metrics = {}
        for label, g, w, u in zip(groups.labels, self._grads.tolist(), weights.tolist(), updates.tolist()):
            metrics[f"diag/grad_norm/{label}"] = g ** 0.5
            metrics[f"diag/weight_norm/{label}"] = w ** 0.5
            metrics[f"diag/update_ratio/{label}"] = (u / w) ** 0.5 if w > 0 else 0.0
        return metrics

    def _token_metrics(self, trainer: pl.Trainer, pl_module) -> dict[str, float]:
        towers = sorted(set(modality_tower_labels(pl_module.cfg)))
        total = trainer.strategy.reduce(self._tokens.to(pl_module.device), reduce_op="sum")
        return {f"diag/tokens/{t}": float(n) for t, n in zip(towers, total.tolist())}

    def _router_metrics(self, trainer: pl.Trainer, pl_module) -> dict[str, float]:
        stats = list(pl_module.net.backbone.moe_stats().values())
        if not stats:
            return {}
        rows = []
        for s in stats:
            E = s.load.numel()
            rows.append(torch.stack([s.entropy.float(), s.load.float().max() * E, s.dropped.float(),
                                     (s.mean_probs < self.dead_fraction / E).float().mean()]))
        mean = trainer.strategy.reduce(torch.stack(rows).mean(0).to(pl_module.device), reduce_op="mean")
        names = ("entropy", "load_imbalance", "dropped", "dead_experts")
        return {f"diag/router/{n}": float(v) for n, v in zip(names, mean.tolist())}
