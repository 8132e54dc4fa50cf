"""Validation losses per document and their standard errors: the objectives' document sums against a
loop over documents, the ratio-estimator error against numpy, non-finite and missing data, and the
same numbers when two processes hold the documents."""
from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from mot_lightning.data.batch import IGNORE_INDEX, MultiModalBatch
from mot_lightning.modality import Modality
from mot_lightning.model import TransformerConfig
from mot_lightning.model.lm import TokenLM
from mot_lightning.objectives import NextToken, Transfusion
from mot_lightning.training import DocumentLosses, EvalLosses
from tests.objectives.batches import LAT, V, latent_batch
from tests.processes import free_port, spawn

MODALITIES = list(Modality)


def ragged_batch(seed: int, B: int = 3, T: int = 24, vocab: int = 40) -> MultiModalBatch:
    """Rows of 1-3 documents of random lengths and modalities (ids 0-19 text, 20-29 image, 30-39 speech),
    then padding with its own document id."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (B, T), generator=g)
    doc_ids, positions = torch.zeros(B, T, dtype=torch.long), torch.zeros(B, T, dtype=torch.long)
    targets = torch.full((B, T), IGNORE_INDEX)
    for b in range(B):
        n_docs = int(torch.randint(1, 4, (1,), generator=g))
        cuts = sorted((torch.randperm(T - 6, generator=g)[: n_docs - 1] + 3).tolist())
        bounds = [0, *cuts, T - 2, T]  # documents, then 2 positions of padding
        for d, (start, end) in enumerate(itertools.pairwise(bounds)):
            doc_ids[b, start:end], positions[b, start:end] = d, torch.arange(end - start)
            if end < T:  # a document: next-token targets inside it, none across its end
                targets[b, start:end - 1] = tokens[b, start + 1:end]
    modality = (tokens >= 20).long() + (tokens >= 30).long()
    return MultiModalBatch(tokens=tokens, modality=modality, doc_ids=doc_ids, positions=positions,
                           targets=targets)


def tiny(n_modalities: int, vocab: int, latent_dim: int = 0) -> TokenLM:
    torch.manual_seed(0)
    cfg = TransformerConfig(dim=32, n_layers=2, n_heads=4, n_modalities=n_modalities, sparsity="mot")
    return TokenLM(cfg, vocab, latent_dim=latent_dim)


def next_token() -> NextToken:
    objective = NextToken(z_loss=1e-3, loss_weights={"image": 3.0})  # neither enters validation losses
    objective.setup(MODALITIES, latent_dim=0)
    return objective


def per_document_loop(net: TokenLM, batch: MultiModalBatch) -> dict[tuple[int, int], np.ndarray]:
    """(row, doc) -> [x_m..., y_m...]: target counts and summed CE by modality, one document at a time."""
    logits = net(batch.tokens, batch.modality, positions=batch.positions, doc_ids=batch.doc_ids)
    ce = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE_INDEX,
                         reduction="none").view(batch.tokens.shape)
    out = {}
    for b in range(batch.batch_size):
        for d in batch.doc_ids[b].unique().tolist():
            u = np.zeros(2 * len(MODALITIES))
            for m in MODALITIES:
                mask = batch.loss_mask(m)[b] & (batch.doc_ids[b] == d)
                u[m], u[len(MODALITIES) + m] = int(mask.sum()), float(ce[b][mask].sum())
            if u[: len(MODALITIES)].sum() > 0:
                out[(b, d)] = u
    return out


def numpy_ratio_se(u: np.ndarray, groups) -> tuple[float, float]:
    """Direct: R_g = Y_g / X_g, z_i = sum_g c_g (y_ig - R_g x_ig) / X_g, SE^2 = n / (n - 1) sum_i z_i^2."""
    n, M = u.shape[0], u.shape[1] // 2
    value, z = 0.0, np.zeros(n)
    for cols, coef in groups:
        x, y = u[:, cols].sum(1), u[:, [M + c for c in cols]].sum(1)
        if x.sum() == 0:
            continue
        R = y.sum() / x.sum()
        value += coef * R
        z += coef * (y - R * x) / x.sum()
    return value, float(np.sqrt(n / (n - 1) * (z ** 2).sum()))


def test_next_token_document_sums_equal_a_loop_over_documents():
    net, objective, batch = tiny(3, 40), next_token(), ragged_batch(0)
    with torch.no_grad():
        out = objective.loss(net, batch, stage="val", seed=0)
        expected = per_document_loop(net, batch)
    D = int(batch.doc_ids.max()) + 1
    for (b, d), u in expected.items():
        got = np.concatenate([out.doc_weights[b * D + d].numpy(), out.doc_sums[b * D + d].numpy()])
        np.testing.assert_allclose(got, u, rtol=1e-5, atol=1e-5)
    assert out.doc_weights.sum() == sum(u[:3].sum() for u in expected.values())  # nothing else counted
    torch.testing.assert_close(out.doc_sums.sum(0), out.values * out.weights)
    torch.testing.assert_close(out.doc_weights.sum(0), out.weights)


def test_transfusion_document_sums_hold_the_latent_mse_of_each_image():
    obj = Transfusion(lam=2.0)
    obj.setup([Modality.TEXT, Modality.IMAGE], latent_dim=LAT)
    net, batch = tiny(2, V, LAT), latent_batch(B=3, seed=1)
    batch.doc_ids[:, 8:] = 1  # two documents per row: the first image in doc 0, the second in doc 1
    batch.targets[:, 7] = IGNORE_INDEX
    with torch.no_grad():
        out = obj.loss(net, batch, stage="val", seed=3)
    image = out.doc_weights[:, Modality.IMAGE].view(3, 2)  # (rows, docs): latent positions
    assert image.tolist() == [[4, 3], [4, 3], [4, 3]]
    image_loss = out.doc_sums[:, Modality.IMAGE].sum() / image.sum()
    torch.testing.assert_close(image_loss, out.values[Modality.IMAGE])
    assert obj.eval_groups() == [([0], 1.0), ([1], 2.0)]


def _moments(batches, net, objective):
    metric = EvalLosses(["a", "b"], MODALITIES)
    docs = {"a": [], "b": []}
    with torch.no_grad():
        for i, batch in enumerate(batches):
            set_name = "ab"[i % 2]
            out = objective.loss(net, batch, stage="val", seed=i)
            metric.update(set_name, out.doc_sums, out.doc_weights)
            docs[set_name] += list(per_document_loop(net, batch).values())
    return metric, {k: np.stack(v) for k, v in docs.items()}


def test_standard_errors_equal_numpy_on_a_small_set_of_batches():
    net, objective = tiny(3, 40), next_token()
    metric, docs = _moments([ragged_batch(s) for s in range(6)], net, objective)
    values = metric.compute("val", objective.eval_groups())
    everything = np.concatenate([docs["a"], docs["b"]])
    cases = [("val", everything), ("val/a", docs["a"]), ("val/b", docs["b"])]
    for prefix, u in cases:
        for m in MODALITIES:
            mean, se = numpy_ratio_se(u, [([int(m)], 1.0)])
            assert float(values[f"{prefix}/loss_{m.label}"]) == pytest.approx(mean, rel=1e-5)
            assert float(values[f"{prefix}/loss_{m.label}_se"]) == pytest.approx(se, rel=1e-4)
            assert 0 < se < mean
    mean, se = numpy_ratio_se(everything, [([0, 1, 2], 1.0)])
    assert float(values["val/loss"]) == pytest.approx(mean, rel=1e-5)
    assert float(values["val/loss_se"]) == pytest.approx(se, rel=1e-4)
    # a combination of two groups (as Transfusion's L_LM + lam * L_diffusion) has its cross terms
    groups = [([0, 2], 1.0), ([1], 5.0)]
    moments = DocumentLosses(3)
    moments.update(torch.tensor(everything[:, 3:]).float(), torch.tensor(everything[:, :3]).float())
    got_mean, got_se = moments.compute().combined(groups)
    want_mean, want_se = numpy_ratio_se(everything, groups)
    assert float(got_mean) == pytest.approx(want_mean, rel=1e-5)
    assert float(got_se) == pytest.approx(want_se, rel=1e-4)


def test_no_data_drops_the_tag_and_non_finite_values_are_logged():
    metric = EvalLosses(["a"], MODALITIES)
    weights = torch.tensor([[3.0, 0.0, 2.0], [1.0, 0.0, 4.0], [2.0, 0.0, 0.0]])  # no image target anywhere
    sums = torch.tensor([[6.0, float("nan"), 1.0], [2.0, 0.0, float("inf")], [5.0, 0.0, float("nan")]])
    metric.update("a", sums, weights)
    values = metric.compute("val", [([0, 1, 2], 1.0)])
    assert "val/loss_image" not in values and "val/a/loss_image" not in values  # no data: no tag
    assert float(values["val/loss_text"]) == pytest.approx(13 / 6)  # finite where finite
    assert float(values["val/loss_speech"]) == float("inf")  # non-finite: logged as such
    assert torch.isnan(values["val/loss_speech_se"]) and values["val/loss"] == float("inf")
    assert float(values["val/loss_text_se"]) > 0  # NaNs in cells without targets counted nothing


def _rank_main(rank: int, port: int, batches_path: str, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    sums, weights = torch.load(batches_path)
    metric = EvalLosses(["a"], MODALITIES)
    for i in range(rank, len(sums), 2):  # this rank's share of the documents
        metric.update("a", sums[i], weights[i])
    values = metric.compute("val", [([0, 1, 2], 1.0)])
    if rank == 0:
        torch.save({k: v.item() for k, v in values.items()}, out_path)
    dist.destroy_process_group()


@pytest.mark.multiprocess
def test_two_processes_log_the_values_of_one(tmp_path):
    net, objective = tiny(3, 40), next_token()
    with torch.no_grad():
        outs = [objective.loss(net, ragged_batch(s), stage="val", seed=s) for s in range(4)]
    sums, weights = [o.doc_sums for o in outs], [o.doc_weights for o in outs]
    torch.save((sums, weights), tmp_path / "batches.pt")
    one = EvalLosses(["a"], MODALITIES)
    for s, w in zip(sums, weights):
        one.update("a", s, w)
    expected = {k: v.item() for k, v in one.compute("val", [([0, 1, 2], 1.0)]).items()}
    port = free_port()
    spawn(_rank_main, args=(port, str(tmp_path / "batches.pt"), str(tmp_path / "out.pt")), nprocs=2)
    got = torch.load(tmp_path / "out.pt")
    assert got.keys() == expected.keys() and any(k.endswith("_se") for k in got)
    for k, value in expected.items():
        assert got[k] == pytest.approx(value, rel=1e-6), k
