"""The Transfusion objective as the LightningModule trains with it: one time per image, seeded training
draws, fixed validation noise, L = L_LM + lam * L_diffusion, and its sampler entry."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mot_lightning.data.batch import MultiModalBatch
from mot_lightning.modality import Modality
from mot_lightning.model import TransformerConfig
from mot_lightning.model.lm import TokenLM
from mot_lightning.objectives import FlowMatching, NoiseSchedule, Transfusion
from tests.objectives.batches import LAT, V, eval_loss, latent_batch

MODALITIES = [Modality.TEXT, Modality.IMAGE]


def tiny_net(seed: int = 0) -> TokenLM:
    torch.manual_seed(seed)
    cfg = TransformerConfig(dim=32, n_layers=2, n_heads=4, n_modalities=2, sparsity="mot")
    return TokenLM(cfg, V, latent_dim=LAT)


def ready(**kw) -> Transfusion:
    objective = Transfusion(**kw)
    objective.setup(MODALITIES, latent_dim=LAT)
    return objective


def _image_times(t: torch.Tensor, batch: MultiModalBatch) -> list[list[float]]:
    """The time of each image of each row; asserts every patch of an image carries it."""
    out = []
    for b in range(batch.batch_size):
        row = []
        for s in range(int(batch.span_ids[b].max()) + 1):
            times = t[b][batch.span_ids[b] == s]
            assert (times == times[0]).all(), (b, s, times)
            row.append(float(times[0]))
        out.append(row)
    return out


@pytest.mark.parametrize("objective", ["ddpm", "flow"])
def test_training_draws_one_time_per_image_from_the_seed_alone(objective):
    obj, batch = ready(objective=objective), latent_batch(second_image=False)
    t, noise = obj.times_and_noise(batch, "train", seed=5)
    assert t.shape == batch.tokens.shape and noise.shape == batch.latents.shape
    times = _image_times(t, batch)
    assert [len(r) for r in times] == [2, 1] and len({x for r in times for x in r}) == 3
    if objective == "ddpm":
        assert t.dtype == torch.long and 0 <= int(t.min()) and int(t.max()) < 1000
    torch.manual_seed(123)  # the global RNG plays no part: a resumed run redraws the same
    t2, noise2 = obj.times_and_noise(batch, "train", seed=5)
    assert torch.equal(t, t2) and torch.equal(noise, noise2)
    t3, noise3 = obj.times_and_noise(batch, "train", seed=6)
    assert not torch.equal(noise, noise3) and not torch.equal(t, t3)


@pytest.mark.parametrize("objective", ["ddpm", "flow"])
def test_validation_times_are_the_fixed_grid_and_noise_depends_on_val_seed_and_batch(objective):
    obj, batch = ready(objective=objective), latent_batch()
    t, noise = obj.times_and_noise(batch, "val", seed=3)
    grid = obj.process.fixed_t(4).tolist()  # 2 rows x 2 images: the grid once, in shuffled order
    times = [x for row in _image_times(t, batch) for x in row]
    assert sorted(times) == pytest.approx(sorted(grid)) and times != pytest.approx(grid)
    torch.manual_seed(99)
    again = obj.times_and_noise(batch, "val", seed=3)
    assert torch.equal(t, again[0]) and torch.equal(noise, again[1])
    assert not torch.equal(noise, obj.times_and_noise(batch, "val", seed=4)[1])  # another batch
    other_runs_seed = ready(objective=objective, val_seed=1)
    assert not torch.equal(noise, other_runs_seed.times_and_noise(batch, "val", seed=3)[1])


@pytest.mark.parametrize("objective", ["ddpm", "flow"])
def test_loss_is_lm_plus_lam_times_the_latent_mse(objective):
    """At initialisation the latent head outputs 0, so the image loss is the mean squared target (noise for
    DDPM, noise - x0 for flow) over latent positions; text is the next-token CE of its targets."""
    net, batch = tiny_net(), latent_batch(second_image=False)
    obj = ready(objective=objective, lam=5.0)
    out = obj.loss(net, batch, stage="val", seed=2)
    _, noise = obj.times_and_noise(batch, "val", seed=2)
    mask = batch.latent_mask()
    target = noise if objective == "ddpm" else noise - batch.latents
    torch.testing.assert_close(out.values[Modality.IMAGE], target[mask].pow(2).mean())
    assert out.weights[Modality.IMAGE] == int(mask.sum()) == 11
    assert out.weights[Modality.TEXT] == int(batch.loss_mask(Modality.TEXT).sum())
    assert 2.0 < out.values[Modality.TEXT].item() < 2 * torch.log(torch.tensor(float(V)))  # a CE near log V
    torch.testing.assert_close(out.extras["loss_lm"], out.values[Modality.TEXT])  # unit weights, no z-loss
    torch.testing.assert_close(out.total, out.values[Modality.TEXT] + 5.0 * out.values[Modality.IMAGE])
    torch.testing.assert_close(eval_loss(obj, out), out.total)  # val/loss: the same, from document sums
    torch.testing.assert_close(out.doc_weights.sum(0), out.weights)
    assert "z_loss" not in out.extras


def test_text_loss_is_the_cross_entropy_of_the_network_logits():
    net, batch = tiny_net(), latent_batch()
    obj = ready()
    out = obj.loss(net, batch, stage="val", seed=0)
    t, noise = obj.times_and_noise(batch, "val", seed=0)
    x_t = obj.process.corrupt(batch.latents.reshape(-1, LAT), noise.reshape(-1, LAT), t.reshape(-1))
    logits, _ = net(batch.tokens, batch.modality, positions=batch.positions, doc_ids=batch.doc_ids,
                    span_ids=batch.span_ids, latents=x_t.view_as(batch.latents), timesteps=obj.time_input(t))
    mask = batch.loss_mask()
    torch.testing.assert_close(out.values[Modality.TEXT], F.cross_entropy(logits[mask], batch.targets[mask]))


def test_z_loss_and_lam_enter_the_total():
    net, batch = tiny_net(), latent_batch()
    plain = ready(lam=0.0).loss(net, batch, stage="val", seed=0)
    torch.testing.assert_close(plain.total, plain.values[Modality.TEXT])
    z = ready(lam=0.0, z_loss=1e-2).loss(net, batch, stage="val", seed=0)
    assert float(z.extras["z_loss"]) > 0
    torch.testing.assert_close(z.total, plain.total + z.extras["z_loss"])
    torch.testing.assert_close(eval_loss(ready(), z), eval_loss(ready(), plain))  # val/loss leaves it out


def test_objective_checks_name_the_yaml_keys():
    for bad in ({"objective": "score"}, {"schedule": "sqrt"}, {"t_sampling": "beta"}, {"lam": -1.0},
                {"clip_x0": 0.0}):
        with pytest.raises(ValueError):
            Transfusion(**bad)
    with pytest.raises(ValueError, match="data.image_tokenizer"):
        Transfusion().setup(MODALITIES, latent_dim=0)
    with pytest.raises(ValueError, match="lam"):
        Transfusion(loss_weights={"image": 2.0}).setup(MODALITIES, latent_dim=LAT)
    with pytest.raises(ValueError, match="speech"):
        Transfusion(loss_weights={"speech": 2.0}).setup(MODALITIES, latent_dim=LAT)
    discrete = latent_batch()
    discrete.latents = discrete.span_ids = None
    with pytest.raises(ValueError, match="LatentImageTokenizer"):
        ready().loss(tiny_net(), discrete, stage="train", seed=0)


def test_time_sampling_and_time_input():
    g = torch.Generator().manual_seed(0)
    ddpm = Transfusion(num_steps=50)
    assert isinstance(ddpm.process, NoiseSchedule)
    assert isinstance(Transfusion(objective="flow").process, FlowMatching)
    t = ddpm.sample_t(4000, generator=g)
    assert t.dtype == torch.long and int(t.min()) == 0 and int(t.max()) == 49
    assert ddpm.time_input(t).dtype == torch.float32 and torch.equal(ddpm.time_input(t), t.float())
    mid = Transfusion(num_steps=50, t_sampling="logit_normal").sample_t(4000, generator=g)

    def in_middle(x):
        return ((x >= 12) & (x < 38)).float().mean()

    assert in_middle(mid) > in_middle(t) + 0.1  # logit-normal puts more mass mid-schedule
    flow = Transfusion(objective="flow")
    tf = flow.sample_t(1000, generator=g)
    assert tf.is_floating_point() and 0 <= float(tf.min()) and float(tf.max()) < 1
    torch.testing.assert_close(flow.time_input(tf), tf * 1000)


def test_sample_dispatches_to_the_samplers():
    x0 = torch.randn(2, 3, 4, dtype=torch.float64)
    obj = Transfusion(num_steps=40, schedule="linear")
    ab = obj.process.alphas_cumprod

    def oracle(x_t, t):  # the exact noise of x_t around x0
        a = ab[t].reshape(-1, 1, 1)
        return ((x_t.double() - a.sqrt() * x0) / (1 - a).sqrt()).float()
    for sampler in ("ddim", "ddpm"):
        g = torch.Generator().manual_seed(0)
        out = obj.sample(oracle, x0.shape, sampler=sampler, steps=10, generator=g)
        torch.testing.assert_close(out, x0.float(), atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="objective: flow"):
        obj.sample(oracle, x0.shape, sampler="flow")
    with pytest.raises(ValueError, match="sampler must be"):
        obj.sample(oracle, x0.shape, sampler="euler")
