"""The scaling guide's commands (docs/scaling.md), run as far as one machine allows, on CPU with gloo:

- ``torchrun --standalone --nproc_per_node 2`` and two ``torchrun --nnodes 2`` agents meeting at a c10d
  endpoint on 127.0.0.1 (the multi-node command), each running 2 ranks of ``mot fit``;
- the SLURM script ``docs/examples/slurm_fit.sbatch``, its ``srun`` replaced by a stand-in that starts
  the tasks on this machine with the per-task variables srun sets, so Lightning detects a SLURM job;
- resuming on another number of processes: a DDP checkpoint 2 -> 1, and a sharded FSDP2 checkpoint
  2 -> 1 and 1 -> 2 processes equal to the unbroken run to float64 rounding.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mot_lightning.checkpoints import load_checkpoint
from tests.app.conftest import CONFIGS, ROOT, _ordered, data_args, run_dir
from tests.app.controls_run import FSDP2, FSDP2_ONE_PROCESS, ONE_PROCESS, resumed
from tests.app.test_training import only_version, scalars
from tests.processes import free_port

SBATCH = ROOT / "docs" / "examples" / "slurm_fit.sbatch"
BIN = Path(sys.executable).parent  # `mot` and `torchrun` of this environment
SPEECH = ["--config", str(CONFIGS / "speech/mot.yaml")]
SHORT = ["--data.loader.train_batches_per_epoch", "4", "--trainer.limit_val_batches", "0",
         "--trainer.log_every_n_steps", "1", "--model.scheduler.init_args.max_steps", "4"]
RANK_LINE = re.compile(r"Initializing distributed: GLOBAL_RANK: (\d+), MEMBER: \d+/(\d+)")

# srun on one node: SLURM_NTASKS_PER_NODE copies of the command (STANDIN_TASKS of them if set), each with
# the variables srun gives a task; srun's own options are dropped.
SRUN_STANDIN = """#!/bin/bash
while [[ $1 == -* ]]; do shift; done
tasks=${STANDIN_TASKS:-$SLURM_NTASKS_PER_NODE}
pids=()
for ((task = 0; task < tasks; task++)); do
  SLURM_PROCID=$task SLURM_LOCALID=$task SLURM_NODEID=0 SLURM_NTASKS=$SLURM_NTASKS_PER_NODE "$@" &
  pids+=("$!")
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
"""


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any launcher's variables (a test run inside a SLURM job or torchrun must
    not leak them), one thread per process, plus ``extra``."""
    launcher = ("SLURM_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "LOCAL_WORLD_SIZE", "MASTER_",
                "TORCHELASTIC_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(launcher)}
    return {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "OMP_NUM_THREADS": "1",
            "OMP_WAIT_POLICY": "PASSIVE", **extra}


def finish(procs: list[subprocess.Popen], timeout: int = 600) -> str:
    """Wait for every process; all must succeed. Returns their output, joined."""
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=timeout)
        outputs.append(out)
        assert proc.returncode == 0, out[-4000:]
    return "\n".join(outputs)


