"""The 2-process `mot fit` runs (CPU, gloo) that several test files check, each made once per test session
(the session fixtures ``ddp_runs`` in tests/app/conftest.py and ``fsdp2_runs`` in tests/conftest.py).

A 2-process launch costs two Python start-ups (~5 s each) before its first step, so one run serves every
test that checks something of it; each part runs when a test first asks for it (``cached_property``). The
`mot fit` launches (and `mot validate` by 2 processes) are real commands, Lightning starting the second rank;
the one-process commands that read their checkpoints are forked from ``tests/processes.py``'s server:

- ``DdpRuns``: the speech setting under DDP with 2 data workers per rank, full validation after steps 2 and
  4, a SampleLogger and an EMA: an unbroken 4-step run, a 2-step run resumed with ``--ckpt_path last`` to
  step 4, `mot validate` of the unbroken run's checkpoint by 1 and by 2 processes, and `mot generate --ema`
  of the step-2 checkpoint in one process (test_resume_ddp, test_training, test_samples_distributed).
- ``Fsdp2Runs``: the speech setting under FSDP2 with activation checkpointing, a SampleLogger, generation
  metrics and an EMA: a 2-step run (sharded checkpoint) resumed with ``--ckpt_path last`` to step 4; its
  step-2 checkpoint consolidated and measured by `mot generate --ema` and `mot eval --ema` in one process;
  and runs that save full-state checkpoints (rank 0 writes one file) resumed from it (test_training,
  test_export, test_samples_distributed, test_checkpoints, tests/eval/test_gen_metrics_distributed).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from functools import cached_property
from pathlib import Path

from mot_lightning.checkpoints import load_checkpoint
from mot_lightning.checkpoints.consolidate import consolidate
from mot_lightning.sampling import DEMO_CAPTIONS
from tests.app.conftest import CONFIGS, ROOT, TINY_MODEL, _ordered, data_args, run_dir
from tests.processes import Forked, start_module

SPEECH = str(CONFIGS / "speech/mot.yaml")
DDP = ["--config", str(CONFIGS / "trainer/ddp.yaml")]
FSDP2 = ["--config", str(CONFIGS / "trainer/fsdp2.yaml")]
LOGGING = ["--trainer.log_every_n_steps", "1", "--throughput.log_every_n_steps", "1"]

# SampleLogger after steps 2 and 4, sampling from the EMA (listed after it, so the sampler folds in the step
# itself); `mot generate` with the same prompts, seed and limits must draw the same samples
N, CAPTION_TOKENS, SPEECH_UNITS = 2, 8, 6
SAMPLE_LOGGER = ["--trainer.callbacks+=mot_lightning.callbacks.SampleLogger", "--trainer.callbacks.every_n_steps",
                 "2", "--trainer.callbacks.n_samples", str(N), "--trainer.callbacks.sampling.max_text_tokens",
                 str(CAPTION_TOKENS), "--trainer.callbacks.sampling.max_speech_units", str(SPEECH_UNITS)]
EMA = ["--trainer.callbacks+=mot_lightning.callbacks.ema.EMA", "--trainer.callbacks.decay", "0.5"]
# GenerationMetrics after each validation; `mot eval` with the same limits must measure the same
GEN_LIMITS = {"n_prompts": "3", "n_heldout": "2", "n_speech": "2", "sampling.max_text_tokens": "6",
              "sampling.max_speech_units": "5"}


def one_thread_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def run_mot(command: str, args: list[str], env: dict[str, str], save_dir: Path, timeout: int = 300) -> str:
    """`mot <command>` as a real command with the tests' tiny sizes (Lightning relaunches it once per rank
    under DDP/FSDP2), writing under ``save_dir``; returns its output."""
    return finish(start_mot(command, args, env, save_dir), timeout)


def start_mot(command: str, args: list[str], env: dict[str, str], save_dir: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mot_lightning.commands", command, *_ordered(args, True), *data_args(env),
           "--trainer.logger.init_args.save_dir", str(save_dir)]
    save_dir.mkdir(parents=True, exist_ok=True)
    # its own session: a hang is dumped and stopped as a whole (both ranks and their data workers, ``finish``);
    # PYTHONFAULTHANDLER: each of them prints every thread's stack on the SIGABRT that ``finish`` sends
    return subprocess.Popen(cmd, cwd=save_dir, env={**one_thread_env(), "PYTHONFAULTHANDLER": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def start_one_process(args: list[str], env: dict[str, str]) -> Forked:
    """`mot generate` / `mot eval` (``args``) in one process on one thread, like each rank of the runs (the same
    kernels); forked from ``tests/processes.py``'s server (torch and Lightning imported once)."""
    return start_module("mot_lightning.commands.main", [*args, "--device", "cpu", *TINY_MODEL, *data_args(env)],
                        env=one_thread_env(), cwd=ROOT)


