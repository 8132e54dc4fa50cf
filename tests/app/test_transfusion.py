"""The Transfusion setting end to end: real `mot fit` runs on the demo corpus with KL-VAE latents."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mot_lightning import sampling
from mot_lightning.building import build, load_weights
from mot_lightning.commands.compare import main as compare_main
from mot_lightning.commands.generate import main as generate_main
from mot_lightning.modality import Modality
from tests.app.conftest import CONFIGS, TINY_MODEL, TRANSFUSION, data_args, run_dir, run_fit

STEPS = 40
TRAIN = [*TRANSFUSION, "--trainer.max_steps", str(STEPS), "--trainer.val_check_interval", "20",
         "--trainer.limit_val_batches", "2", "--data.loader.train_batches_per_epoch", "20",
         "--trainer.log_every_n_steps", "4", "--model.scheduler.init_args.max_steps", str(STEPS),
         "--model.scheduler.init_args.warmup_steps", "5"]


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def pair(transfusion_env, tmp_path_factory) -> Path:
    """A dense and a MoT Transfusion run (same seed, same data) under one runs/ directory."""
    save_dir = tmp_path_factory.mktemp("transfusion_pair")
    for variant in ("dense", "mot"):
        run_fit(["--config", str(CONFIGS / f"transfusion/{variant}.yaml"), *TRAIN], transfusion_env, save_dir)
    return save_dir


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["dense", "mot"])
def test_both_losses_fall_and_images_are_the_diffusion_loss(pair, variant):
    s = _scalars(max(run_dir(pair / "transfusion" / variant).glob("version_*")))
    for tag in ("train/loss_text", "train/loss_image"):
        values = [v for _, v in s[tag]]
        assert len(values) >= 8, tag
        first, last = sum(values[:2]) / 2, sum(values[-2:]) / 2
        assert last < 0.9 * first, (tag, values)
    # the image loss is a diffusion MSE (starts near 1: the latent head is zero-initialised, the noise unit
    # variance), not a cross-entropy over a codebook
    assert 0.3 < s["train/loss_image"][0][1] < 1.5
    # train/loss = L_LM + 5 * L_diffusion at every logged step
    lm, img, total = (dict(s[t]) for t in ("train/loss_lm", "train/loss_image", "train/loss"))
    for step in total:  # a step without an image logs no image loss: there L = L_LM
        assert total[step] == pytest.approx(lm[step] + 5.0 * img.get(step, 0.0), rel=1e-4)
    for tag in ("val/loss_image", "val/val_seen/loss_image", "val/val_heldout/loss_image", "val/loss_text"):
        assert len(s[tag]) == 2, tag
    assert s["val/loss_image"][-1][1] < s["val/loss_image"][0][1]


@pytest.mark.slow
def test_validation_noise_is_fixed_so_runs_are_comparable(pair, transfusion_env, tmp_path):
    """`mot validate` of the same checkpoint twice gives the same diffusion loss to the last digit."""
    ckpt = run_dir(pair / "transfusion" / "mot") / "checkpoints" / "last.ckpt"
    values = []
    for i in range(2):
        run_fit(["--config", str(CONFIGS / "transfusion/mot.yaml"), *TRANSFUSION, "--ckpt_path", str(ckpt),
                 "--trainer.limit_val_batches", "2"], transfusion_env, tmp_path / str(i), command="validate")
        validated = run_dir(tmp_path / str(i) / "transfusion" / "mot") / "validate" / "version_0"
        values.append(_scalars(validated)["val/loss_image"])
    assert values[0] == values[1]


@pytest.mark.slow
def test_mot_compare_reports_the_image_step_matching_fraction(pair, tmp_path, capsys):
    out = tmp_path / "cmp"
    compare_main([str(pair / "transfusion" / "dense"), str(pair / "transfusion" / "mot"), "--out", str(out)])
    rows = {r["key"]: r for r in csv.DictReader((out / "table.csv").open())}
    image = rows["train/loss_image"]
    assert image["group"] == "transfusion/mot"
    assert image["s_steps"] != "" or image["s_steps_reached"] == "0/1"
    assert float(image["baseline_final"]) > 0 and "val/loss_image" in rows
    assert (out / "loss_vs_steps.png").stat().st_size > 5000


@pytest.fixture(scope="module")
def trained(pair, transfusion_env):
    """The MoT run's model (weights loaded, eval) and data module, as `mot generate` builds them."""
    model, dm = build([str(CONFIGS / "transfusion/mot.yaml")], [*TINY_MODEL, *data_args(transfusion_env)])
    load_weights(model, str(run_dir(pair / "transfusion" / "mot") / "checkpoints" / "last.ckpt"), "cpu")
    return model, dm


