"""configs/recipes/data_mix.yaml through a real `mot fit`: the training loss per source reaches TensorBoard
(``train/<source>/loss_<modality>``, only for the modalities a source holds), and a schedule that brings a
source in at a step shows its losses from that step on."""
from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.app.conftest import CONFIGS, run_fit

SOURCES = ("image_caption", "speech_caption", "interleaved", "text")


@pytest.mark.slow
def test_per_source_losses_reach_tensorboard_and_follow_the_schedule(demo_env, tmp_path):
    schedule = ("[{step: 0, weights: {text: 0}}, "
                "{step: 3, weights: {text: 1, image_caption: 0, speech_caption: 0, interleaved: 0}}]")
    run_fit(["--config", str(CONFIGS / "speech/mot.yaml"), "--config", str(CONFIGS / "recipes/data_mix.yaml"),
             "--data.loader.weights_schedule", schedule, "--data.loader.shuffle_buffer", "0",
             "--data.loader.pack_open_rows", "1", "--data.batch_size", "4", "--data.seq_len", "256",
             "--trainer.max_steps", "6", "--trainer.log_every_n_steps", "1",
             "--trainer.limit_val_batches", "0",
             "--data.loader.train_batches_per_epoch", "6", "--trainer.callbacks", "[]"], demo_env, tmp_path)
    events = sorted(tmp_path.rglob("events.out.tfevents*"))
    assert events, "no TensorBoard event file"
    acc = EventAccumulator(str(events[-1].parent))
    acc.Reload()
    steps = {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    per_source = {tag for tag in steps if tag.split("/")[1:2] and tag.split("/")[1] in SOURCES}
    assert {f"train/{s}/loss_text" for s in SOURCES} <= per_source, sorted(steps)
    assert "train/image_caption/loss_image" in per_source and "train/speech_caption/loss_speech" in per_source
    assert not {"train/text/loss_image", "train/text/loss_speech", "train/image_caption/loss_speech",
                "train/speech_caption/loss_image"} & per_source  # a source logs only what it holds
    assert min(steps["train/text/loss_text"]) >= 3  # weight 0 before step 3
    # from step 3 only text is drawn; a later step holds no other source (step 3 may keep the open row)
    assert max(steps["train/image_caption/loss_image"]) <= 3
    assert max(steps["train/interleaved/loss_text"]) <= 3
    assert steps["train/loss_text"] == list(range(6))


def _losses(save_dir) -> dict[str, dict[int, float]]:
    events = sorted(save_dir.rglob("events.out.tfevents*"))
    acc = EventAccumulator(str(events[-1].parent))
    acc.Reload()
    tags = [t for t in acc.Tags()["scalars"] if t.startswith("train/")]
    return {t: {e.step: e.value for e in acc.Scalars(t)} for t in tags}


@pytest.mark.slow
def test_a_run_resumed_across_the_switch_trains_on_the_unbroken_runs_batches(demo_env, tmp_path):
    """5 batches per epoch, 2 per optimizer step (3 steps per epoch); stopped at step 4 (mid second epoch),
    resumed to 7 across the switch at step 5: every training loss, per source included, equals the unbroken
    run's."""
    schedule = ("[{step: 0, weights: {image_caption: 1, speech_caption: 1, interleaved: 0, text: 0}}, "
                "{step: 5, weights: {image_caption: 0, speech_caption: 0, interleaved: 1, text: 1}}]")
    common = ["--config", str(CONFIGS / "speech/mot.yaml"), "--data.loader.weights_schedule", schedule,
              "--data.loader.num_workers", "2", "--data.seq_len", "256",
              "--trainer.accumulate_grad_batches", "2",
              "--data.loader.train_batches_per_epoch", "5", "--trainer.limit_val_batches", "0",
              "--trainer.log_every_n_steps", "1", "--trainer.callbacks", "[]",
              "--model.scheduler.init_args.max_steps", "7"]
    run_fit([*common, "--trainer.max_steps", "7"], demo_env, tmp_path / "full")
    run_fit([*common, "--trainer.max_steps", "4"], demo_env, tmp_path / "split")
    run_fit([*common, "--trainer.max_steps", "7", "--ckpt_path", "last"], demo_env, tmp_path / "split")
    full, resumed = _losses(tmp_path / "full"), _losses(tmp_path / "split")
    assert sorted(resumed["train/loss"]) == [4, 5, 6]
    assert "train/text/loss_text" in resumed and "train/image_caption/loss_image" in resumed
    for tag, values in full.items():
        if not tag.startswith("train/") or "grad_norm" in tag or "flops" in tag or "per_sec" in tag:
            continue
        later = {s: v for s, v in values.items() if s >= 4}
        assert sorted(resumed.get(tag, {})) == sorted(later), tag
        for step, value in later.items():
            assert resumed[tag][step] == pytest.approx(value, abs=1e-5), (tag, step)
    # text only from the switch on; step 6 begins a new epoch, whose workers start with empty buffers
    assert min(full["train/text/loss_text"]) >= 5 and max(full["train/image_caption/loss_image"]) <= 5
