"""Processes for the tests' own multi-process harnesses, forked from a server that has imported torch, Lightning
and the app once (``multiprocessing``'s forkserver, one per test process, started on first use).

A fresh Python process spends ~6 s of CPU importing torch, Lightning and the app before its first step (most of
a tiny test run), and a 2-rank run pays it twice; a process forked from the server starts with them loaded. The
server imports modules only (no torch op has run, no thread started), so every child starts from a clean
interpreter state, as a fresh process would. The processes are still separate processes: ranks meet in a gloo
process group, read and write files and exit with their own status.

- ``start_module(module, argv, nprocs)``: ``python -m module argv`` (its ``main()``) in one process, or as the
  ``nprocs`` ranks of ``torchrun --standalone --nproc_per_node nprocs`` with the variables torchrun gives each
  rank (Lightning detects them as it does under torchrun); read like a ``subprocess.Popen``.
- ``start_script(code, argv)``: ``python -c code argv`` in one process.
- ``spawn(fn, args, nprocs)``: ``torch.multiprocessing.spawn`` from the server (``fn(rank, *args)``).

What the app's own launchers do (`mot fit` relaunching itself per rank, torchrun, the SLURM script) is tested
with real commands elsewhere (tests/app/distributed_runs.py, tests/app/test_scaling_guide.py).
"""
from __future__ import annotations

import gc
import multiprocessing
import multiprocessing.connection
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

# what the server imports once (torch, Lightning, the module, model, callbacks and objectives of the app)
PRELOAD = ["tests.app.controls_run"]


def _context() -> multiprocessing.context.ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)  # read when the server starts (the first process started)
    return ctx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_env(rank: int, world: int, port: int, run_id: str) -> dict[str, str]:
    """The variables ``torchrun --standalone --nproc_per_node world`` gives rank ``rank`` (one node)."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "GROUP_RANK": "0", "ROLE_RANK": str(rank),
            "ROLE_NAME": "default", "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
            "ROLE_WORLD_SIZE": str(world), "GROUP_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "TORCHELASTIC_RUN_ID": run_id, "TORCHELASTIC_RESTART_COUNT": "0",
            "TORCHELASTIC_MAX_RESTARTS": "0"}


def _enter(env: dict[str, str], cwd: str, out: str, err: str) -> None:
    """In a child: its output files, environment and working directory, as a fresh process would start."""
    for path, fd in ((out, 1), (err, 2)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(f, fd)
        os.close(f)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    # a fresh process's default start method (multiprocessing sets the server's in its children): data workers
    # are forked from this process, not started from the server
    multiprocessing.set_start_method(None, force=True)
    import torch
    from lightning.fabric.utilities.rank_zero import _get_rank, rank_zero_only

    if "OMP_NUM_THREADS" in env:
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))  # as a fresh process reading the variable would
    rank_zero_only.rank = _get_rank() or 0  # what importing Lightning sets from this environment's rank variables


def _run_main(module: str, argv: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> None:
    _enter(env, cwd, out, err)
    sys.argv = [module, *argv]
    __import__(module, fromlist=["main"]).main()


def _run_script(code: str, argv: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> None:
    _enter(env, cwd, out, err)
    sys.argv = ["-c", *argv]
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(code, "<string>", "exec"), namespace)
    namespace.clear()  # what interpreter exit would do: files the script left open are closed, hence written
    gc.collect()


class Forked:
    """Processes started together, read like a ``subprocess.Popen`` with ``stdout=PIPE`` and ``stderr=STDOUT``
    (or ``stderr=PIPE``): ``communicate(timeout)`` -> (their output, joined; None, or their stderr), and
    ``returncode`` (the first non-zero exit status). When one exits with an error the others are stopped, as
    torchrun stops a failed run's other ranks."""

    def __init__(self, procs: list, outs: list[Path], errs: list[Path] | None, folder: Path) -> None:
        self.procs, self.outs, self.errs, self.folder = procs, outs, errs, folder
        self.returncode: int | None = None

    def poll(self) -> int | None:
        codes = [p.exitcode for p in self.procs]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            self.kill()
            self.returncode = failed[0]
        elif all(c == 0 for c in codes):
            self.returncode = 0
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str | None]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self.kill()
                raise TimeoutError(f"still running after {timeout} s: {self._read(self.outs)[-4000:]}")
            multiprocessing.connection.wait([p.sentinel for p in self.procs if p.exitcode is None], left)
        for p in self.procs:
            p.join()
        out, err = self._read(self.outs), None if self.errs is None else self._read(self.errs)
        shutil.rmtree(self.folder, ignore_errors=True)
        return out, err

    @staticmethod
    def _read(paths: list[Path]) -> str:
        return "\n".join(path.read_text(errors="replace") for path in paths if path.exists())

    def kill(self) -> None:
        for p in self.procs:
            if p.exitcode is None:
                p.kill()
        for p in self.procs:
            p.join()


def _start(target: Callable, argvs: list[tuple], envs: list[dict[str, str]], cwd: Path | str | None,
           stderr_apart: bool) -> Forked:
    ctx = _context()
    folder = Path(tempfile.mkdtemp(prefix="forked-"))  # the processes' output, until read
    procs, outs, errs = [], [], []
    for i, (argv, env) in enumerate(zip(argvs, envs)):
        out, err = folder / f"{i}.out", folder / (f"{i}.err" if stderr_apart else f"{i}.out")
        proc = ctx.Process(target=target, args=(*argv, env, str(cwd or os.getcwd()), str(out), str(err)))
        proc.start()
        procs.append(proc)
        outs.append(out)
        errs.append(err)
    return Forked(procs, outs, errs if stderr_apart else None, folder)


def start_module(module: str, argv: Sequence[str], nprocs: int = 1, env: dict[str, str] | None = None,
                 cwd: Path | str | None = None) -> Forked:
    """``python -m module argv`` (one process) or ``torchrun --standalone --nproc_per_node nprocs -m module argv``,
    forked from the server with the environment ``env`` (default: this one) and working directory ``cwd``;
    ``module.main()`` reads ``sys.argv``."""
    env = dict(os.environ if env is None else env)
    port, run_id = free_port(), uuid.uuid4().hex
    envs = [{**env, **(torchrun_env(rank, nprocs, port, run_id) if nprocs > 1 else {})} for rank in range(nprocs)]
    return _start(_run_main, [(module, list(argv))] * nprocs, envs, cwd, stderr_apart=False)


def start_script(code: str, argv: Sequence[str], env: dict[str, str] | None = None, cwd: Path | str | None = None,
                 stderr_apart: bool = False) -> Forked:
    """``python -c code argv`` forked from the server, with the environment ``env`` (default: this one) and
    working directory ``cwd``; ``stderr_apart``: read its stdout and stderr apart (``stderr=PIPE``)."""
    env = dict(os.environ if env is None else env)
    return _start(_run_script, [(code, list(argv))], [env], cwd, stderr_apart)


def spawn(fn: Callable, args: tuple = (), nprocs: int = 2) -> None:
    """``torch.multiprocessing.spawn(fn, args, nprocs)`` with processes forked from the server."""
    import torch.multiprocessing as mp

    _context()
    mp.start_processes(fn, args=args, nprocs=nprocs, join=True, start_method="forkserver")
