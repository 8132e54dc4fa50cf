"""What a scheduler sees, with real `mot fit` subprocesses: SIGTERM saves `last.ckpt` at the step reached and
exits 143, and the resume equals an unbroken run bitwise; under SLURM the requeue signal leaves nothing outside
the run dir and another experiment adopts nothing; checkpoints follow the step cadence without validation;
`last.ckpt` holds the last step. The runs no signal stops (the unbroken ones, the resumes, the other
experiment) are `mot fit` processes forked from ``tests/processes.py``'s server (torch and Lightning imported
once), with the same arguments and environment."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mot_lightning.checkpoints import load_checkpoint
from tests.app.conftest import CONFIGS, ROOT, TINY, TINY_MODEL, data_args, run_dir
from tests.processes import Forked, start_module

SPEECH = ["--config", str(CONFIGS / "speech/mot.yaml"), *TINY_MODEL, *TINY, "--trainer.log_every_n_steps", "1"]
SLURM = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "mot", "SLURM_PROCID": "0",
         "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}


def mot_fit(args: list[str], env: dict, save_dir: Path, cwd: Path, extra_env: dict | None = None,
            signalled: bool = False) -> subprocess.Popen | Forked:
    """`mot fit` with the speech setting's tiny sizes: a real subprocess where the test sends it a signal
    (``signalled``), else forked from the server (a process that exits by itself)."""
    argv = ["fit", *SPEECH, *args, *data_args(env), "--trainer.logger.init_args.save_dir", str(save_dir)]
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(extra_env or {})}
    if not signalled:
        return start_module("mot_lightning.commands.main", argv, env=environ, cwd=cwd)
    return subprocess.Popen([sys.executable, "-m", "mot_lightning.commands", *argv], cwd=cwd, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen | Forked, timeout: float = 600) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def signal_at_step(proc: subprocess.Popen, ckpt_glob: str, group: Path, signum: int) -> None:
    """Send ``signum`` once a cadence checkpoint matching ``ckpt_glob`` exists under ``group``."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if group.is_dir() and any(group.glob(f"*/checkpoints/{ckpt_glob}")):
            proc.send_signal(signum)
            return
        time.sleep(0.01)
    raise AssertionError(f"the run ended or never reached {ckpt_glob}: {finish(proc)[1][-3000:]}")


def weights(path: Path) -> dict:
    return load_checkpoint(path)["state_dict"]


@pytest.mark.slow
def test_sigterm_saves_last_ckpt_at_the_step_reached_exits_143_and_resumes_bitwise(demo_env, tmp_path):
    # no validation, the default cadence (every train_batches_per_epoch = 2 steps), 9 steps
    args = ["--trainer.max_steps", "9", "--trainer.limit_val_batches", "0", "--data.loader.train_batches_per_epoch",
            "2"]
    rc, out = finish(mot_fit(args, demo_env, tmp_path / "unbroken", tmp_path))
    assert rc == 0, out[-3000:]
    ckpts = run_dir(tmp_path / "unbroken" / "speech" / "mot") / "checkpoints"
    assert [p.name for p in ckpts.glob("*step=*.ckpt")] == ["epoch=3-step=8.ckpt"]  # step checkpoints, latest kept
    assert load_checkpoint(ckpts / "last.ckpt")["global_step"] == 9  # the last step, between two saves
    group = tmp_path / "broken" / "speech" / "mot"
    proc = mot_fit(args, demo_env, tmp_path / "broken", tmp_path, signalled=True)
    signal_at_step(proc, "*step=2.ckpt", group, signal.SIGTERM)
    rc, out = finish(proc)
    assert rc == 143, out[-3000:]
    last = load_checkpoint(run_dir(group) / "checkpoints" / "last.ckpt")
    step = last["global_step"]
    assert 2 <= step < 9 and f"saved {run_dir(group) / 'checkpoints' / 'last.ckpt'} at optimizer step {step}" in out
    assert "DataLoader worker" not in out

    rc, out = finish(mot_fit([*args, "--ckpt_path", "last"], demo_env, tmp_path / "broken", tmp_path))
    assert rc == 0, out[-3000:]
    resumed = weights(run_dir(group) / "checkpoints" / "last.ckpt")
    unbroken = weights(run_dir(tmp_path / "unbroken" / "speech" / "mot") / "checkpoints" / "last.ckpt")
    assert resumed.keys() == unbroken.keys()
    different = [k for k in unbroken if not torch.equal(resumed[k], unbroken[k])]
    assert not different, f"stopped at step {step}: {len(different)} tensors differ, e.g. {different[:3]}"


