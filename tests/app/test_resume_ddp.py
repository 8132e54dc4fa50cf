"""Data under real multi-process runs: a 2-process DDP run with 2 data workers per rank and full
validation resumes to the unbroken run's losses; 2-rank validation equals 1-rank validation on the same
sets (no limit_val_batches: every rank runs as many steps, padded with empty batches); `mot validate` /
`mot test` report the skip counters per stage; a first run that fits its tokenizers and a rerun that
loads them start from the same weights."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.app.conftest import CONFIGS, TRANSFUSION_ONE_STEP, run_dir, run_fit
from tests.app.test_training import only_version, scalars

SPEECH = ["--config", str(CONFIGS / "speech/mot.yaml")]
VAL_TAGS = ("val/loss", "val/loss_text", "val/loss_image", "val/loss_speech",
            "val/val_seen/loss_text", "val/val_heldout/loss_image")


def tags_of(group: Path, command: str = "fit") -> dict[str, dict[int, float]]:
    """TensorBoard scalars of the one run under ``group`` (validate/test log in a subfolder of the run)."""
    folder = run_dir(group) if command == "fit" else run_dir(group) / command
    return {tag: dict(points) for tag, points in scalars(only_version(folder)).items()}


def close(a: float, b: float, rel: float = 1e-4) -> bool:
    """Same documents, other packing and reduction order: float32 sums agree to ~1e-6 relative."""
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-6)


def version_tags(version: Path) -> dict[str, dict[int, float]]:
    return {tag: dict(points) for tag, points in scalars(version).items()}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ddp_two_workers_resume_and_exact_validation(ddp_runs):
    """The runs (``distributed_runs.DdpRuns``, shared with test_training and test_samples_distributed) also
    sample and keep an EMA after steps 2 and 4: neither moves a training or validation loss."""
    full = version_tags(ddp_runs.full.version)
    first = version_tags(ddp_runs.split.version)
    resumed = version_tags(ddp_runs.resumed.version)

    assert sorted(resumed["train/loss"]) == [2, 3]  # stopped mid-epoch at step 2
    for step in range(4):
        got = (first if step < 2 else resumed)["train/loss"][step]
        assert got == pytest.approx(full["train/loss"][step], abs=1e-5), step
    for tag in VAL_TAGS:
        assert sorted(full[tag]) == [1, 3], tag  # validation after steps 2 and 4
        assert first[tag][1] == pytest.approx(full[tag][1], abs=1e-5), tag
        assert resumed[tag][3] == pytest.approx(full[tag][3], abs=1e-5), tag
    # the training counters are those of the batches trained on (counted by batch, whatever the 2 workers per
    # rank read ahead): the split run's equal the unbroken run's at every step, the resume's included
    skipped = "data/train/skipped_too_long"
    assert sorted(full[skipped]) == [0, 1, 2, 3] and 0 < full[skipped][0] < full[skipped][3]
    assert {**first[skipped], **resumed[skipped]} == full[skipped]

    # the same checkpoint validated by 1 and by 2 processes, every batch of every set
    one = tags_of(ddp_runs.one_process["validated"], "validate")
    two = tags_of(ddp_runs.validated_by_two, "validate")
    for tag in VAL_TAGS:
        a, b = (list(run[tag].values())[-1] for run in (one, two))
        assert close(a, b), (tag, a, b)
        assert close(a, full[tag][3]), (tag, a, full[tag][3])  # and what the 2-process fit logged
    assert two["data/val/skipped_too_long"] == one["data/val/skipped_too_long"]  # summed over ranks


@pytest.mark.slow
def test_validate_and_test_report_skip_counters(demo_env, tmp_path):
    run_fit([*SPEECH, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"], demo_env, tmp_path / "f")
    ckpt = run_dir(tmp_path / "f" / "speech" / "mot") / "checkpoints" / "last.ckpt"
    for command in ("validate", "test"):
        run_fit([*SPEECH, "--data.seq_len", "100", "--ckpt_path", str(ckpt)], demo_env, tmp_path / command,
                command=command)
        tags = tags_of(tmp_path / command / "speech" / "mot", command)
        stage = "val" if command == "validate" else "test"
        assert list(tags[f"data/{stage}/skipped_too_long"].values())[-1] > 0, sorted(tags)
        assert f"data/{stage}/skipped_bad_encoding" in tags


@pytest.mark.slow
def test_fitting_tokenizers_leaves_the_model_seed_alone(transfusion_env, tmp_path):
    """The transfusion_env fixture's 1-step run fitted its KL-VAE (which seeds and draws random numbers); the
    same run again loads the file: both start from the same weights and data order."""
    tokenizers = Path(transfusion_env["tokenizer_dir"])
    files = set(tokenizers.glob("*.pt"))
    assert Path(transfusion_env["fitted_file"]) in files
    run_fit(TRANSFUSION_ONE_STEP, transfusion_env, tmp_path)
    assert set(tokenizers.glob("*.pt")) == files  # loaded, not fitted again
    fitted = tags_of(Path(transfusion_env["fitting_run"]))["train/loss"][0]
    assert tags_of(tmp_path / "transfusion" / "mot")["train/loss"][0] == fitted
