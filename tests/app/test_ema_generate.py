"""EMA weights outside training (``callbacks/ema.py``): `mot generate --ema` samples from the averages a run
saved (the same samples as loading them by hand, other samples than the live weights), `mot export --ema`
writes them, a sharded FSDP2 checkpoint keeps them through `mot checkpoint consolidate`, and asking for
averages that are not there is refused with the fix."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mot_lightning.building import build
from mot_lightning.callbacks.ema import ema_state_dict
from mot_lightning.checkpoints import atomic_torch_save, load_checkpoint
from mot_lightning.checkpoints.consolidate import consolidate
from mot_lightning.checkpoints.weights import weights_source
from mot_lightning.commands.main import main as mot
from mot_lightning.sampling import DEMO_CAPTIONS, GenerationTasks, SamplingSettings
from tests.app.conftest import CONFIGS, TINY_MODEL, data_args, run_dir, run_fit
from tests.app.controls_run import FSDP2

SPEECH = str(CONFIGS / "speech/mot.yaml")
N, CAPTION_TOKENS = 2, 8
PROMPTS = list(DEMO_CAPTIONS[:N])
# a one-step warm-up and a high learning rate: the weights move far in three steps and the averages (decay
# 0.9: mostly the initial weights) lag them enough to change what is sampled. seq_len 256 (the YAML's): at the
# tiny 128, 94% of the demo documents are too long and a batch may hold no image, leaving the image tower at
# its initial weights (AdamW's decay alone moves them) and the two sets of samples nearly alike
RUN = ["--config", SPEECH, "--trainer.max_steps", "3", "--data.loader.train_batches_per_epoch", "3",
       "--data.seq_len", "256",
       "--trainer.limit_val_batches", "0", "--model.scheduler.init_args.warmup_steps", "1",
       "--model.optimizer.init_args.lr", "0.02",
       "--trainer.callbacks+=mot_lightning.callbacks.ema.EMA", "--trainer.callbacks.decay", "0.9"]


@pytest.fixture(scope="module")
def trained(demo_env, tmp_path_factory) -> Path:
    """last.ckpt of a 3-step run with an EMA callback."""
    root = tmp_path_factory.mktemp("ema_run")
    run_fit(RUN, demo_env, root)
    return run_dir(root / "speech" / "mot") / "checkpoints" / "last.ckpt"


def generate(source: list[str], env: dict[str, str], out: Path, *extra: str) -> dict:
    """`mot generate` (caption->image, image->caption) in this process -> {"images": uint8 arrays, "captions"}."""
    mot(["generate", *source, "--out", str(out), "--task", "caption_to_image", "--task", "image_to_caption",
         "--n", str(N), "--max_text_tokens", str(CAPTION_TOKENS), "--device", "cpu",
         *[a for p in PROMPTS for a in ("--prompt", p)], *extra, *data_args(env)])
    images = [np.asarray(Image.open(out / f"caption_to_image_{i:02d}.png")) for i in range(N)]
    return {"images": images, "captions": (out / "image_to_caption.txt").read_text()}


def test_generate_with_ema_samples_the_averages(trained, demo_env, tmp_path):
    checkpoint = load_checkpoint(trained)
    averages = ema_state_dict(checkpoint)
    assert averages is not None and averages.keys() == checkpoint["state_dict"].keys()
    lagging = [k for k, v in averages.items() if not torch.equal(v, checkpoint["state_dict"][k])]
    assert len(lagging) > len(averages) // 2  # averages, not the weights
    source = ["--ckpt", str(trained), "--config", SPEECH, *TINY_MODEL]
    ema = generate(source, demo_env, tmp_path / "ema", "--ema")
    live = generate(source, demo_env, tmp_path / "live")
    # both sample with the same seed, so near-uniform distributions share most draws: some patches and tokens
    # differ, not all
    assert any(not np.array_equal(a, b) for a, b in zip(ema["images"], live["images"]))
    assert ema["captions"] != live["captions"]

    # the averages loaded by hand, sampled with the same settings in this process: the same samples, bitwise
    model, dm = build([SPEECH], [*TINY_MODEL, *data_args(demo_env)])
    model.load_state_dict(averages)
    model.eval()
    tasks = GenerationTasks.of(model, dm, SamplingSettings(max_text_tokens=CAPTION_TOKENS))
    images = (tasks.caption_to_image(PROMPTS).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    assert all(np.array_equal(a, b) for a, b in zip(images, ema["images"]))
    originals, _ = dm.image_text_pairs(N)
    for caption in tasks.image_to_caption(originals):
        assert repr(caption) in ema["captions"]


def test_export_with_ema_holds_the_averages(trained, demo_env, tmp_path):
    averages = ema_state_dict(load_checkpoint(trained))
    source = ["--ckpt", str(trained), "--config", SPEECH, *TINY_MODEL, *data_args(demo_env)]
    mot(["export", *source, "--ema", "--out", str(tmp_path / "ema")])
    assert json.loads((tmp_path / "ema" / "export.json").read_text())["weights"] == "ema"
    assert "moving average" in (tmp_path / "ema" / "README.md").read_text()
    exported = load_file(tmp_path / "ema" / "model.safetensors")
    assert exported.keys() == {k[len("net."):] for k in averages}
    assert all(torch.equal(w, averages[f"net.{k}"]) for k, w in exported.items())
    # generating from the EMA export = generating from the checkpoint's averages
    from_export = generate(["--export", str(tmp_path / "ema"), "--ema"], demo_env, tmp_path / "from_export")
    from_ckpt = generate(["--ckpt", str(trained), "--config", SPEECH, *TINY_MODEL, "--ema"], demo_env,
                         tmp_path / "from_ckpt")
    assert all(np.array_equal(a, b) for a, b in zip(from_export["images"], from_ckpt["images"]))
    assert from_export["captions"] == from_ckpt["captions"]

    mot(["export", *source, "--out", str(tmp_path / "live")])
    assert json.loads((tmp_path / "live" / "export.json").read_text())["weights"] == "live"
    with pytest.raises(ValueError, match="holds the live weights.*mot export --ema"):
        weights_source(None, str(tmp_path / "live"), None, [], ema=True)


def test_ema_is_refused_where_the_checkpoint_has_no_averages(trained, tmp_path):
    checkpoint = load_checkpoint(trained)
    atomic_torch_save({k: v for k, v in checkpoint.items() if k != "callbacks"}, tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="holds no EMA averages.*mot_lightning.callbacks.ema.EMA"):
        weights_source(str(tmp_path / "plain.ckpt"), None, [SPEECH], [], ema=True)
    assert weights_source(str(tmp_path / "plain.ckpt"), None, [SPEECH], []).kind == "live"


@pytest.mark.slow
@pytest.mark.multiprocess
def test_consolidating_a_sharded_checkpoint_keeps_the_averages(controls, tmp_path):
    """A 2-process FSDP2 run (``controls_run``: tiny model, EMA 0.8, shared with test_controls_distributed.py)
    saves a sharded checkpoint after step 2; its consolidated file holds the averages of that step, bitwise,
    beside the weights."""
    [run] = controls(FSDP2)
    sharded = run["ckpt"]
    assert sharded.is_dir()
    checkpoint = consolidate(sharded, tmp_path / "model.ckpt")
    assert load_checkpoint(tmp_path / "model.ckpt").keys() == checkpoint.keys()
    averages = ema_state_dict(checkpoint)
    assert averages is not None and averages.keys() == checkpoint["state_dict"].keys() == run["saved_ema"].keys()
    for name, avg in run["saved_ema"].items():
        assert torch.equal(averages[name], avg), name
        assert torch.equal(checkpoint["state_dict"][name], run["weights"][2][name]), name
