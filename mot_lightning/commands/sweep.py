"""``mot sweep --config sweep.yaml``: a grid of ``mot fit`` runs (variants x grid x seeds) from one YAML.

Runs go on this machine (each ``mot fit`` in its own process), one after another or ``--jobs N`` at
once (each with cores/N threads), or ``--print`` / ``--write jobs.txt`` emit one command per run for a
cluster scheduler. The sweep YAML::

    name: speech_dense_vs_mot          # runs land in <save_dir>/<name>/<variant>[/<grid point>]/s<seed>-<hash>
    save_dir: runs                     # default runs
    variants:                          # name -> config file(s), optionally with overrides
      dense: configs/speech/dense.yaml
      mot: {config: [configs/speech/mot.yaml], args: {model.backbone.tower_init: copy}}
    seeds: [0, 1, 2]                   # each sets every key in seed_keys
    seed_keys: [seed_everything, data.seed]   # default: model init and data order
    grid:                              # optional: every combination of these values
      model.backbone.dim: [64, 128]
    args:                              # optional: overrides for every run
      trainer.max_steps: 600

``points`` (optional) lists named sets of values that change together, e.g. sizes whose training
length grows with the model (a grid would cross every dim with every length)::

    points:
      d64: {model.backbone.dim: 64, model.backbone.n_layers: 2, trainer.max_steps: 200}
      d128: {model.backbone.dim: 128, model.backbone.n_layers: 4, trainer.max_steps: 400}

Every variant runs at every point (crossed with ``grid``), or at the points its ``points: [d128]`` names.
A point's name joins the grid point's label in the group name (``<name>/<variant>/d64``).

Every command carries ``--ckpt_path last``: run again (a resubmitted or requeued job), it resumes its own
run and nothing else; the first time it starts afresh.

Precedence (later wins): config files, ``args``, the variant's ``args``, the point, the grid point, the
seed, then anything after ``--`` on the ``mot sweep`` command line. Each variant (and grid
point) is one group for ``mot compare``; the sweep prints the command at the end.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

DEFAULT_SEED_KEYS = ("seed_everything", "data.seed")
SWEEP_KEYS = {"name", "save_dir", "variants", "seeds", "seed_keys", "grid", "points", "args"}


@dataclass(frozen=True)
class Job:
    """One ``mot fit`` run of the sweep."""

    group: str  # <name>/<variant>[/<grid point>]: the logger name, one compare group
    seed: int
    args: tuple[str, ...]  # the arguments after `mot fit`

    def command(self) -> str:
        return shlex.join(["mot", "fit", *self.args])


def cli_value(value) -> str:
    """A YAML value as jsonargparse reads it on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _overrides(mapping: dict | None) -> list[str]:
    return [a for k, v in (mapping or {}).items() for a in (f"--{k}", cli_value(v))]


def _variant(name: str, spec) -> tuple[list[str], dict, list[str] | None]:
    """(config files, overrides, the names of the points it runs at or None for all)."""
    if isinstance(spec, str):
        spec = {"config": [spec]}
    if isinstance(spec, list):
        spec = {"config": spec}
    if not isinstance(spec, dict) or not spec.get("config"):
        raise ValueError(f"sweep variant {name!r}: give a config file, a list of them, or "
                         "{config: [...], args: {key: value}, points: [name, ...]}")
    configs = [spec["config"]] if isinstance(spec["config"], str) else list(spec["config"])
    unknown = set(spec) - {"config", "args", "points"}
    if unknown:
        raise ValueError(f"sweep variant {name!r}: unknown keys {sorted(unknown)}; use config, args and points")
    points = spec.get("points")
    if points is not None and (not isinstance(points, list) or not points):
        raise ValueError(f"sweep variant {name!r}: `points` must be a non-empty list of point names")
    return configs, spec.get("args") or {}, points


def _points(points: dict | None, variant: str, wanted: list[str] | None) -> list[tuple[str, dict]]:
    """(name, {key: value}) of the points a variant runs at; [("", {})] without ``points``."""
    if points is None:
        if wanted is not None:
            raise ValueError(f"sweep variant {variant!r} names points {wanted} but the sweep has no `points`")
        return [("", {})]
    if not isinstance(points, dict) or not points:
        raise ValueError("sweep `points` must map names to {key: value} overrides")
    for name, values in points.items():
        if not isinstance(values, dict) or not values:
            raise ValueError(f"sweep point {name!r}: give the values it sets, {{key: value, ...}}")
    unknown = [p for p in wanted or [] if p not in points]
    if unknown:
        raise ValueError(f"sweep variant {variant!r}: unknown points {unknown}; the sweep has {list(points)}")
    return [(name, points[name]) for name in (wanted or list(points))]


