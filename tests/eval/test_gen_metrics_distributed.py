"""GenerationMetrics in a 2-process FSDP2 run (CPU, gloo): every rank generates, rank 0 logs, and the logged
metrics are what `mot eval --ema` measures in one process on the consolidated checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mot_lightning.checkpoints.consolidate import consolidate
from tests.app.conftest import CONFIGS, ROOT, TINY_MODEL, data_args, run_dir, run_fit_subprocess

SPEECH = str(CONFIGS / "speech/mot.yaml")
LIMITS = {"n_prompts": "3", "n_heldout": "2", "n_speech": "2", "max_caption_tokens": "6", "max_speech_units": "5"}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_fsdp2_run_logs_what_one_process_measures_on_its_checkpoint(demo_env, scorer_file, tmp_path):
    callback = ["--trainer.callbacks+=mot_lightning.callbacks.GenerationMetrics",
                *[a for k, v in LIMITS.items() for a in (f"--trainer.callbacks.{k}", v)],
                "--trainer.callbacks.scorer_file", str(scorer_file),
                "--trainer.callbacks+=mot_lightning.callbacks.ema.EMA", "--trainer.callbacks.decay", "0.5"]
    run_fit_subprocess(["--config", SPEECH, "--config", str(CONFIGS / "trainer/fsdp2.yaml"), *callback,
                        "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
                        "--trainer.limit_val_batches", "1", "--data.loader.train_batches_per_epoch", "2",
                        "--model.scheduler.init_args.warmup_steps", "1"], demo_env, tmp_path / "run")
    run = run_dir(tmp_path / "run" / "speech" / "mot")
    [version] = run.glob("version_*")
    acc = EventAccumulator(str(version), size_guidance={"scalars": 0})
    acc.Reload()
    logged = {t.removeprefix("val/gen/"): acc.Scalars(t)[-1] for t in acc.Tags()["scalars"] if t.startswith("val/gen/")}
    assert {p.step for p in logged.values()} == {2} and "faithfulness_all" in logged and "wer" in logged

    consolidate(run / "checkpoints" / "last.ckpt", tmp_path / "model.ckpt")  # keeps the EMA averages
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "mot_lightning.cli", "eval", "--ckpt", str(tmp_path / "model.ckpt"), "--config",
           SPEECH, "--ema", "--out", str(out), "--n", LIMITS["n_prompts"], "--n_heldout", LIMITS["n_heldout"],
           "--n_speech", LIMITS["n_speech"], "--max_caption_tokens", LIMITS["max_caption_tokens"],
           "--max_speech_units", LIMITS["max_speech_units"], "--scorer_file", str(scorer_file), "--device", "cpu",
           *TINY_MODEL, *data_args(demo_env)]
    proc_env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}  # one thread, like each rank
    proc = subprocess.run(cmd, cwd=ROOT, env=proc_env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    measured = json.loads((out / "metrics.json").read_text())
    assert measured["weights"] == "ema"
    assert set(measured["metrics"]) == set(logged)
    for name, metric in measured["metrics"].items():  # TensorBoard keeps float32
        assert logged[name].value == pytest.approx(metric["value"], rel=1e-5, abs=1e-6), name
