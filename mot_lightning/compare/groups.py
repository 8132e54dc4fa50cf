"""Groups of runs: the seeds of one experiment, compared as one arm.

A group is given as a directory:

- a run dir (``runs/speech/mot/s0-1a2b3c4d``, or an older run dir holding ``version_*``):
  a group of one seed;
- a dir holding run dirs (``runs/speech/mot`` with ``s0-1a2b3c4d``, ``s1-1a2b3c4d``, ...):
  every run below it, which must be seeds of one experiment (one config hash);
  ``DIR@HASH`` picks the runs of one hash when a dir holds several experiments.

Runs of different experiments are never put in one group: the error lists them by hash
with what differs, and how to select one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mot_lightning.compare.runs import EVENTS_GLOB, Run, RunError, load_run
from mot_lightning.run_identity import RUN_FILE, differences

MAX_DEPTH = 3  # how far below a group dir runs are looked for


@dataclass
class Group:
    label: str
    path: Path
    runs: list[Run]  # sorted by seed

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.runs]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def hash(self) -> str | None:
        return self.runs[0].hash


def is_run_dir(d: Path) -> bool:
    """A dir with run.json, with event files, or with ``version_*`` dirs holding event files."""
    if (d / RUN_FILE).is_file() or any(d.glob(EVENTS_GLOB)):
        return True
    return any(v.is_dir() and any(v.glob(EVENTS_GLOB)) for v in d.glob("version_*"))


def find_run_dirs(path: Path, depth: int = MAX_DEPTH) -> list[Path]:
    """``path`` if it is a run dir, else the run dirs below it (not below a run dir), sorted."""
    if is_run_dir(path):
        return [path]
    if depth == 0:
        return []
    return [r for d in sorted(p for p in path.iterdir() if p.is_dir()) for r in find_run_dirs(d, depth - 1)]


def load_group(spec: str | Path, label: str) -> Group:
    """Read every run of a group dir (``DIR`` or ``DIR@HASH``); refuse a mix of experiments."""
    text = str(spec)
    path, _, want = text.rpartition("@") if "@" in Path(text).name else (text, "", "")
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: no such directory; pass a run dir (runs/<name>/<run_id>) or a dir of seeds of "
                       "one experiment (runs/<name>)")
    dirs = find_run_dirs(path)
    if not dirs:
        raise RunError(f"{path}: no runs in it (no run.json, no TensorBoard event files in version_* dirs up to "
                       f"{MAX_DEPTH} levels down); is this where `mot fit` wrote (runs/<name>/<run_id>)?")
    runs = [load_run(d) for d in dirs]
    if want:
        runs = [r for r in runs if r.hash is not None and r.hash.startswith(want)]
        if not runs:
            raise RunError(f"{path}: no run with config hash {want}")
    return group_of(path, runs, label)


def group_of(path: Path, runs: list[Run], label: str) -> Group:
    """``runs`` (found under ``path``) as one group, sorted by seed; refused unless they are seeds of one
    experiment."""
    _check_one_experiment(path, runs)
    runs = sorted(runs, key=lambda r: (r.seed is None, r.seed if r.seed is not None else 0, str(r.path)))
    return Group(label, path, runs)


def _check_one_experiment(path: Path, runs: list[Run]) -> None:
    if len(runs) == 1:
        return
    hashes = {r.hash for r in runs}
    if None in hashes:
        names = ", ".join(str(r.path.relative_to(path)) for r in runs if r.hash is None)
        raise RunError(f"{path}: cannot tell whether its runs are seeds of one experiment ({names} have no "
                       f"{RUN_FILE}); pass each run dir as its own group")
    if len(hashes) > 1:
        by_hash: dict[str, list[Run]] = {}
        for r in runs:
            by_hash.setdefault(r.hash, []).append(r)
        first = runs[0]
        lines = []
        for h, group in by_hash.items():
            names = ", ".join(str(r.path.relative_to(path)) for r in group)
            diff = "" if h == first.hash else "; differs in: " + "; ".join(
                differences(first.identity.experiment, group[0].identity.experiment)[:4])
            lines.append(f"  {path}@{h}: {names}{diff}")
        raise RunError(f"{path} holds {len(by_hash)} different experiments; a group must be seeds of one. "
                       "Select one by its config hash:\n" + "\n".join(lines))
    seeds = [r.seed for r in runs]
    dupes = sorted({s for s in seeds if seeds.count(s) > 1 and s is not None})
    if dupes:
        raise RunError(f"{path}: more than one run of seed(s) {dupes} of the same experiment; keep one per seed")
