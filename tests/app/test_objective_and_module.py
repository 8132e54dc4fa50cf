"""The next-token objective and the LightningModule on hand-made batches: losses per modality, what the
module trains (both objectives), its optimizer groups and its parameter / FLOPs accounting."""
import pytest
import torch
import torch.nn.functional as F

from mot_lightning.lit_module import MultiModalLM
from mot_lightning.modality import Modality
from mot_lightning.model import TransformerConfig, backbone_stats
from mot_lightning.model.accounting import count_parameters
from mot_lightning.model.lm import TokenLM
from mot_lightning.objectives import NextToken, Transfusion
from mot_lightning.schedules import WarmupCosine
from tests.objectives.batches import LAT, eval_loss, latent_batch, token_batch

MODALITIES = list(Modality)


def _net() -> TokenLM:
    torch.manual_seed(0)
    return TokenLM(TransformerConfig(dim=32, n_layers=2, n_heads=4, n_modalities=3, sparsity="mot"), 40)


def _logits(net: TokenLM, batch) -> torch.Tensor:
    return net(batch.tokens, batch.modality, positions=batch.positions, doc_ids=batch.doc_ids)


def _objective(**kw) -> NextToken:
    objective = NextToken(**kw)
    objective.setup(MODALITIES, latent_dim=0)
    return objective


def test_per_modality_losses_equal_manual_cross_entropy():
    net, batch = _net(), token_batch()
    out = _objective().loss(net, batch, stage="train", seed=0)
    logits = _logits(net, batch)
    for m in MODALITIES:
        mask = batch.loss_mask(m)
        torch.testing.assert_close(out.values[m], F.cross_entropy(logits[mask], batch.targets[mask]))
        assert out.weights[m] == int(mask.sum()) > 0
    mask = batch.loss_mask()
    torch.testing.assert_close(out.total, F.cross_entropy(logits[mask], batch.targets[mask]))
    assert out.extras == {} and out.doc_sums is None  # per-document sums: validation only
    val = _objective().loss(net, batch, stage="val", seed=0)
    torch.testing.assert_close(eval_loss(_objective(), val), out.total)  # val/loss: CE over all targets
    assert float(val.doc_weights.sum()) == int(mask.sum())


def test_loss_weights_and_z_loss():
    net, batch = _net(), token_batch()
    text_only = _objective(loss_weights={"image": 0.0, "speech": 0.0}).loss(net, batch, stage="train", seed=0)
    torch.testing.assert_close(text_only.total, text_only.values[Modality.TEXT])  # only text counts
    plain = _objective().loss(net, batch, stage="val", seed=0)
    z = _objective(z_loss=1e-2).loss(net, batch, stage="val", seed=0)
    mask = batch.loss_mask()
    expected = 1e-2 * torch.logsumexp(_logits(net, batch)[mask], -1).pow(2).mean()
    torch.testing.assert_close(z.extras["z_loss"], expected)
    torch.testing.assert_close(z.total, plain.total + expected)
    torch.testing.assert_close(eval_loss(_objective(), z), plain.values @ plain.weights / plain.weights.sum())


def test_context_modalities_are_read_but_never_predicted():
    net, batch = _net(), token_batch()
    logits, image = _logits(net, batch), batch.loss_mask(Modality.IMAGE)
    objective = _objective(context=["text", "speech"], z_loss=1e-2)
    out = objective.loss(net, batch, stage="val", seed=0)
    ce = F.cross_entropy(logits[image], batch.targets[image])
    expected_z = 1e-2 * torch.logsumexp(logits[image], -1).pow(2).mean()  # the z-loss too: image targets alone
    torch.testing.assert_close(out.total, ce + expected_z)
    assert out.weights.tolist() == [0.0, float(image.sum()), 0.0]  # no text or speech loss is logged
    assert out.doc_weights[:, [0, 2]].sum() == 0 and float(out.doc_weights[:, 1].sum()) == int(image.sum())
    assert objective.eval_groups() == [([int(Modality.IMAGE)], 1.0)]  # val/loss: the image loss
    with pytest.raises(ValueError, match="leaves no modality to predict"):
        _objective(context=["text", "image", "speech"])
    with pytest.raises(ValueError, match="context: .*'video'"):
        NextToken(context=["video"])


def _module(objective=None, n_modalities: int = 3, vocab_size: int = 40, latent_dim: int = 0) -> MultiModalLM:
    torch.manual_seed(0)
    cfg = TransformerConfig(dim=32, n_layers=2, n_heads=4, n_modalities=n_modalities, sparsity="mot")
    m = MultiModalLM(backbone=cfg, vocab_size=vocab_size, objective=objective, latent_dim=latent_dim)
    m.configure_model()
    return m


