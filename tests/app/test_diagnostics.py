"""Diagnostics (docs/diagnostics.md): per-tower norms against the clipped norm, a frozen tower's zero update,
tokens per tower, attention shares against a direct per-query computation, a planted mask, the noise bins
against the validation loss, and the router entropy against its definition."""
from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from mot_lightning.callbacks import TowerHealth
from mot_lightning.callbacks.attention_maps import record_attention
from mot_lightning.lit_module import MultiModalLM
from mot_lightning.modality import Modality
from mot_lightning.model import TransformerConfig
from mot_lightning.model.attention import Attention, reference_attention
from mot_lightning.model.lm import TokenLM
from mot_lightning.model.masks import build_mask_mod, dense_mask
from mot_lightning.model.moe import MoEFeedForward
from mot_lightning.objectives import Transfusion
from mot_lightning.training.freezing import Freeze
from mot_lightning.training.noise_bins import NoiseBinLosses
from mot_lightning.training.tower_stats import TowerGroups
from tests.app.fixed_batches import VOCAB, FixedBatches, adamw, logged
from tests.numerics import assert_close, transformer_reduction
from tests.objectives.batches import LAT, eval_loss, latent_batch, token_batch

CFG = dict(dim=32, n_layers=2, n_heads=4, n_modalities=3)


@pytest.fixture(scope="module")
def frozen_image_run(tmp_path_factory) -> dict[str, dict[int, float]]:
    """3 clipped steps of a MoT whose image tower is frozen by config, TowerHealth at every step."""
    pl.seed_everything(0)
    model = MultiModalLM(backbone=TransformerConfig(**CFG, sparsity="mot"), vocab_size=VOCAB, optimizer=adamw,
                         freeze=Freeze(modalities=["image"]))
    out = tmp_path_factory.mktemp("tower_health")
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=3, gradient_clip_val=0.05, logger=CSVLogger(out),
                         log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                         callbacks=[TowerHealth(every_n_steps=1)])
    trainer.fit(model, datamodule=FixedBatches(3, 1))
    return logged(Path(trainer.logger.log_dir) / "metrics.csv")


def test_tower_grad_norms_add_up_to_the_clipped_norm(frozen_image_run):
    m = frozen_image_run
    grads = {k: v for k, v in m.items() if k.startswith("diag/grad_norm/")}
    assert {k.split("/")[2] for k in grads} == {"text", "image", "speech", "shared"}
    assert {"diag/grad_norm/text/attn", "diag/grad_norm/text/ffn", "diag/grad_norm/text/norm",
            "diag/grad_norm/shared/embed", "diag/grad_norm/shared/head"} <= set(grads)
    for step, clipped in m["train/grad_norm"].items():
        total = math.sqrt(sum(v[step] ** 2 for v in grads.values()))
        assert total == pytest.approx(clipped, rel=1e-5)  # float32 norms summed in another order
        assert clipped > 0.05  # every step clips: the norm is the pre-clip one


def test_a_frozen_tower_logs_zero_update_and_tokens_add_up(frozen_image_run):
    m = frozen_image_run
    for component in ("attn", "ffn", "norm"):
        assert set(m[f"diag/update_ratio/image/{component}"].values()) == {0.0}
        assert set(m[f"diag/grad_norm/image/{component}"].values()) == {0.0}
        assert min(m[f"diag/update_ratio/text/{component}"].values()) > 1e-4
        assert min(m[f"diag/weight_norm/image/{component}"].values()) > 0
    batch = token_batch(B=8, T=16, V=VOCAB, seed=1)  # FixedBatches' step 1
    counts = torch.bincount(batch.modality.reshape(-1), minlength=3).tolist()
    assert [m[f"diag/tokens/{t}"][1] for t in ("text", "image", "speech")] == counts


def test_groups_partition_the_parameters_dense_and_grouped():
    for cfg, towers in ((TransformerConfig(**CFG, sparsity="dense"), {"shared"}),
                        (TransformerConfig(**CFG, sparsity="mot", towers=[0, 0, 1]), {"shared", "text+image",
                                                                                       "speech"})):
        net = TokenLM(cfg, VOCAB)
        groups = TowerGroups.of(net, cfg)
        flat = [id(p) for ps in groups.params for p in ps]
        assert sorted(flat) == sorted(id(p) for p in net.parameters())  # each parameter in exactly one group
        assert {label.split("/")[0] for label in groups.labels} == towers
        total = torch.nn.utils.get_total_norm(list(net.parameters()))  # float32
        n = sum(p.numel() for p in net.parameters())
        assert_close(groups.square_sums(lambda p: p).sum().sqrt().float(), total, reduction=n)