@pytest.mark.slow
def test_slurm_requeue_signal_saves_in_the_run_dir_and_no_other_experiment_adopts_it(demo_env, tmp_path):
    cwd = tmp_path / "cwd"  # the job's working directory: Lightning wrote hpc_ckpt_<n>.ckpt here
    cwd.mkdir()
    first = ["--trainer.max_steps", "8", "--trainer.limit_val_batches", "0", "--checkpoint.every_n_train_steps", "2"]
    group = tmp_path / "runs" / "speech" / "mot"
    proc = mot_fit(first, demo_env, tmp_path / "runs", cwd, SLURM, signalled=True)
    signal_at_step(proc, "*step=4.ckpt", group, signal.SIGUSR1)
    rc, out = finish(proc)
    assert rc == 128 + signal.SIGUSR1, out[-3000:]
    assert not list(cwd.rglob("*.ckpt")), "a checkpoint outside the run dir"
    own = run_dir(group)
    assert load_checkpoint(own / "checkpoints" / "last.ckpt")["global_step"] >= 4

    other = ["--trainer.max_steps", "3", "--trainer.limit_val_batches", "0", "--model.optimizer.init_args.lr", "1e-4"]
    rc, out = finish(mot_fit(other, demo_env, tmp_path / "runs", cwd, SLURM))  # no --ckpt_path
    assert rc == 0, out[-3000:]
    [theirs] = [d for d in group.iterdir() if d != own]
    assert load_checkpoint(theirs / "checkpoints" / "last.ckpt")["global_step"] == 3  # started from scratch
    assert json.loads((theirs / "run.json").read_text())["launches"][-1]["restored"] is None

    rc, out = finish(mot_fit(first, demo_env, tmp_path / "runs", cwd, {**SLURM, "SLURM_RESTART_COUNT": "1"}))
    assert rc == 0, out[-3000:]  # the requeued job resumed its own run, from its own last.ckpt
    launches = json.loads((own / "run.json").read_text())["launches"]
    assert launches[-1]["resumed"] and launches[-1]["restored"] == str(own / "checkpoints" / "last.ckpt"), launches
    assert load_checkpoint(own / "checkpoints" / "last.ckpt")["global_step"] == 8


@pytest.mark.slow
def test_checkpoints_follow_the_step_cadence_not_validation_and_last_ckpt_holds_the_last_step(demo_env, tmp_path):
    args = ["--trainer.max_steps", "5", "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1",
            "--data.loader.train_batches_per_epoch", "100", "--checkpoint.every_n_train_steps", "2"]
    rc, out = finish(mot_fit(args, demo_env, tmp_path, tmp_path))
    assert rc == 0, out[-3000:]
    ckpts = run_dir(tmp_path / "speech" / "mot") / "checkpoints"
    assert [p.name for p in ckpts.glob("*step=*.ckpt")] == ["epoch=0-step=4.ckpt"]  # every 2 steps, not at 3
    assert load_checkpoint(ckpts / "last.ckpt")["global_step"] == 5  # it was 3: the last validation's save


def test_other_tokenizer_files_are_refused_by_resume_validate_and_generate(demo_env, speech_runs, tmp_path):
    from mot_lightning.commands.generate import main as generate
    from mot_lightning.data.pretokenized import TokenizerMismatch
    from mot_lightning.tokenizers.image_kmeans import KMeansImageTokenizer
    from tests.app.conftest import run_fit

    one_step = ["--config", str(CONFIGS / "speech/mot.yaml"), "--trainer.max_steps", "1",
                "--trainer.limit_val_batches", "0"]
    ckpt = run_dir(speech_runs / "speech" / "mot") / "checkpoints" / "last.ckpt"  # the shared 2-step tiny run
    [fitted] = Path(demo_env["tokenizer_dir"]).glob("image-KMeansImageTokenizer-*.pt")
    other = KMeansImageTokenizer.load(str(fitted))  # same shapes, "fitted on other data": other codes
    other.codebook = other.codebook.flip(0).contiguous()
    other_file = tmp_path / "other-image.pt"
    other.save(str(other_file))
    swap = ["--data.tokenizer_files.files", json.dumps({"image": str(other_file)})]

    for command, extra in (("fit", ["--trainer.max_steps", "3"]), ("validate", ["--trainer.limit_val_batches", "1"])):
        with pytest.raises(TokenizerMismatch, match=f"image: .*{fitted.name}.*{other_file.name}"):
            run_fit([*one_step, *extra, *swap, "--ckpt_path", str(ckpt)], demo_env, tmp_path / command, command)
    with pytest.raises(TokenizerMismatch, match=f"--ckpt {ckpt}.*{other_file.name}"):
        generate(["--ckpt", str(ckpt), "--config", str(CONFIGS / "speech/mot.yaml"), *TINY_MODEL, *data_args(demo_env),
                  *swap, "--out", str(tmp_path / "gen"), "--task", "caption_to_image", "--prompt", "a red square"])
    # the override lets the other file through (the same files pass in every other test that resumes)
    run_fit([*one_step, "--trainer.limit_val_batches", "1", *swap, "--ckpt_path", str(ckpt),
             "--accept_other_tokenizers", "true"], demo_env, tmp_path / "v2", "validate")


@pytest.mark.parametrize(("flag", "value", "message"), [("--n", "0", "--n must be >= 1"),
                                                        ("--temperature", "nan", "--temperature must be a finite")])
def test_generate_refuses_numbers_that_would_fail_late(flag, value, message, capsys):
    from mot_lightning.commands.generate import main as generate

    with pytest.raises(SystemExit):  # before any config, checkpoint or tokenizer is read
        generate(["--ckpt", "never-read.ckpt", "--out", "unused", flag, value])
    assert message in capsys.readouterr().err
