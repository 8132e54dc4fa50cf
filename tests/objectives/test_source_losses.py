"""Training losses per source (training/source_losses.py): each source's loss equals the cross-entropy of
its own documents computed directly; the sources pooled give the step's loss per modality, for next-token
and Transfusion alike; micro-batches of one optimizer step pool."""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from mot_lightning.data.batch import IGNORE_INDEX
from mot_lightning.objectives import Transfusion
from mot_lightning.training import StepAverage
from mot_lightning.training.source_losses import source_sums
from tests.numerics import assert_close
from tests.objectives.batches import LAT, V, latent_batch
from tests.objectives.test_document_losses import MODALITIES, next_token, ragged_batch, tiny


def with_sources(batch, n_sources: int, seed: int, padded: bool = True):
    """Each document a random source of ``n_sources``; the padding at a row's end (``padded``) -1."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randint(0, n_sources, (batch.batch_size, int(batch.doc_ids.max()) + 1), generator=g)
    ids = table.gather(1, batch.doc_ids)  # (B, T)
    padding = batch.doc_ids == batch.doc_ids.max(dim=1, keepdim=True).values
    return replace(batch, source_ids=torch.where(padding & padded, -1, ids))


def test_each_source_loss_is_its_documents_cross_entropy():
    net, objective = tiny(len(MODALITIES), 40), next_token()
    batch = with_sources(ragged_batch(seed=3, B=4, T=32), n_sources=3, seed=1)
    out = objective.loss(net, batch, stage="train", seed=0)
    by_source = source_sums(out, batch)
    logits = net(batch.tokens, batch.modality, positions=batch.positions, doc_ids=batch.doc_ids)
    ce = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE_INDEX,
                         reduction="none").view(batch.tokens.shape)
    assert set(by_source) <= {0, 1, 2} and by_source
    for s, (sums, weights) in by_source.items():
        for m in MODALITIES:
            mask = batch.loss_mask(m) & (batch.source_ids == s)
            assert weights[m] == int(mask.sum())
            assert_close(sums[m], ce[mask].sum().detach(), reduction=batch.tokens.numel())
    for m in MODALITIES:  # the sources together are the step's loss
        total = sum(w[m] for _, w in by_source.values())
        if total:
            pooled = sum(s[m] for s, _ in by_source.values()) / total
            assert_close(pooled, out.values[m], reduction=batch.tokens.numel())


def test_transfusion_sources_pool_to_its_losses_and_one_source_batches_carry_nothing():
    torch.manual_seed(0)
    objective = Transfusion(objective="flow", lam=2.0)
    objective.setup(MODALITIES, latent_dim=LAT)
    net = tiny(len(MODALITIES), V, latent_dim=LAT)
    batch = latent_batch(B=3, T=16)
    plain = objective.loss(net, batch, stage="train", seed=5)
    assert plain.doc_sums is None and source_sums(plain, batch) == {}  # no source_ids: nothing per source
    sourced = with_sources(batch, n_sources=2, seed=2, padded=False)  # one document per row, no padding
    out = objective.loss(net, sourced, stage="train", seed=5)
    assert torch.equal(out.total, plain.total)  # per-source sums change nothing that is optimised
    by_source = source_sums(out, sourced)
    assert sorted(by_source) == sorted(set(sourced.source_ids[:, 0].tolist())) == [0, 1]
    for m in MODALITIES:
        total = sum(w[m] for _, w in by_source.values())
        if total:
            pooled = sum(s[m] for s, _ in by_source.values()) / total
            assert_close(pooled, out.values[m], reduction=batch.tokens.numel() * LAT)


def test_micro_batches_of_one_step_pool_per_source():
    net, objective = tiny(len(MODALITIES), 40), next_token()
    batches = [with_sources(ragged_batch(seed=s, B=2, T=24), n_sources=2, seed=s) for s in (4, 5)]
    outs = [objective.loss(net, b, stage="train", seed=0) for b in batches]
    average = StepAverage()
    for b, o in zip(batches, outs):
        average.add(7, o, b)
    each = [source_sums(o, b) for b, o in zip(batches, outs)]
    for s, (sums, weights) in average.by_source.items():
        assert_close(sums, sum(e[s][0] for e in each if s in e), reduction=2)
        assert torch.equal(weights, sum(e[s][1] for e in each if s in e))
    average.add(8, outs[0], batches[0])  # a new optimizer step starts over
    assert all(torch.equal(average.by_source[s][1], w) for s, (_, w) in each[0].items())