def _module(sparsity: str = "mot") -> MultiModalLM:
    torch.manual_seed(0)
    module = MultiModalLM(backbone=TransformerConfig(**CFG, sparsity=sparsity), vocab_size=VOCAB)
    module.configure_model()
    with torch.no_grad():  # weights at a trained model's scale: attention far from uniform
        for m in module.net.modules():
            if isinstance(m, Attention):
                for w in m.wqkv.weights:
                    w.mul_(8.0)
    return module.double().eval()  # float64: the shares against their definition to float64 rounding


def _probs_by_layer(module: MultiModalLM, batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(probs, logits) of every layer from a probe of the test's own."""
    seen = []
    mask = dense_mask(build_mask_mod(doc_ids=batch.doc_ids), *batch.tokens.shape, "cpu")

    def probe(module_, q, k, v):
        y, probs, logits = reference_attention(q, k, v, mask)
        seen.append((probs, logits))
        return y

    layers = [m for m in module.net.modules() if isinstance(m, Attention)]
    for m in layers:
        m.probe = probe
    try:
        with torch.no_grad():
            module.net(batch.tokens, batch.modality, positions=batch.positions, doc_ids=batch.doc_ids)
    finally:
        for m in layers:
            m.probe = None
    return seen


def test_the_probe_forward_is_the_models_forward():
    module, batch = _module(), token_batch(B=2, T=16, V=VOCAB)
    with torch.no_grad():
        fast = module.net(batch.tokens, batch.modality, positions=batch.positions, doc_ids=batch.doc_ids)
    mask = dense_mask(build_mask_mod(doc_ids=batch.doc_ids), 2, 16, "cpu")
    layers = [m for m in module.net.modules() if isinstance(m, Attention)]
    for m in layers:
        m.probe = lambda mod, q, k, v: reference_attention(q, k, v, mask)[0]
    try:
        with torch.no_grad():
            explicit = module.net(batch.tokens, batch.modality, positions=batch.positions, doc_ids=batch.doc_ids)
    finally:
        for m in layers:
            m.probe = None
    assert_close(explicit, fast, reduction=transformer_reduction(2, 32, module.cfg.ffn_hidden, 16))


def direct_shares(probs: torch.Tensor, mask: torch.Tensor, modality: torch.Tensor, M: int) -> torch.Tensor:
    """The normalised shares by their definition, one query and head at a time."""
    B, H, T, _ = probs.shape
    sums, counts = torch.zeros(M, M, dtype=torch.float64), torch.zeros(M, dtype=torch.float64)
    for b in range(B):
        for i in range(T):
            allowed = [j for j in range(T) if mask[b, 0, i, j]]
            a = int(modality[b, i])
            for h in range(H):
                density = torch.zeros(M, dtype=torch.float64)
                for key_mod in range(M):
                    keys = [j for j in allowed if int(modality[b, j]) == key_mod]
                    if keys:
                        density[key_mod] = probs[b, h, i, keys].double().sum() / len(keys)
                sums[a] += density / density.sum() / H
            counts[a] += 1
    return sums / counts[:, None]


def test_attention_shares_sum_to_one_and_match_a_direct_computation():
    module, batch = _module(), token_batch(B=2, T=16, V=VOCAB)
    valid = torch.ones_like(batch.tokens, dtype=torch.bool)
    rec = record_attention(module, batch, valid)
    seen = _probs_by_layer(module, batch)
    mask = dense_mask(build_mask_mod(doc_ids=batch.doc_ids), 2, 16, "cpu")
    for i, (probs, logits) in enumerate(seen):
        share = rec.shares[i]
        ones = torch.ones(3, dtype=torch.float64)
        assert_close(share.sum(1), ones, reduction=16)
        assert_close(rec.mass[i].sum(1), ones, reduction=16)
        assert_close(share, direct_shares(probs, mask, batch.modality, 3), reduction=16 * 4)
        assert share.min() > 0.01 and (share - 1 / 3).abs().max() > 0.01  # not uniform: a real test of the sums
        for t in range(3):  # the largest allowed logit of any head over the tower's queries
            query_max = logits.amax(dim=(1, 3))[batch.modality == t].max()
            assert float(rec.qk_max[i][rec.towers.index(Modality(t).label)]) == pytest.approx(float(query_max))


def test_image_queries_masked_from_text_keys_log_zero_image_to_text():
    module, batch = _module(), token_batch(B=2, T=16, V=VOCAB)
    valid = torch.ones_like(batch.tokens, dtype=torch.bool)
    before = record_attention(module, batch, valid)
    assert float(before.shares[0][Modality.IMAGE, Modality.TEXT]) > 0.05
    batch.doc_ids = batch.modality.clone()  # planted: every modality its own document
    after = record_attention(module, batch, valid)
    for i in after.shares:
        assert float(after.shares[i][Modality.IMAGE, Modality.TEXT]) == 0.0
        assert float(after.mass[i][Modality.IMAGE, Modality.TEXT]) == 0.0
        assert float(after.shares[i][Modality.IMAGE, Modality.IMAGE]) == pytest.approx(1.0)


def test_noise_bin_losses_average_back_to_the_validation_loss():
    torch.manual_seed(0)
    objective = Transfusion(num_steps=100)
    objective.setup(list(Modality)[:2], LAT)
    net = TokenLM(TransformerConfig(dim=32, n_layers=2, n_heads=4, n_modalities=2), 24, latent_dim=LAT)
    torch.nn.init.normal_(net.latent_out.weight, std=0.5)  # a non-zero prediction: bins differ
    bins = NoiseBinLosses(4)
    images = []
    for seed in range(3):
        batch = latent_batch(B=4, T=16, seed=seed)
        with torch.no_grad():
            out = objective.loss(net, batch, stage="val", seed=seed)
        bins.update(out.latent_err, out.noise_level, batch.latent_mask())
        images.append((out.doc_sums[:, Modality.IMAGE].sum(), out.doc_weights[:, Modality.IMAGE].sum()))
    losses, counts = bins.compute()
    assert (counts > 0).all() and counts.sum() == sum(float(w) for _, w in images)
    expected = sum(float(s) for s, _ in images) / sum(float(w) for _, w in images)
    assert float((losses * counts).sum() / counts.sum()) == pytest.approx(expected, rel=1e-6)
    assert float(eval_loss(objective, out)) > 0  # the batch's validation loss exists as validation logs it
    assert losses.max() - losses.min() > 1e-3  # the bins see different noise levels


def test_router_entropy_and_dead_experts_by_definition():
    torch.manual_seed(0)
    cfg = TransformerConfig(dim=16, n_layers=1, n_heads=2, n_modalities=1, sparsity="moe", moe_router="token_choice")
    moe = MoEFeedForward(cfg)
    with torch.no_grad():
        moe.router[0].fill_(0.0)
        moe.router[0, 0] = -50.0  # expert 0 starved: its probability is ~0 for tokens with x[0] > 0
    x = torch.randn(64, 16).abs()
    moe(x)
    p32 = torch.softmax(x @ moe.router.detach().T, dim=-1)
    p = p32.double()
    direct = -torch.special.xlogy(p, p).sum(-1).mean()  # 0 log 0 = 0
    s = moe.last_stats
    assert float(s.entropy) == pytest.approx(float(direct), rel=1e-5)
    assert_close(s.mean_probs, p32.mean(0), reduction=64 * 16)
    assert float(s.mean_probs[0]) < 0.1 / moe.n_experts < float(s.mean_probs[1:].min())


def test_tower_health_logs_router_health_of_a_moe_run(tmp_path):
    pl.seed_everything(0)
    cfg = TransformerConfig(**CFG, sparsity="moe", moe_router="token_choice", n_experts=4)
    model = MultiModalLM(backbone=cfg, vocab_size=VOCAB, optimizer=adamw)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=CSVLogger(tmp_path), log_every_n_steps=1,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, callbacks=[TowerHealth(every_n_steps=1)])
    trainer.fit(model, datamodule=FixedBatches(2, 1))
    m = logged(Path(trainer.logger.log_dir) / "metrics.csv")
    stats = list(model.net.backbone.moe_stats().values())  # the last forward: the last logged step's
    assert len(stats) == 2
    expected = {"entropy": sum(float(s.entropy) for s in stats) / 2,
                "load_imbalance": sum(float(s.load.max()) * 4 for s in stats) / 2,
                "dropped": sum(float(s.dropped) for s in stats) / 2}
    for name, value in expected.items():
        assert m[f"diag/router/{name}"][1] == pytest.approx(value, rel=1e-6), name
    assert 0 < m["diag/router/entropy"][1] <= math.log(4) and m["diag/router/load_imbalance"][1] >= 1
    assert m["diag/router/dead_experts"][1] == 0.0  # a fresh router starves no expert
    assert {"diag/grad_norm/shared/ffn", "diag/tokens/shared"} <= set(m)  # MoE: every parameter is shared