def start_mot_one_process(command: str, args: list[str], env: dict[str, str], save_dir: Path) -> Forked:
    """``start_mot`` in one process, forked from ``tests/processes.py``'s server like ``start_one_process``."""
    save_dir.mkdir(parents=True, exist_ok=True)
    return start_module("mot_lightning.commands.main", [command, *_ordered(args, True), *data_args(env),
                                                         "--trainer.logger.init_args.save_dir", str(save_dir)],
                        env=one_thread_env(), cwd=save_dir)


def finish(proc: subprocess.Popen | Forked, timeout: int = 300) -> str:
    """Wait for ``proc`` (a few tiny steps: seconds, a minute on a loaded machine) and return its output; one
    still running after ``timeout`` fails the test with every process's stacks (``start_mot``), then stops."""
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGABRT)  # faulthandler prints each process's stacks, then it dies
        try:
            output, _ = proc.communicate(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"still running after {timeout} s; its output and stacks:\n{output[-12000:]}") from None
    assert proc.returncode == 0, output[-4000:]
    return output


def finish_all(procs: list[subprocess.Popen | Forked]) -> list[str]:
    """Wait for processes started together; all must succeed (the others are stopped if one fails)."""
    try:
        return [finish(p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                if isinstance(p, subprocess.Popen):  # its session: the ranks and their data workers
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)
                p.kill()


def generate_args(ckpt: Path, out: Path) -> list[str]:
    """`mot generate --ema` with SampleLogger's prompts, number and limits."""
    return ["generate", "--ckpt", str(ckpt), "--config", SPEECH, "--ema", "--out", str(out), "--n", str(N),
            "--max_text_tokens", str(CAPTION_TOKENS), "--max_speech_units", str(SPEECH_UNITS),
            *[a for c in DEMO_CAPTIONS[:N] for a in ("--prompt", c)]]


class Launch:
    """A `mot fit` launch: its run dir, the version dir it logged to, and its output."""

    def __init__(self, group: Path, output: str, versions_before: set[Path] = frozenset()) -> None:
        self.run = run_dir(group)
        [self.version] = set(self.run.glob("version_*")) - set(versions_before)  # the one this launch made
        self.output = output
        self.last = self.run / "checkpoints" / "last.ckpt"


class DdpRuns:
    """Two rounds of launches, those of a round started together (they do not depend on each other; a
    2-process launch leaves one CPU idle while its ranks start one after the other and exit): the unbroken
    run and the split run's first launch; then the split run resumed, `mot validate` by 2 processes, and
    `mot validate` and `mot generate` in one process."""

    def __init__(self, env: dict[str, str], root: Path) -> None:
        self.env, self.root = env, root
        self.common = ["--config", SPEECH, *DDP, *LOGGING, "--data.loader.num_workers", "2",
                       "--data.loader.train_batches_per_epoch", "3", "--trainer.val_check_interval", "2",
                       "--model.scheduler.init_args.max_steps", "4",  # one schedule: the split run stops early
                       "--model.scheduler.init_args.warmup_steps", "1", *SAMPLE_LOGGER, *EMA]

    def _fits(self, launches: list[tuple[str, ...]], others: list[subprocess.Popen | Forked] = ()) -> list[Launch]:
        """`mot fit` launches (name of the save dir, extra arguments) started together with ``others``."""
        started = []
        for name, *args in launches:
            group = self.root / name / "speech" / "mot"
            started.append((group, set(group.glob("*/version_*")),
                            start_mot("fit", [*self.common, *args], self.env, self.root / name)))
        outputs = finish_all([proc for *_, proc in started] + list(others))
        return [Launch(group, output, before) for (group, before, _), output in zip(started, outputs)]

    @cached_property
    def _runs(self) -> dict:
        full, split = self._fits([("full", "--trainer.max_steps", "4"), ("split", "--trainer.max_steps", "2")])
        step2 = Path(shutil.copy(split.last, self.root / "step2.ckpt"))  # before the resume overwrites it
        validate = ["--config", SPEECH, "--ckpt_path", str(full.last)]
        [resumed] = self._fits([("split", "--trainer.max_steps", "4", "--ckpt_path", "last")],
                               [start_mot("validate", [*validate, *DDP], self.env, self.root / "two"),
                                start_mot_one_process("validate", validate, self.env, self.root / "one"),
                                start_one_process(generate_args(step2, self.root / "generated"), self.env)])
        return {"full": full, "split": split, "step2": step2, "resumed": resumed}

    @property
    def full(self) -> Launch:
        """The unbroken run: 4 steps, validation after steps 2 and 4."""
        return self._runs["full"]

    @property
    def split(self) -> Launch:
        """The first launch of the split run: 2 steps."""
        return self._runs["split"]

    @property
    def step2(self) -> Path:
        """A copy of the split run's last.ckpt after its first launch."""
        return self._runs["step2"]

    @property
    def resumed(self) -> Launch:
        """The split run continued to step 4 with --ckpt_path last."""
        return self._runs["resumed"]

    @property
    def one_process(self) -> dict[str, Path]:
        """In one process: `mot validate` of the unbroken run's checkpoint (its run group under
        ``"validated"``) and `mot generate --ema` of the split run's step-2 checkpoint (``"generated"``)."""
        assert self._runs
        return {"validated": self.root / "one" / "speech" / "mot", "generated": self.root / "generated"}

    @property
    def validated_by_two(self) -> Path:
        """`mot validate` of the unbroken run's checkpoint by 2 processes (its run group)."""
        assert self._runs
        return self.root / "two" / "speech" / "mot"


class Fsdp2Runs:
    """The 2-step run first (``first``: everything else starts from its checkpoint); then, when a test asks
    for any of them, two rounds started together as in ``DdpRuns``: the run resumed and the full-state run's
    first launch; the full-state run continued, `mot generate` and `mot eval`."""

    def __init__(self, env: dict[str, str], scorer_file: Path, root: Path) -> None:
        self.env, self.scorer_file, self.root = env, scorer_file, root
        gen_metrics = ["--trainer.callbacks+=mot_lightning.callbacks.GenerationMetrics",
                       *[a for k, v in GEN_LIMITS.items() for a in (f"--trainer.callbacks.{k}", v)],
                       "--trainer.callbacks.scorer_file", str(scorer_file)]
        self.common = ["--config", SPEECH, *FSDP2, "--model.activation_checkpointing", "true",
                       "--data.loader.train_batches_per_epoch", "2", "--trainer.val_check_interval", "2",
                       "--model.scheduler.init_args.max_steps", "6", "--model.scheduler.init_args.warmup_steps", "1",
                       *SAMPLE_LOGGER, *gen_metrics, *EMA]
        # without activation checkpointing: Lightning's full-state load into FSDP2 blocks wrapped for it fails
        # (strict keys: the model's carry the wrapper's prefix, the file's do not)
        self.full_state_args = [*self.common, "--model.activation_checkpointing", "false",
                                "--trainer.strategy.init_args.save_distributed_checkpoint", "false",
                                "--trainer.limit_val_batches", "0"]

    @cached_property
    def first(self) -> Launch:
        """2 steps, validation (with generation metrics) after step 2."""
        output = run_mot("fit", [*self.common, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1"],
                         self.env, self.root / "sharded")
        return Launch(self.root / "sharded" / "speech" / "mot", output)

    @cached_property
    def step2(self) -> Path:
        """A copy of the first run's sharded last.ckpt (a directory) after its 2 steps."""
        return Path(shutil.copytree(self.first.last, self.root / "step2.ckpt"))

    @cached_property
    def _rest(self) -> dict:
        sharded, full_state = self.root / "sharded", self.root / "full_state"
        assert self.step2  # copied before the resumed run overwrites last.ckpt
        resume = start_mot("fit", [*self.common, "--trainer.max_steps", "4", "--trainer.limit_val_batches", "0",
                                   "--ckpt_path", "last"], self.env, sharded)
        write = start_mot("fit", [*self.full_state_args, "--trainer.max_steps", "4", "--ckpt_path", str(self.step2)],
                          self.env, full_state)
        resumed_output, written_output = finish_all([resume, write])
        resumed = Launch(sharded / "speech" / "mot", resumed_output, {self.first.version})
        written = Launch(full_state / "speech" / "mot", written_output)
        what_was_written = {"is_file": written.last.is_file(),
                            "global_step": load_checkpoint(written.last)["global_step"],
                            "files": sorted(p.name for p in written.last.parent.iterdir())}

        consolidated = self.root / "model.ckpt"
        consolidate(self.step2, consolidated)  # keeps the EMA averages
        limits = GEN_LIMITS
        evaluate = ["eval", "--ckpt", str(consolidated), "--config", SPEECH, "--ema", "--out",
                    str(self.root / "evaluated"), "--n", limits["n_prompts"], "--n_heldout", limits["n_heldout"],
                    "--n_speech", limits["n_speech"], "--max_text_tokens", limits["sampling.max_text_tokens"],
                    "--max_speech_units", limits["sampling.max_speech_units"], "--scorer_file", str(self.scorer_file)]
        read_output, *_ = finish_all([
            start_mot("fit", [*self.full_state_args, "--trainer.max_steps", "6", "--ckpt_path", "last"], self.env,
                      full_state),
            start_one_process(generate_args(consolidated, self.root / "generated"), self.env),
            start_one_process(evaluate, self.env)])
        read = Launch(full_state / "speech" / "mot", read_output, {written.version})
        return {"resumed": resumed, "written": written, "what_was_written": what_was_written, "read": read,
                "consolidated": consolidated}

    @property
    def resumed(self) -> Launch:
        """The first run continued to step 4 with --ckpt_path last (no validation: its metrics are not checked)."""
        return self._rest["resumed"]

    @property
    def one_process(self) -> dict[str, Path]:
        """The step-2 checkpoint consolidated (``"consolidated"``, EMA averages kept), and in one process:
        `mot generate --ema` (``"generated"``) and `mot eval --ema` (``"evaluated"``) of it."""
        return {"consolidated": self._rest["consolidated"], "generated": self.root / "generated",
                "evaluated": self.root / "evaluated"}

    @property
    def full_state(self) -> tuple[Launch, Launch]:
        """Without sharded saving (rank 0 writes one file through the atomic IO): a run started from the
        sharded step-2 checkpoint (``--ckpt_path`` naming it) to step 4, then continued with --ckpt_path last
        to step 6 (reading that file)."""
        return self._rest["written"], self._rest["read"]

    @property
    def written(self) -> dict:
        """What the full-state run's first launch left: its last.ckpt's global step, whether it is a file, the
        files in its checkpoint dir."""
        return self._rest["what_was_written"]