def start(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def ranks(output: str) -> list[tuple[int, int]]:
    """(global rank, world size) of every process that joined a process group, sorted."""
    return sorted((int(r), int(w)) for r, w in RANK_LINE.findall(output))


def fit_args(args: list[str], env: dict[str, str], save_dir: Path) -> list[str]:
    return ["fit", *_ordered(args, True), *data_args(env), "--trainer.logger.init_args.save_dir", str(save_dir)]


def resumed_steps(save_dir: Path) -> list[int]:
    """Steps at which the one run under ``save_dir`` logged train/loss."""
    return [step for step, _ in scalars(only_version(run_dir(save_dir / "speech" / "mot")))["train/loss"]]


def last_checkpoint(save_dir: Path) -> Path:
    return run_dir(save_dir / "speech" / "mot") / "checkpoints" / "last.ckpt"


# --- torchrun ------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.multiprocess
def test_torchrun_one_node_two_nodes_and_resume_on_one_process(demo_env, tmp_path):
    ddp = [*SPEECH, "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", *SHORT]
    module = ["-m", "mot_lightning.commands"]
    torchrun = str(BIN / "torchrun")

    # one node: the guide's single-node command, 2 ranks, 2 steps
    one_node = [torchrun, "--standalone", "--nproc_per_node", "2", *module,
                *fit_args([*ddp, "--trainer.devices", "2", "--trainer.max_steps", "2"], demo_env, tmp_path / "a")]
    out = finish([start(one_node, clean_env(), tmp_path / "a")])
    assert ranks(out) == [(0, 2), (1, 2)]  # torchrun started both; Lightning started none of its own
    ckpt = last_checkpoint(tmp_path / "a")
    assert load_checkpoint(ckpt)["global_step"] == 2

    # two "nodes": the guide's multi-node command, one agent per node, resuming that checkpoint to step 4
    rdzv = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
            "--rdzv_endpoint", f"127.0.0.1:{free_port()}", "--rdzv_id", "scaling-guide"]
    nodes_args = fit_args([*ddp, "--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.max_steps", "4",
                           "--ckpt_path", str(ckpt)], demo_env, tmp_path / "b")
    agents = [start([torchrun, *rdzv, *module, *nodes_args], clean_env(), tmp_path / "b") for _ in range(2)]
    # meanwhile, the 2-process DDP checkpoint resumed by one process (another world size: a new run dir, same
    # steps)
    single = [sys.executable, *module, *fit_args([*SPEECH, *SHORT, "--trainer.max_steps", "4", "--ckpt_path",
                                                  str(ckpt)], demo_env, tmp_path / "c")]
    single = start(single, clean_env(), tmp_path / "c")
    out = finish(agents)
    assert ranks(out) == [(0, 2), (1, 2)] and "Restored all states" in out
    assert resumed_steps(tmp_path / "b") == [2, 3]
    assert load_checkpoint(last_checkpoint(tmp_path / "b"))["global_step"] == 4

    out = finish([single])
    assert ranks(out) == [] and "Restored all states" in out
    assert resumed_steps(tmp_path / "c") == [2, 3]
    assert load_checkpoint(last_checkpoint(tmp_path / "c"))["global_step"] == 4


# --- SLURM ---------------------------------------------------------------------------------------------
def sbatch(tmp_path: Path, args: list[str], tasks: int, strategy: str, **env: str) -> tuple[list[str], dict]:
    """(command, environment) of ``bash slurm_fit.sbatch ARGS`` as sbatch would start it on one node of
    ``tasks`` tasks, with the srun stand-in first on PATH and $SHARED = ``tmp_path / "shared"``."""
    shim = tmp_path / "bin" / "srun"
    shim.parent.mkdir(parents=True, exist_ok=True)
    shim.write_text(SRUN_STANDIN)
    shim.chmod(0o755)
    job = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "mot-fit", "SLURM_NODELIST": "127.0.0.1",
           "SLURM_JOB_NUM_NODES": "1", "SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": str(tasks),
           "SLURM_SUBMIT_DIR": str(ROOT), "MASTER_PORT": str(free_port())}
    run_env = clean_env(**{**job, "SHARED": str(tmp_path / "shared"), "STRATEGY": strategy, **env})
    run_env["PATH"] = f"{shim.parent}{os.pathsep}{run_env['PATH']}"
    return ["bash", str(SBATCH), *args], run_env


# --print_config for 2 nodes x 8 GPUs: the strategy each STRATEGY of the script resolves to
PRINTED = {"ddp": "ddp", "fsdp2": "ModelParallelStrategy", "fsdp1": "FSDPStrategy"}


@pytest.fixture(scope="module")
def slurm_jobs(demo_env, tmp_path_factory) -> dict:
    """The script's jobs as sbatch would start them: FSDP2 on 2 tasks (2 steps); then, started together, the
    guide's recipe for fewer GPUs (the same script on 1 task, --ckpt_path naming the first job's checkpoint,
    to step 4) and the script with --print_config for each strategy on 2 nodes x 8 GPUs (one task prints the
    resolved config instead of training), one process each: they fill the CPU the 1-task job leaves idle."""
    root = tmp_path_factory.mktemp("slurm")
    train = root / "train"
    shared = train / "shared"
    shared.mkdir(parents=True)
    (shared / "demo").symlink_to(demo_env["demo_dir"])  # the script's $SHARED layout over the test corpus
    (shared / "tokenizers").symlink_to(demo_env["tokenizer_dir"])
    cpu = ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true"]  # later arguments win
    tiny = _ordered([*cpu, *SHORT], True)

    two_tasks = finish([start(*sbatch(train, [*tiny, "--trainer.max_steps", "2"], 2, "fsdp2"), train)])
    ckpt = last_checkpoint(shared / "runs")
    one_task = start(*sbatch(train, [*tiny, "--trainer.max_steps", "4", "--ckpt_path", str(ckpt)], 1, "fsdp2"),
                     train)
    printing = {}
    for strategy in PRINTED:
        cmd, env = sbatch(root / strategy, ["--print_config"], 8, strategy, STANDIN_TASKS="1",
                          SLURM_JOB_NUM_NODES="2", SLURM_NNODES="2")
        printing[strategy] = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True)
    try:
        one_task = finish([one_task])
        printed = {s: (*proc.communicate(timeout=300), proc.returncode) for s, proc in printing.items()}
    finally:
        for proc in printing.values():
            if proc.poll() is None:
                proc.kill()
    return {"root": root, "shared": shared, "ckpt": ckpt, "two_tasks": two_tasks, "one_task": one_task,
            "printed": printed}


