"""Reading runs from TensorBoard event files the tests write themselves."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mot_lightning.compare.groups import load_group
from mot_lightning.compare.report import Smoothing, compare_groups
from mot_lightning.compare.runs import RunError, find_versions, is_loss_tag, load_run, short_labels
from tests.compare.events import linear, write_version

STEPS = range(0, 101, 10)


def test_loss_tags_follow_the_metric_contract():
    for tag in ("train/loss", "train/loss_image", "val/loss", "val/loss_speech", "val/val_seen/loss_text"):
        assert is_loss_tag(tag), tag
    for tag in ("train/z_loss", "train/loss_video", "train/total_flops", "lr-AdamW/pg1", "loss"):
        assert not is_loss_tag(tag), tag


def test_single_version_series_and_active_time(tmp_path: Path):
    write_version(tmp_path / "run" / "version_0", {"train/loss": linear(STEPS, 2.0, 0.01),
                                                   "train/total_flops": [(s, 5.0 * s) for s in STEPS]},
                  start=1000.0, sec_per_step=0.5, first_step_time=3.0)
    run = load_run(tmp_path / "run")
    assert run.loss_tags == ["train/loss"]
    loss = run.scalars["train/loss"]
    np.testing.assert_array_equal(loss.steps, list(STEPS))
    np.testing.assert_allclose(loss.values, [2.0 - 0.01 * s for s in STEPS], rtol=1e-6)  # float32 in events
    np.testing.assert_allclose(loss.times, [3.0 + 0.5 * s for s in STEPS])  # from the first event, not step 0
    assert run.flops.at(50) == pytest.approx(250.0)


def test_resumed_run_merges_versions_by_step_without_the_gap(tmp_path: Path):
    # version_0 logs steps 0..50 (1 s/step); the run is resumed from the step-40 checkpoint an hour later.
    write_version(tmp_path / "mot" / "version_0", {"train/loss": linear(range(0, 51, 10), 2.0, 0.01)},
                  start=1000.0, sec_per_step=1.0)
    write_version(tmp_path / "mot" / "version_1", {"train/loss": linear(range(40, 101, 10), 1.9, 0.01)},
                  start=4600.0, sec_per_step=1.0, first_step_time=2.0)
    run = load_run(tmp_path / "mot")
    assert [v.name for v in run.versions] == ["version_0", "version_1"]
    loss = run.scalars["train/loss"]
    np.testing.assert_array_equal(loss.steps, list(STEPS))  # no duplicates
    assert loss.at(40) == pytest.approx(1.5) and loss.at(30) == pytest.approx(1.7)  # later version wins
    # version_0 was active 50 s; version_1's step 40 comes 2 s after its start, step 100 60 s later.
    assert loss.time_at(30) == pytest.approx(30.0)
    assert loss.time_at(40) == pytest.approx(52.0)
    assert loss.time_at(100) == pytest.approx(112.0)
    # A version dir given directly is read alone.
    alone = load_run(tmp_path / "mot" / "version_1").scalars["train/loss"]
    assert alone.steps[0] == 40 and alone.time_at(40) == pytest.approx(2.0)


def test_versions_sort_numerically(tmp_path: Path):
    for n in (10, 2):
        write_version(tmp_path / f"version_{n}", {"train/loss": [(n, 1.0)]})
    (tmp_path / "version_3").mkdir()  # a launch that died before logging: skipped
    assert [v.name for v in find_versions(tmp_path)] == ["version_2", "version_10"]


def test_clear_errors(tmp_path: Path):
    with pytest.raises(RunError, match="no such directory"):
        load_run(tmp_path / "nope")
    (tmp_path / "empty" / "version_0" / "checkpoints").mkdir(parents=True)
    with pytest.raises(RunError, match="no TensorBoard event files"):
        load_run(tmp_path / "empty")
    write_version(tmp_path / "lr_only" / "version_0", {"lr-AdamW/pg1": [(0, 1e-3)], "train/z_loss": [(0, 1.0)]})
    with pytest.raises(RunError, match="no loss tag.*lr-AdamW/pg1"):
        load_run(tmp_path / "lr_only")
    (tmp_path / "just_started" / "version_0").mkdir(parents=True)
    (tmp_path / "just_started" / "version_0" / "events.out.tfevents.1.host.0").write_bytes(b"")
    with pytest.raises(RunError, match="no loss tag.*no scalars at all. Has training logged"):
        load_run(tmp_path / "just_started")


def test_file_still_being_written_is_read_up_to_its_last_whole_record(tmp_path: Path):
    path = write_version(tmp_path / "run" / "version_0", {"train/loss": linear(STEPS, 2.0, 0.01)})
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # the writer is mid-record
    loss = load_run(tmp_path / "run").scalars["train/loss"]
    np.testing.assert_array_equal(loss.steps, list(range(0, 91, 10)))


def _compare(tmp_path: Path) -> dict:
    groups = [load_group(tmp_path / "dense", "dense"), load_group(tmp_path / "mot", "mot")]
    return {r.key: r for r in compare_groups(groups, 0, Smoothing(train=0.0))}


def test_partial_run_and_missing_modality_are_reported(tmp_path: Path):
    write_version(tmp_path / "dense" / "version_0", {"train/loss": linear(STEPS, 2.0, 0.01),
                                                     "train/loss_text": linear(STEPS, 2.0, 0.01)})
    write_version(tmp_path / "mot" / "version_0", {"train/loss": linear(range(0, 51, 10), 2.0, 0.01),
                                                   "train/loss_speech": linear(STEPS, 2.0, 0.01)})
    rows = _compare(tmp_path)
    assert set(rows) == {"train/loss", "train/loss_text", "train/loss_speech"}
    partial = rows["train/loss"]
    assert partial.s["s_steps"].values == [None] and partial.s["s_steps"].text() == "not reached"
    assert "partial in 1/1 pairs: logged to step 50 of the baseline's 100" in partial.notes
    assert rows["train/loss_text"].ratio is None
    assert rows["train/loss_text"].notes == ["n/a: mot never logged train/loss_text"]
    assert rows["train/loss_speech"].notes == ["n/a: baseline dense never logged train/loss_speech"]


def test_reads_what_torch_summary_writer_writes(tmp_path: Path):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "run" / "version_0")) as writer:
        for step in STEPS:
            writer.add_scalar("val/val_heldout/loss_image", 1.0 / (1 + step), step)
    run = load_run(tmp_path / "run")
    assert run.loss_tags == ["val/val_heldout/loss_image"]
    assert run.scalars["val/val_heldout/loss_image"].at(10) == pytest.approx(1 / 11)
    assert run.scalars["val/val_heldout/loss_image"].times[0] >= 0.0


def test_short_labels_tell_runs_apart(tmp_path: Path):
    paths = [tmp_path / "a" / "speech" / "mot", tmp_path / "b" / "speech" / "mot", tmp_path / "b" / "x" / "dense"]
    assert short_labels(paths) == ["a/speech/mot", "b/speech/mot", "b/x/dense"]
    assert short_labels(paths[1:]) == ["speech/mot", "x/dense"]


def test_a_run_that_dips_below_and_ends_above_is_flagged(tmp_path: Path):
    write_version(tmp_path / "dense" / "version_0", {"train/loss": linear(STEPS, 2.0, 0.01)})
    write_version(tmp_path / "mot" / "version_0", {"train/loss": [(s, 0.5 if s == 50 else 1.5) for s in STEPS]})
    row = _compare(tmp_path)["train/loss"]
    assert row.s["s_steps"].values == [pytest.approx(0.45)]  # first reach: 1.5 -> 0.5 crosses 1.0 halfway, at 45
    assert row.notes == [("brief crossing in 1/1 pairs: below the target at < 50% of the points after the first "
                          "crossing"), "reached but ended above the baseline in 1/1 pairs",
                         "no train/total_flops in run"]