def _train(model: MultiModalLM, batch, steps: int) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        loss = model._shared_step(batch, "train", seed=step).total  # fresh noise and times every step
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_tiny_model_overfits_one_batch():
    model, batch = _module(), token_batch()
    first = model._shared_step(batch, "val", seed=0).total.item()
    _train(model, batch, 60)
    assert model._shared_step(batch, "val", seed=0).total.item() < 0.2 * first


def test_tiny_transfusion_model_learns_text_and_denoising_on_one_batch():
    """The same step the module trains with: both the text CE and the diffusion loss (validation noise, fixed)
    fall on a batch it sees with fresh noise every step."""
    model, batch = _module(Transfusion(), n_modalities=2, vocab_size=24, latent_dim=LAT), latent_batch()
    before = model._shared_step(batch, "val", seed=0).values.detach()
    _train(model, batch, 60)
    after = model._shared_step(batch, "val", seed=0).values.detach()
    assert after[Modality.TEXT] < 0.5 * before[Modality.TEXT], (before, after)
    assert after[Modality.IMAGE] < 0.8 * before[Modality.IMAGE], (before, after)


def test_norms_and_embeddings_get_no_weight_decay():
    model = _module()
    conf = model.configure_optimizers()
    decay, no_decay = conf.param_groups
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("norm" in names[id(p)] or "embed" in names[id(p)] for p in no_decay["params"])
    assert not any("norm" in names[id(p)] or "embed" in names[id(p)] for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_config_errors_name_the_yaml_keys():
    cfg = TransformerConfig(dim=32, n_layers=1, n_heads=4, n_modalities=2)
    with pytest.raises(ValueError, match="speech"):
        MultiModalLM(backbone=cfg, vocab_size=10, objective=NextToken(loss_weights={"speech": 2.0}))
    with pytest.raises(ValueError, match="vocab_size must be positive"):
        MultiModalLM(backbone=cfg)
    with pytest.raises(ValueError, match="model.objective to mot_lightning.objectives.Transfusion"):
        MultiModalLM(backbone=cfg, vocab_size=10, latent_dim=LAT)  # latents need a diffusion objective
    with pytest.raises(ValueError, match="LatentImageTokenizer"):
        MultiModalLM(backbone=cfg, vocab_size=10, objective=Transfusion())  # and it needs latents
    with pytest.raises(ValueError, match="model.objective is NextToken"):
        _objective().loss(TokenLM(cfg, 24, latent_dim=LAT), latent_batch(), stage="train", seed=0)


@pytest.mark.parametrize("latent_dim", [0, LAT])
def test_accounting_counts_every_parameter_the_module_trains(latent_dim):
    objective = Transfusion() if latent_dim else None
    model = _module(objective, n_modalities=2, vocab_size=24, latent_dim=latent_dim)
    batch = latent_batch() if latent_dim else token_batch(V=24)
    T = batch.seq_len
    acc = model.accounting(T)
    stats = backbone_stats(model.cfg, T, vocab_size=24)
    embed = count_parameters(model.net.embed) + count_parameters(model.net.head)
    assert acc.params["total_with_embeddings"] == count_parameters(model) == count_parameters(model.net)
    assert acc.params["backbone_total"] == count_parameters(model.net.backbone) == stats.total_params
    assert acc.params["active_per_token"] == stats.active_params[Modality.TEXT] + embed
    assert acc.flops_per_token == stats.mean_flops_per_token
    ends = count_parameters(model.net) - embed - stats.total_params  # latent projections + timestep MLP
    assert (ends > 0) == (latent_dim > 0)
    n_latent = int(batch.latent_mask().sum())
    assert model.batch_flops(batch) == acc.flops_per_token * batch.tokens.numel() + 6.0 * ends * n_latent


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


def test_a_step_without_a_modality_logs_no_loss_for_it(tmp_path):
    """Lightning repeats a step metric's last value at steps that do not log it; the module prevents that."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader

    from tests.app.fixed_batches import logged

    batches = [token_batch(seed=0), token_batch(V=20, seed=1), token_batch(seed=2)]  # step 1: text only
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, logger=CSVLogger(tmp_path), log_every_n_steps=1,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(_module(), DataLoader(batches, batch_size=None))
    tags = logged(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")
    assert sorted(tags["train/loss_text"]) == [0, 1, 2]
    assert sorted(tags["train/loss_image"]) == sorted(tags["train/loss_speech"]) == [0, 2]