@pytest.mark.slow
def test_sbatch_script_is_valid_bash_and_its_command_parses(slurm_jobs):
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    text = SBATCH.read_text()
    for key in ("--trainer.num_nodes", "--trainer.devices", "--data.demo.dir", "--data.tokenizer_files.dir",
                "--trainer.logger.init_args.save_dir", "--ckpt_path last"):
        assert key in text, key
    # 2 nodes x 8 GPUs, as sbatch would set them; one task printed the resolved config instead of training
    for strategy, expected in PRINTED.items():
        stdout, stderr, returncode = slurm_jobs["printed"][strategy]
        assert returncode == 0, stderr[-4000:]
        config = yaml.safe_load(stdout)
        trainer = config["trainer"]
        assert (trainer["accelerator"], int(trainer["devices"]), trainer["num_nodes"]) == ("gpu", 8, 2)
        assert expected in str(trainer["strategy"]), trainer["strategy"]
        if strategy == "fsdp2":  # one data-parallel mesh over every process
            assert trainer["strategy"]["init_args"]["data_parallel_size"] == 16
        shared = slurm_jobs["root"] / strategy / "shared"
        assert config["data"]["demo"]["dir"] == str(shared / "demo")
        assert config["data"]["tokenizer_files"]["dir"] == str(shared / "tokenizers")
        assert trainer["logger"]["init_args"]["save_dir"] == str(shared / "runs")
        assert config["ckpt_path"] == "last"


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sbatch_script_trains_fsdp2_on_two_tasks_and_resumes_on_one(slurm_jobs):
    assert ranks(slurm_jobs["two_tasks"]) == [(0, 2), (1, 2)]  # the stand-in's tasks, each detected as a SLURM rank
    ckpt = slurm_jobs["ckpt"]
    assert (ckpt / ".metadata").is_file()  # sharded: every rank wrote its part

    # the guide's recipe for fewer GPUs: the same script on 1 task, --ckpt_path naming the old run's checkpoint
    out = slurm_jobs["one_task"]
    assert ranks(out) == [(0, 1)] and "Restored all states" in out
    runs = sorted(d for d in (slurm_jobs["shared"] / "runs" / "speech" / "mot").iterdir() if d != ckpt.parent.parent)
    assert len(runs) == 1  # another world size: another run dir
    tags = scalars(only_version(runs[0]))
    assert [step for step, _ in tags["train/loss"]] == [2, 3]


# --- FSDP2 resharding ----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.multiprocess
def test_fsdp2_sharded_checkpoint_resumes_on_another_process_count(controls):
    """Saved by 2 processes, resumed by 1, and the other way round: torch.distributed.checkpoint reshards the
    weights, the AdamW moments and the EMA averages, so two more steps land where the unbroken run does. The
    runs (``controls_run.py``: fixed global batches split over the ranks, float64, the text tower frozen until
    step 2, an EMA) are shared with test_controls_distributed.py; at the step-2 checkpoint the frozen tower has
    no moments yet, every other parameter has."""
    single, by_one = controls(ONE_PROCESS, FSDP2_ONE_PROCESS)  # one process: no sharding, and FSDP2
    [by_two] = controls(FSDP2)
    weights = single["weights"]
    unbroken = weights[4]
    assert max(float((unbroken[k] - w).abs().max()) for k, w in weights[2].items()) > 1e-3  # >> tolerance
    for saved in (by_two, by_one):
        assert (saved["ckpt"] / ".metadata").is_file()
        assert any(saved["has_state"][2].values())  # moments to reshard
    results = controls(resumed(by_two["ckpt"], devices=1), resumed(by_one["ckpt"], devices=2))
    for result in results:
        for name, w in unbroken.items():  # float64: only the summation order differs
            torch.testing.assert_close(result["weights"][4][name], w, rtol=1e-9, atol=1e-9 * float(w.abs().max()),
                                       msg=name)
        for name, avg in single["ema"].items():
            torch.testing.assert_close(result["ema"][name], avg, rtol=1e-9, atol=1e-9 * float(avg.abs().max()),
                                       msg=name)
