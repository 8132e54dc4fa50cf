"""Training losses per data source: ``train/<source>/loss_<modality>``.

A training batch of several sources carries ``source_ids`` (``data/batch.py``), and then the objective
returns its losses split by document (``StepLosses.doc_sums`` / ``doc_weights``, ``objectives.per_document``).
Each document belongs to one source, so a source's loss for a modality is the sum of its documents' loss
sums over the sum of their weights (target tokens; latent positions for diffusion images): the same pooling
as ``train/loss_<modality>``, restricted to the source, and pooled over the micro-batches of an optimizer
step by ``StepAverage``. Nothing objective-specific: any objective that fills ``doc_sums`` gets them. Logged
on rank 0 from its own batches (as ``train/loss``); a source or modality absent from a step logs nothing
there (``log_train_losses``). Names come from the data module's ``train_source_names``.
"""
from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import Tensor

from mot_lightning.data.batch import MultiModalBatch
from mot_lightning.objectives import StepLosses
from mot_lightning.objectives.base import document_index

SourceSums = dict[int, tuple[Tensor, Tensor]]  # source index -> (loss sums float[M], weights float[M])


def source_sums(out: StepLosses, batch: MultiModalBatch | None) -> SourceSums:
    """Each source's loss sums and weights in one micro-batch; {} without ``source_ids`` or ``doc_sums``."""
    if batch is None or batch.source_ids is None or out.doc_sums is None:
        return {}
    index, n = document_index(batch)  # (B, T) document of each position
    # every position of a document has its source, so any write of the scatter is the right one
    doc_source = torch.full((n,), -1, dtype=torch.long, device=index.device)
    doc_source.scatter_(0, index.reshape(-1), batch.source_ids.reshape(-1))  # (N,), -1: padding / unused
    keep = doc_source >= 0
    sources = doc_source[keep]
    if not sources.numel():
        return {}
    n_sources, M = int(sources.max()) + 1, out.doc_sums.shape[1]
    sums = out.doc_sums.new_zeros(n_sources, M).index_add_(0, sources, out.doc_sums[keep].detach())  # (S, M)
    weights = out.doc_weights.new_zeros(n_sources, M).index_add_(0, sources, out.doc_weights[keep])  # (S, M)
    return {i: (sums[i], weights[i]) for i in range(n_sources)}


def add_sums(total: SourceSums, new: SourceSums) -> SourceSums:
    """``total`` plus ``new``, per source (micro-batches of one optimizer step)."""
    out = dict(total)
    for i, (sums, weights) in new.items():
        if i in out:
            sums, weights = out[i][0] + sums, out[i][1] + weights
        out[i] = (sums, weights)
    return out


def source_names(module: pl.LightningModule, by_source: SourceSums) -> list[str]:
    """Source names ``0..max(by_source)``: the data module's ``train_source_names``, else ``source<i>``."""
    datamodule = getattr(module.trainer, "datamodule", None)
    names = list(getattr(datamodule, "train_source_names", None) or [])
    return names + [f"source{i}" for i in range(len(names), max(by_source, default=-1) + 1)]
