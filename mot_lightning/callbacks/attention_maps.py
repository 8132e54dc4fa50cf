"""Cross-modal attention maps and the QK-logit scale at every validation, from one fixed validation batch.

The batch: the first ``rows`` rows of the first batch of the first validation set, taken once, so every
validation (and every run on the same data) looks at the same tokens. It runs through the objective's own
validation forward with ``Attention.probe`` set on every layer: attention there is an explicit softmax
(``model.attention.reference_attention``) under the mask that the batch's ids give (causal, bidirectional
image spans, documents), so the training kernels are untouched. Tags (``training/attention_stats.py`` defines
the shares):

- ``diag/attn/<query>_to_<key>/layer<i>``: normalised share (attention per allowed key, rows sum to 1);
- ``diag/attn_mass/<query>_to_<key>/layer<i>``: raw attention mass (rows sum to 1);
- ``diag/attn_map/layer<i>``: the normalised shares as a heatmap image (query rows x key columns);
- ``diag/qk_logit_max/<tower>``: the largest pre-softmax logit (``q.k / sqrt(hd)``, after QK-norm and RoPE) of
  any head and layer over the tower's queries on that batch (the tower whose Q/K projections made them).

Written by global rank 0 from its own batch (a sharded model runs the forward on every rank). Cost: one
forward of ``rows`` rows with T x T attention matrices per validation (benchmarks/README.md).
"""
from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from mot_lightning.callbacks.heatmaps import share_heatmap
from mot_lightning.data.batch import MultiModalBatch
from mot_lightning.model.attention import Attention, reference_attention
from mot_lightning.model.masks import build_mask_mod, dense_mask
from mot_lightning.training.attention_stats import modality_shares, tower_logit_max
from mot_lightning.training.tower_stats import modality_tower_labels


class AttentionRecorder:
    """The probe every ``Attention`` layer calls during one forward: explicit attention, recorded per layer."""

    def __init__(self, layers: list[Attention], batch: MultiModalBatch, valid: torch.Tensor, cfg) -> None:
        B, T = batch.tokens.shape
        mod = build_mask_mod(causal_=True, doc_ids=batch.doc_ids, span_ids=batch.span_ids)
        self.allowed = dense_mask(mod, B, T, batch.tokens.device)  # (B, 1, T, T)
        self.modality, self.valid, self.n_modalities = batch.modality, valid, cfg.n_modalities
        labels = modality_tower_labels(cfg)
        self.towers = sorted(set(labels))
        self.query_tower = torch.tensor([self.towers.index(lb) for lb in labels],
                                        device=batch.modality.device)[batch.modality]  # (B, T)
        self.layer_of = {id(m): i for i, m in enumerate(layers)}
        self.shares: dict[int, torch.Tensor] = {}
        self.mass: dict[int, torch.Tensor] = {}
        self.qk_max: dict[int, torch.Tensor] = {}

    def __call__(self, module: Attention, q, k, v):
        y, probs, logits = reference_attention(q, k, v, self.allowed)
        i = self.layer_of[id(module)]
        self.shares[i], self.mass[i], _ = modality_shares(probs, self.allowed, self.modality, self.valid,
                                                          self.n_modalities)
        self.qk_max[i] = tower_logit_max(logits, self.query_tower, self.valid, len(self.towers))
        return y


def record_attention(pl_module, batch: MultiModalBatch, valid: torch.Tensor) -> AttentionRecorder:
    """Run the objective's validation forward on ``batch`` with every attention layer probed."""
    layers = [m for m in pl_module.net.modules() if isinstance(m, Attention)]
    recorder = AttentionRecorder(layers, batch, valid, pl_module.cfg)
    try:
        for m in layers:
            m.probe = recorder
        with torch.no_grad(), torch.compiler.set_stance("force_eager"):
            pl_module.objective.loss(pl_module.net, batch, stage="val", seed=0)
    finally:
        for m in layers:
            m.probe = None
    return recorder


class AttentionMaps(pl.Callback):
    def __init__(self, rows: int = 4, heatmaps: bool = True) -> None:
        """
        Args:
            rows: rows of the fixed validation batch (its attention matrices take ``rows x heads x T^2`` floats).
            heatmaps: also write one heatmap image per layer.
        """
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        self.rows, self.heatmaps = rows, heatmaps
        self.batch: MultiModalBatch | None = None
        self.last: AttentionRecorder | None = None

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.batch is None and batch_idx == 0 and dataloader_idx == 0:
            self.batch = batch._apply(lambda t: t[: self.rows].clone())

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        if self.batch is None or trainer.sanity_checking:
            return
        pad_id = getattr(getattr(trainer.datamodule, "vocab", None), "pad_id", None)
        valid = self.batch.tokens != pad_id if pad_id is not None else torch.ones_like(self.batch.tokens, dtype=bool)
        with trainer.precision_plugin.val_step_context():  # the validation's own precision (bf16-mixed: autocast)
            self.last = record_attention(pl_module, self.batch, valid)
        self._write(trainer, pl_module, self.last)

    def metrics(self, pl_module, rec: AttentionRecorder) -> dict[str, float]:
        labels = [m.label for m in pl_module.modalities]
        out = {}
        for i in sorted(rec.shares):
            for name, table in (("attn", rec.shares[i]), ("attn_mass", rec.mass[i])):
                for a, qa in enumerate(labels):
                    for b, kb in enumerate(labels):
                        if not torch.isnan(table[a, b]):
                            out[f"diag/{name}/{qa}_to_{kb}/layer{i}"] = float(table[a, b])
        top = torch.stack(list(rec.qk_max.values())).amax(0)
        out.update({f"diag/qk_logit_max/{t}": float(v) for t, v in zip(rec.towers, top.tolist()) if v > -1e30})
        return out

    def _write(self, trainer: pl.Trainer, pl_module, rec: AttentionRecorder) -> None:
        pl_module.log_dict(self.metrics(pl_module, rec), sync_dist=False)  # at val/loss's step; rank 0's written
        writer = next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if writer is None or not self.heatmaps or not trainer.is_global_zero:
            return
        import matplotlib.pyplot as plt

        step = max(trainer.global_step - 1, 0)  # the step Lightning logs this validation's scalars at
        labels = [m.label for m in pl_module.modalities]
        for i in sorted(rec.shares):
            fig = share_heatmap(rec.shares[i].cpu().numpy(), labels, f"layer {i}, step {step}")
            writer.add_figure(f"diag/attn_map/layer{i}", fig, global_step=step)
            plt.close(fig)
