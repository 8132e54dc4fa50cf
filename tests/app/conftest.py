"""Ways to run `mot` in the app tests, and the runs several of them check (session fixtures). The demo corpus
and fitted tokenizers (``demo_env``, ``transfusion_env``) are session fixtures of tests/conftest.py, shared
with tests/eval."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mot_lightning.commands.fit import cli_main
from tests.app.controls_run import Runs

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"

# tiny model and data sizes: every test run takes seconds
TINY_MODEL = ["--model.backbone.dim", "32", "--model.backbone.n_layers", "2", "--model.backbone.n_heads", "4"]
TINY = [
    "--data.seq_len", "128", "--data.batch_size", "2", "--data.loader.num_workers", "0",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
]


# the Transfusion configs with a KL-VAE fitted in seconds (the YAML's 600 steps take minutes)
TRANSFUSION = ["--data.tokenizer_files.train.max_steps", "30", "--data.tokenizer_files.train.val_every_n_steps", "1000"]
# one logged step of the Transfusion setting: the run of the transfusion_env fixture (which fits the KL-VAE), and
# test_resume_ddp's rerun (which loads it)
TRANSFUSION_ONE_STEP = ["--config", str(CONFIGS / "transfusion/mot.yaml"), *TRANSFUSION, "--trainer.max_steps", "1",
                        "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "1",
                        "--throughput.log_every_n_steps", "1"]


@pytest.fixture(scope="session")
def controls(tmp_path_factory) -> Runs:
    """``tests/app/controls_run.py`` runs shared by the distributed tests: ``controls(args, ...)`` -> results."""
    return Runs(tmp_path_factory.mktemp("controls_runs"))


@pytest.fixture(scope="session")
def ddp_runs(demo_env, tmp_path_factory):
    """The 2-process DDP `mot fit` runs several test files check (``distributed_runs.DdpRuns``)."""
    from tests.app.distributed_runs import DdpRuns

    return DdpRuns(demo_env, tmp_path_factory.mktemp("ddp_runs"))


def run_dir(group: Path) -> Path:
    """The one run `mot fit` wrote under ``group`` (``<save_dir>/<name>``): its ``s<seed>-<hash>`` dir."""
    runs = sorted(d for d in group.iterdir() if d.is_dir())
    assert len(runs) == 1, f"expected one run under {group}, found {[d.name for d in runs]}"
    return runs[0]


def data_args(env: dict[str, str]) -> list[str]:
    return ["--data.demo.dir", env["demo_dir"], "--data.tokenizer_files.dir", env["tokenizer_dir"]]


def _ordered(args: list[str], tiny_model: bool) -> list[str]:
    """--config files first, then the tiny sizes, then the test's own overrides (later wins)."""
    configs, rest, i = [], [], 0
    while i < len(args):
        if args[i] == "--config":
            configs += args[i:i + 2]
            i += 2
        else:
            rest.append(args[i])
            i += 1
    return [*configs, *(TINY_MODEL if tiny_model else []), *TINY, *rest]


def run_fit(args: list[str], env: dict[str, str], save_dir: Path, command: str = "fit",
            tiny_model: bool = True) -> None:
    """`mot <command>` in this process with tiny sizes, writing under ``save_dir``."""
    cli_main([command, *_ordered(args, tiny_model), *data_args(env),
              "--trainer.logger.init_args.save_dir", str(save_dir)])


def run_fit_subprocess(args: list[str], env: dict[str, str], save_dir: Path, timeout: int = 300) -> str:
    """`mot fit` as a real command (Lightning relaunches it once per rank for DDP/FSDP2)."""
    cmd = [sys.executable, "-m", "mot_lightning.commands", "fit", *_ordered(args, True), *data_args(env),
           "--trainer.logger.init_args.save_dir", str(save_dir)]
    proc_env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(cmd, cwd=save_dir.parent, env=proc_env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output