def _grid_points(grid: dict | None) -> list[tuple[str, dict]]:
    """(label, {key: value}) for every combination; the label names each key by its last part."""
    if not grid:
        return [("", {})]
    keys = list(grid)
    for k in keys:
        if not isinstance(grid[k], list) or not grid[k]:
            raise ValueError(f"sweep grid: {k} needs a non-empty list of values")
    short = [k.rsplit(".", 1)[-1] for k in keys]
    names = short if len(set(short)) == len(short) else keys
    return [(",".join(f"{n}={cli_value(v)}" for n, v in zip(names, values)), dict(zip(keys, values)))
            for values in itertools.product(*(grid[k] for k in keys))]


def plan(sweep: dict, name: str, save_dir: str | None = None, extra: list[str] | None = None) -> list[Job]:
    """The sweep's jobs, in order: variant, point, grid point, seed."""
    unknown = set(sweep) - SWEEP_KEYS
    if unknown:
        raise ValueError(f"sweep YAML: unknown keys {sorted(unknown)}; known: {sorted(SWEEP_KEYS)}")
    if not sweep.get("variants"):
        raise ValueError("sweep YAML: `variants` is missing (name -> config file(s))")
    seeds = sweep.get("seeds", [0])
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"sweep YAML: `seeds` must be a list of integers, got {seeds!r}")
    seed_keys = sweep.get("seed_keys", list(DEFAULT_SEED_KEYS))
    save_dir = save_dir or sweep.get("save_dir", "runs")
    jobs = []
    for variant, spec in sweep["variants"].items():
        configs, variant_args, wanted = _variant(variant, spec)
        for (point_name, point_values), (label, point) in itertools.product(
                _points(sweep.get("points"), variant, wanted), _grid_points(sweep.get("grid"))):
            label = ",".join(p for p in (point_name, label) if p)
            group = "/".join(p for p in (name, variant, label) if p)
            for seed in seeds:
                args = [a for c in configs for a in ("--config", str(c))]
                args += _overrides(sweep.get("args")) + _overrides(variant_args) + _overrides(point_values)
                args += _overrides(point)
                args += ["--ckpt_path", "last"]  # a resubmitted line resumes its own run (fresh the first time)
                args += ["--trainer.logger.init_args.save_dir", str(save_dir), "--trainer.logger.init_args.name", group]
                args += [a for k in seed_keys for a in (f"--{k}", str(seed))]
                jobs.append(Job(group, seed, tuple(args + list(extra or []))))
    return jobs


def run_jobs(jobs: list[Job], keep_going: bool, parallel: int = 1, log_dir: Path | None = None) -> list[Job]:
    """Run each job as ``mot fit`` in a child process, ``parallel`` at a time, in order; return the ones that
    failed. With ``parallel`` > 1 each run's output goes to ``<log_dir>/sweep_logs/<group>/s<seed>.log`` (the
    runs would interleave on the terminal) and each run gets ``lane_threads`` intra-op threads."""
    env = lane_env(parallel)
    failed: list[Job] = []
    running: list[tuple[int, Job, subprocess.Popen, Path | None]] = []
    queue = list(enumerate(jobs, 1))
    while queue or running:
        while queue and len(running) < parallel and not (failed and not keep_going):
            i, job = queue.pop(0)
            print(f"\n[mot sweep {i}/{len(jobs)}] {job.group} seed {job.seed}: {job.command()}", flush=True)
            log = None if parallel == 1 else (log_dir or Path(".")) / "sweep_logs" / job.group / f"s{job.seed}.log"
            running.append((i, job, _start(job, env, log), log))
        if failed and not keep_going and not running:
            break
        i, job, proc, log = _wait_any(running)
        if proc.returncode != 0:
            failed.append(job)
            where = f" (output: {log})" if log else ""
            print(f"[mot sweep {i}/{len(jobs)}] {job.group} seed {job.seed} failed: exit code {proc.returncode}{where}",
                  flush=True)
        elif log:
            print(f"[mot sweep {i}/{len(jobs)}] {job.group} seed {job.seed} done (output: {log})", flush=True)
    if failed and not keep_going:
        job = failed[0]
        raise SystemExit(f"mot sweep: run {jobs.index(job) + 1}/{len(jobs)} ({job.group}, seed {job.seed}) failed; "
                         f"rerun it alone with:\n  {job.command()}")
    return failed