def _sample(trained, seed: int, **kw) -> torch.Tensor:
    model, dm = trained
    settings = sampling.SamplingSettings(seed=seed, **kw)
    return sampling.GenerationTasks.of(model, dm, settings).caption_to_image(list(sampling.DEMO_CAPTIONS[:3]))


@pytest.mark.slow
def test_guided_sampler_shape_range_and_seed(trained):
    images = _sample(trained, 0, steps=8, guidance=3.0)
    res = trained[1].tokenizers[Modality.IMAGE].config.resolution
    assert images.shape == (3, 3, res, res) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0.01
    assert torch.equal(images, _sample(trained, 0, steps=8, guidance=3.0))  # a seed fixes the images
    assert not torch.allclose(images, _sample(trained, 1, steps=8, guidance=3.0))
    assert not torch.allclose(images, _sample(trained, 0, steps=8, guidance=1.0))  # guidance acts
    ddpm = _sample(trained, 0, sampler="ddpm")  # every step of the 1000-step schedule
    assert ddpm.shape == images.shape and 0 <= ddpm.min() and ddpm.max() <= 1
    with pytest.raises(ValueError, match="flow"):
        _sample(trained, 0, sampler="flow")


@pytest.mark.slow
def test_captioning_reads_the_clean_latents(trained):
    model, dm = trained
    images, _ = dm.image_text_pairs(3)  # encoded to clean latents by the data layer's prompt encoder

    def caption(img, seed=0, **kw):
        settings = sampling.SamplingSettings(seed=seed, max_text_tokens=12, **kw)
        return sampling.GenerationTasks.of(model, dm, settings).image_to_caption(img)

    first = caption(images)
    assert len(first) == 3 and all(isinstance(c, str) for c in first)
    assert first == caption(images)  # a seed fixes the captions
    greedy = caption(images, temperature=0.0)
    assert greedy == caption(images, seed=5, temperature=0.0)
    # the caption depends on the image: greedy captions of very different (inverted) images differ somewhere
    assert greedy != caption(1 - images, temperature=0.0)
    with pytest.raises(ValueError, match="images must be"):
        caption(images[0])


@pytest.mark.slow
def test_sample_logger_shows_generated_images_in_tensorboard(transfusion_env, tmp_path):
    run_fit(["--config", str(CONFIGS / "transfusion/mot.yaml"), *TRANSFUSION,
             "--trainer.callbacks+=mot_lightning.callbacks.SampleLogger",
             "--trainer.callbacks.every_n_steps", "2", "--trainer.callbacks.n_samples", "2",
             "--trainer.callbacks.sampling.steps", "4", "--trainer.max_steps", "2",
             "--trainer.limit_val_batches", "0", "--data.loader.train_batches_per_epoch", "2"],
            transfusion_env, tmp_path)
    acc = EventAccumulator(str(max(run_dir(tmp_path / "transfusion" / "mot").glob("version_*"))),
                           size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"samples/caption_to_image", "samples/image_reconstructions"} <= set(tags["images"]), tags
    grid = acc.Images("samples/caption_to_image")[0]
    assert grid.step == 2 and grid.width > 32 and grid.height >= 32  # two 32x32 images side by side
    captions = acc.Tensors("samples/image_to_caption/text_summary")[0].tensor_proto.string_val[0].decode()
    assert captions.count("reference") == 2, captions  # captions of clean latents, with the true text


