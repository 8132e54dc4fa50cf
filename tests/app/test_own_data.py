"""The README's "Your own data, end to end", run as written on small real folders: PNG renders and WAV clips
of the demo world with their captions and transcripts -> `mot data convert` -> `mot fit` with
configs/examples/own_data.yaml (tokenizers fitted on those shards) -> `mot test --ckpt_path last` on the
held-out sets."""
from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from mot_lightning.checkpoints import checkpoint_hparams
from mot_lightning.commands.main import main as mot
from mot_lightning.world import speech
from mot_lightning.world.captions import caption
from mot_lightning.world.procedural import random_scene, render
from tests.app.conftest import CONFIGS, TINY_MODEL, run_dir
from tests.app.test_training import only_version, scalars

OWN_DATA = ["--config", str(CONFIGS / "speech/mot.yaml"), "--config", str(CONFIGS / "examples/own_data.yaml")]
# tiny and short: a warmup that ends early so 20 steps learn something; SampleLogger keeps its 200 steps
SMALL = [*TINY_MODEL, "--data.batch_size", "2", "--data.loader.num_workers", "0",
         "--data.loader.train_batches_per_epoch", "10", "--trainer.max_steps", "20",
         "--trainer.val_check_interval", "20", "--trainer.log_every_n_steps", "1",
         "--model.scheduler.init_args.warmup_steps", "2", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false"]


def write_folders(root: Path, seed: int = 0) -> None:
    """my_data/{train,val}/{images,speech}: name.png + name.txt captions, name.wav + name.txt transcripts."""
    rng = random.Random(seed)
    for split, images, clips in (("train", 40, 16), ("val", 8, 4)):
        for i in range(images):
            scene = random_scene(rng, held_out=False)
            folder = root / "my_data" / split / "images"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"shape_{i:03d}.png").write_bytes(render(scene, 48))  # resized to 32 by the loader
            (folder / f"shape_{i:03d}.txt").write_text(caption(scene, rng) + "\n", encoding="utf-8")
        for i in range(clips):
            text = caption(random_scene(rng, held_out=False, max_groups=1), rng)
            folder = root / "my_data" / split / "speech"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"clip_{i:03d}.wav").write_bytes(speech.wav_bytes(speech.synthesize(text)))
            (folder / f"clip_{i:03d}.txt").write_text(text + "\n", encoding="utf-8")
    (root / "my_data" / "train" / "images" / "no_caption.png").write_bytes(render(random_scene(rng, False), 48))


@pytest.mark.slow
def test_own_data_walkthrough(tmp_path, monkeypatch, capsys):
    write_folders(tmp_path)
    monkeypatch.chdir(tmp_path)  # the overlay's paths are relative to where `mot` runs, as in the README

    # 2. shards (the README's loop)
    for split in ("train", "val"):
        for kind in ("images", "speech"):
            mot(["data", "convert", kind, "--src", f"my_data/{split}/{kind}", "--out", f"shards/{split}/{kind}",
                 "--quiet"])
    printed = capsys.readouterr().out
    assert "wrote 40 samples" in printed and "no_caption=1" in printed  # a picture without its caption
    mot(["data", "inspect", "shards/train/*/*.tar", "--quiet"])
    printed = capsys.readouterr().out
    assert "56 readable documents" in printed and "problems: none" in printed

    # 4. tokenizers and a first run: both fitted on shards/train, into the overlay's own folder
    mot(["fit", *OWN_DATA, *SMALL])
    fitted = sorted(p.name.split("-")[0] for p in (tmp_path / "data/tokenizers/own_data").glob("*.pt"))
    assert fitted == ["image", "speech"]
    assert not (tmp_path / "data" / "demo").exists()  # the demo corpus was never needed
    run = run_dir(tmp_path / "runs" / "speech" / "mot")
    train = scalars(only_version(run))
    assert {"val/val_images/loss_image", "val/val_speech/loss_speech"} <= set(train)
    assert train["train/loss_image"][0][0] == 0 and train["train/loss_speech"]  # both sources were drawn

    # 5. score the held-out sets with the last checkpoint of this experiment
    mot(["test", *OWN_DATA, *SMALL, "--ckpt_path", "last"])
    tags = {tag: points[-1][1] for tag, points in scalars(only_version(run / "test")).items()}
    uniform = math.log(checkpoint_hparams(run / "checkpoints" / "last.ckpt")["vocab_size"])
    for tag in ("test/val_images/loss_image", "test/val_images/loss_text", "test/val_speech/loss_speech",
                "test/val_speech/loss_text"):
        assert math.isfinite(tags[tag]) and tags[tag] < uniform, (tag, tags[tag], uniform)
    assert tags["test/loss"] < uniform - 0.5  # 20 steps learned more than a uniform guess (measured: -0.9)
    assert tags["data/test/skipped_too_long"] == 0
    assert tags["test/val_images/loss_image"] == pytest.approx(train["val/val_images/loss_image"][-1][1],
                                                               rel=1e-5)  # the same weights, the same set
