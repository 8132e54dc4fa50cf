"""Next-token objective and the LightningModule on hand-made batches."""
import pytest
import torch
import torch.nn.functional as F

from mot_lightning.data.batch import IGNORE_INDEX, MultiModalBatch
from mot_lightning.lit_module import MultiModalLM
from mot_lightning.model import TransformerConfig
from mot_lightning.objectives import next_token_losses
from mot_lightning.schedules import WarmupCosine


def _batch(B=2, T=16, V=40, seed=0) -> MultiModalBatch:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (B, T), generator=g)
    modality = (tokens >= 20).long() + (tokens >= 30).long()  # ids 0-19 text, 20-29 image, 30-39 speech
    doc_ids = torch.zeros(B, T, dtype=torch.long)
    doc_ids[:, T // 2:] = 1
    positions = torch.cat([torch.arange(T // 2), torch.arange(T - T // 2)]).expand(B, T).clone()
    targets = torch.roll(tokens, -1, dims=1)
    targets[:, T // 2 - 1] = IGNORE_INDEX
    targets[:, -1] = IGNORE_INDEX
    return MultiModalBatch(tokens=tokens, modality=modality, doc_ids=doc_ids, positions=positions, targets=targets)


def test_per_modality_losses_equal_manual_cross_entropy():
    batch = _batch()
    logits = torch.randn(2, 16, 40)
    out = next_token_losses(logits, batch.targets, batch.target_modality(), torch.ones(3))
    for m in range(3):
        mask = batch.loss_mask(m)
        manual = F.cross_entropy(logits[mask], batch.targets[mask])
        torch.testing.assert_close(out.per_modality()[m], manual)
    all_mask = batch.loss_mask()
    torch.testing.assert_close(out.loss, F.cross_entropy(logits[all_mask], batch.targets[all_mask]))


def test_loss_weights_and_z_loss():
    batch = _batch()
    logits = torch.randn(2, 16, 40)
    w = torch.tensor([1.0, 0.0, 0.0])
    out = next_token_losses(logits, batch.targets, batch.target_modality(), w)
    torch.testing.assert_close(out.loss, out.per_modality()[0])  # only text counts
    z = next_token_losses(logits, batch.targets, batch.target_modality(), torch.ones(3), z_loss=1e-2)
    mask = batch.loss_mask()
    expected = 1e-2 * torch.logsumexp(logits[mask], -1).pow(2).mean()
    torch.testing.assert_close(z.z_loss, expected)


def _module(**kw) -> MultiModalLM:
    cfg = TransformerConfig(dim=32, n_layers=2, n_heads=4, n_modalities=3, sparsity="mot")
    m = MultiModalLM(backbone=cfg, vocab_size=40, **kw)
    m.configure_model()
    return m


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = _module()
    batch = _batch()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = model._shared_step(batch)[0].loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first


def test_norms_and_embeddings_get_no_weight_decay():
    model = _module()
    conf = model.configure_optimizers()
    decay, no_decay = conf.param_groups
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("norm" in names[id(p)] or "embed" in names[id(p)] for p in no_decay["params"])
    assert not any("norm" in names[id(p)] or "embed" in names[id(p)] for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_unknown_loss_weight_modality_is_named():
    cfg = TransformerConfig(dim=32, n_layers=1, n_heads=4, n_modalities=2)
    with pytest.raises(ValueError, match="speech"):
        MultiModalLM(backbone=cfg, vocab_size=10, loss_weights={"speech": 2.0})
    with pytest.raises(ValueError, match="vocab_size must be positive"):
        MultiModalLM(backbone=cfg)


def test_warmup_cosine_schedule_values():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = WarmupCosine(opt, warmup_steps=4, max_steps=14, min_lr_ratio=0.1)
    lrs = []
    for _ in range(16):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[9] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 0.5)).item()))
    assert lrs[14] == pytest.approx(0.1) and lrs[15] == pytest.approx(0.1)