@pytest.mark.slow
def test_mot_generate_writes_guided_samples(pair, transfusion_env, tmp_path, capsys):
    out = tmp_path / "gen"
    generate_main(["--ckpt", str(run_dir(pair / "transfusion" / "mot") / "checkpoints" / "last.ckpt"),
                   "--config", str(CONFIGS / "transfusion/mot.yaml"), "--out", str(out), "--steps", "4",
                   "--prompt", "a red circle", "--prompt", "two blue squares", "--device", "cpu",
                   "--model.backbone.dim", "32", "--model.backbone.n_layers", "2",
                   *data_args(transfusion_env)])
    pngs = sorted(out.glob("caption_to_image_*.png"))
    assert len(pngs) == 2 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    lines = (out / "image_to_caption.txt").read_text().splitlines()
    assert len(lines) == 4 and all("reference" in line for line in lines)
    assert len(list(out.glob("image_to_caption_*.png"))) == 4


def test_diffusion_without_latents_and_latents_without_diffusion_are_named(transfusion_env, tmp_path):
    with pytest.raises(ValueError, match="LatentImageTokenizer"):
        run_fit(["--config", str(CONFIGS / "speech/mot.yaml"), "--model.objective",
                 "mot_lightning.objectives.Transfusion", "--trainer.fast_dev_run", "1"],
                transfusion_env, tmp_path)
    with pytest.raises(ValueError, match="set model.objective to mot_lightning.objectives.Transfusion"):
        run_fit(["--config", str(CONFIGS / "transfusion/mot.yaml"), *TRANSFUSION,
                 "--model.objective", "mot_lightning.objectives.NextToken",
                 "--trainer.fast_dev_run", "1"], transfusion_env, tmp_path)


@pytest.mark.slow
def test_flow_matching_option_trains_and_samples(transfusion_env, tmp_path):
    flow = ["--model.objective.init_args.objective", "flow", "--model.objective.init_args.t_sampling",
            "logit_normal"]
    run_fit(["--config", str(CONFIGS / "transfusion/mot.yaml"), *TRANSFUSION, *flow,
             "--trainer.max_steps", "3", "--trainer.limit_val_batches", "1",
             "--trainer.val_check_interval", "3", "--data.loader.train_batches_per_epoch", "3"],
            transfusion_env, tmp_path)
    s = _scalars(max(run_dir(tmp_path / "transfusion" / "mot").glob("version_*")))
    assert "val/loss_image" in s
    model, dm = build([str(CONFIGS / "transfusion/mot.yaml")],
                      [*TINY_MODEL, *flow, *data_args(transfusion_env)])
    load_weights(model, str(run_dir(tmp_path / "transfusion" / "mot") / "checkpoints" / "last.ckpt"), "cpu")
    settings = sampling.SamplingSettings(sampler="flow", steps=3)
    images = sampling.GenerationTasks.of(model, dm, settings).caption_to_image(["a red circle"])
    assert images.shape[:2] == (1, 3) and 0 <= images.min() and images.max() <= 1


@pytest.mark.slow
def test_resume_is_exact_with_diffusion_noise(transfusion_env, tmp_path):
    """Training noise and times are seeded per (step, batch, rank): stop at step 3 mid-epoch, resume with
    --ckpt_path last, and steps 3..5 match an unbroken run, image loss included (|diff| <= 1e-5)."""
    common = ["--config", str(CONFIGS / "transfusion/mot.yaml"), *TRANSFUSION,
              "--data.loader.train_batches_per_epoch", "2", "--trainer.limit_val_batches", "0",
              "--trainer.log_every_n_steps", "1"]
    common += ["--model.scheduler.init_args.max_steps", "6"]  # one schedule: the split run is stopped early
    run_fit([*common, "--trainer.max_steps", "6"], transfusion_env, tmp_path / "full")
    run_fit([*common, "--trainer.max_steps", "3"], transfusion_env, tmp_path / "split")
    run_fit([*common, "--trainer.max_steps", "6", "--ckpt_path", "last"], transfusion_env, tmp_path / "split")
    full = _scalars(max(run_dir(tmp_path / "full" / "transfusion" / "mot").glob("version_*")))
    resumed = _scalars(max(run_dir(tmp_path / "split" / "transfusion" / "mot").glob("version_*")))
    for tag in ("train/loss_image", "train/loss_text"):
        a, b = dict(full[tag]), dict(resumed[tag])
        assert sorted(b) == [3, 4, 5], tag
        for step in (3, 4, 5):
            assert b[step] == pytest.approx(a[step], abs=1e-5), (tag, step)