def lane_threads(parallel: int, cores: int | None = None) -> int:
    """Intra-op threads per run when ``parallel`` runs share this machine's cores (at least 1)."""
    return max(1, (cores or os.cpu_count() or 1) // parallel)


def lane_env(parallel: int) -> dict[str, str]:
    """The environment of each run: ``OMP_NUM_THREADS`` split between the lanes unless already set."""
    env = dict(os.environ)
    if parallel > 1:
        env.setdefault("OMP_NUM_THREADS", str(lane_threads(parallel)))
    return env


def _start(job: Job, env: dict[str, str], log: Path | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mot_lightning.commands", "fit", *job.args]
    if log is None:
        return subprocess.Popen(cmd, env=env)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:  # the child keeps its own handle
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait_any(running: list) -> tuple:
    """Remove and return the first entry of ``running`` whose process has ended (polling every 0.2 s)."""
    while True:
        for k, entry in enumerate(running):
            if entry[2].poll() is not None:
                return running.pop(k)
        time.sleep(0.2)


def scaling_command(sweep: dict, name: str, save_dir: str) -> str | None:
    """``mot compare --scaling`` over the sweep's arms when it has sizes (``points`` or ``grid``) and its
    variants sit in one folder (``a``, ``b``; not ``x/a``, ``y/b``); else None."""
    variants = list(sweep.get("variants") or {})
    parents = {os.path.dirname(v) for v in variants}
    if not (sweep.get("points") or sweep.get("grid")) or len(parents) != 1 or len(variants) < 2:
        return None
    folder = "/".join(p for p in (save_dir, name, parents.pop()) if p)
    return shlex.join(["mot", "compare", "--scaling", folder, "--baseline", os.path.basename(variants[0])])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mot sweep", description=__doc__.split("\n\n")[0],
                                epilog="Arguments after `--` go to every `mot fit` (e.g. -- --trainer.max_steps 50).")
    p.add_argument("--config", required=True, type=Path, help="the sweep YAML (see configs/sweeps/)")
    p.add_argument("--save_dir", help="override the YAML's save_dir (default runs)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--print", action="store_true", help="print one `mot fit` command per run; run nothing")
    out.add_argument("--write", type=Path, metavar="FILE", help="write the commands to FILE, one per line; run nothing")
    p.add_argument("--keep-going", action="store_true", help="run the remaining jobs when one fails")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="runs at once on this machine (default 1); each gets cores/N intra-op threads unless "
                        "OMP_NUM_THREADS is set, and writes its output to <save_dir>/sweep_logs/<group>/s<seed>.log")
    return p


def main(argv: list[str]) -> None:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    if not args.config.is_file():
        raise SystemExit(f"mot sweep: {args.config}: no such file (see configs/sweeps/ for an example)")
    sweep = yaml.safe_load(args.config.read_text()) or {}
    try:
        jobs = plan(sweep, str(sweep.get("name") or args.config.stem), args.save_dir, extra)
    except ValueError as err:
        raise SystemExit(f"mot sweep: {args.config}: {err}") from None
    commands = "\n".join(j.command() for j in jobs) + "\n"
    if args.print:
        print(commands, end="")
        return
    if args.write:
        args.write.write_text(commands)
        print(f"mot sweep: wrote {len(jobs)} commands to {args.write}")
        return
    if args.jobs < 1:
        raise SystemExit(f"mot sweep: --jobs must be >= 1, got {args.jobs}")
    save_dir = args.save_dir or sweep.get("save_dir", "runs")
    failed = run_jobs(jobs, args.keep_going, args.jobs, Path(save_dir))
    groups = list(dict.fromkeys(j.group for j in jobs))
    print(f"\nmot sweep: {len(jobs) - len(failed)}/{len(jobs)} runs done. Compare them with:\n  "
          + shlex.join(["mot", "compare", *(f"{save_dir}/{g}" for g in groups[1:]),
                        "--baseline", f"{save_dir}/{groups[0]}"]))
    scaling = scaling_command(sweep, str(sweep.get("name") or args.config.stem), save_dir)
    if scaling:
        print(f"or size by size (docs/compare.md, \"Scaling\"):\n  {scaling}")
    if failed:
        raise SystemExit(f"mot sweep: {len(failed)} runs failed: "
                         + ", ".join(f"{j.group} seed {j.seed}" for j in failed))
