"""Read a run's TensorBoard scalars (TensorBoardLogger layout) into ``tag -> Series``.

A run dir ``runs/<name>/<run_id>`` (``run_identity.py``) holds ``run.json`` and
``version_0``, ``version_1``, ... (one per launch; a resumed run continues the steps in
a new version). They are merged by step, later versions winning on duplicate steps (a
resume from an earlier checkpoint re-logs those steps). Only versions of one
experiment are merged: each version's saved ``config.yaml`` is hashed the way
``run_identity`` hashes a run, and versions that differ are refused, as are
validate/test launches (their ``config.yaml`` has ``verbose``; new runs log them under
``<run>/validate/``, which is never read). Wall-clock is *active* time: each version
counts from its own first event to its last scalar, so the pause between a stop and a
resume is not counted. A dir that holds event files itself (one ``version_N``) is read alone.

Compared tags: the losses (``is_loss_tag``) and the generation metrics ``val/gen/<metric>``
(``GenerationMetrics``), each with its direction (``direction``): better lower for losses and for
metrics named ``fid*``, ``kid*``, ``wer``, ``cer``; no direction (finals and ratio only, no step
matching) for ``*_ratio`` (a duration ratio is best at 1); better higher for the rest (accuracies, BLEU).

Sampling errors: beside ``val/gen/<metric>`` the writer may log the metric's sampling standard error as
``val/gen_se/<metric>`` (binomial for accuracies, bootstrap for FID/KID/CLIPScore/BLEU/WER) and put the sample
count in the metric's summary description (``"<n> samples. ..."``). ``Run.final_se`` is the SE logged at the
metric's final step and ``Run.sample_count`` that count (as the run's latest version first described the tag);
both are None for runs written without them. ``val/gen_se/`` tags are read but never compared as rows.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mot_lightning.compare.matching import Series
from mot_lightning.modality import Modality
from mot_lightning.run_identity import RunIdentity, config_hash, differences, experiment_config, read_identity

FLOPS_TAG = "train/total_flops"
EVENTS_GLOB = "events.out.tfevents.*"
_LOSS_TAG = re.compile(r"^(train|val)(?:/[^/]+)?/loss(?:_([a-z]+))?$")
GEN_PREFIX = "val/gen/"
SE_PREFIX = "val/gen_se/"  # the sampling standard error of val/gen/<metric>, same suffix
_SAMPLES = re.compile(r"^\s*(\d+) samples\.")  # the writer's description: "<n> samples. <what it measures>"
_LOWER_GEN = ("fid", "kid", "wer", "cer")  # generation metrics that are better lower


class RunError(Exception):
    """A run dir cannot be compared; the message says why and what to pass instead."""


def is_loss_tag(tag: str) -> bool:
    """``train/loss``, ``val/loss``, ``{train,val}/loss_<modality>``, ``val/<set>/loss_<modality>``."""
    m = _LOSS_TAG.match(tag)
    return bool(m) and (m.group(2) is None or m.group(2) in {x.label for x in Modality})


def is_gen_tag(tag: str) -> bool:
    """``val/gen/<metric>`` and ``val/gen/<split>/<metric>``."""
    return tag.startswith(GEN_PREFIX)


def se_tag(tag: str) -> str:
    """``val/gen/<metric>`` -> ``val/gen_se/<metric>``, where its sampling standard error is logged."""
    return SE_PREFIX + tag.removeprefix(GEN_PREFIX)


def sample_count(description: str) -> int | None:
    """The leading ``<n> samples.`` of a summary description, else None."""
    m = _SAMPLES.match(description)
    return int(m.group(1)) if m else None


def direction(tag: str) -> str | None:
    """``"lower"`` or ``"higher"`` (which is better), or None for a metric without one (module doc)."""
    if not is_gen_tag(tag):
        return "lower"
    name = tag.rsplit("/", 1)[-1]
    if name.endswith("_ratio"):
        return None
    return "lower" if name.startswith(_LOWER_GEN) else "higher"


@dataclass
class Run:
    path: Path
    versions: list[Path]
    scalars: dict[str, Series]
    notes: list[str] = field(default_factory=list)
    identity: RunIdentity | None = None  # from run.json; None for runs written before run identity
    descriptions: dict[str, str] = field(default_factory=dict)  # tag -> summary description (latest version)

    @property
    def seed(self) -> int | None:
        return None if self.identity is None else self.identity.seed

    @property
    def hash(self) -> str | None:
        return None if self.identity is None else self.identity.hash

    @property
    def loss_tags(self) -> list[str]:
        return sorted(t for t in self.scalars if is_loss_tag(t))

    @property
    def compared_tags(self) -> list[str]:
        """The loss tags, then the generation metrics (``val/gen/...``)."""
        return self.loss_tags + sorted(t for t in self.scalars if is_gen_tag(t))

    def se_series(self, tag: str) -> Series | None:
        """The sampling standard error of generation metric ``tag`` over steps (None when not logged)."""
        return self.scalars.get(se_tag(tag)) if is_gen_tag(tag) else None

    def final_se(self, tag: str) -> float | None:
        """The sampling SE logged at the step of ``tag``'s final value; None when there is none (or not finite)."""
        se, metric = self.se_series(tag), self.scalars.get(tag)
        if se is None or metric is None:
            return None
        hit = se.steps == metric.last_step
        value = float(se.values[hit][-1]) if hit.any() else math.nan
        return value if math.isfinite(value) and value >= 0 else None

    def sample_count(self, tag: str) -> int | None:
        """How many samples ``tag`` was scored on, from its summary description; None when it does not say."""
        return sample_count(self.descriptions.get(tag, ""))

    @property
    def flops(self) -> Series | None:
        return self.scalars.get(FLOPS_TAG)

    @property
    def last_step(self) -> float:
        return max(s.last_step for t, s in self.scalars.items() if is_loss_tag(t))


def load_run(path: str | Path) -> Run:
    """Read and merge a run's versions; raise ``RunError`` with a clear message when it can't."""
    path = Path(path)
    identity = read_identity(path) or (read_identity(path.parent) if path.name.startswith("version_") else None)
    versions, notes = _training_versions(path, find_versions(path), identity)
    merged: dict[str, dict[float, tuple[float, float]]] = {}
    descriptions: dict[str, str] = {}
    offset = 0.0
    for version in versions:
        scalars, duration, described = _read_version(version)
        descriptions |= described  # a later version wins, as for the values
        for tag, points in scalars.items():
            for step, value, t in points:
                merged.setdefault(tag, {})[step] = (value, offset + t)
        offset += duration
    series = {tag: _to_series(points) for tag, points in merged.items()}
    run = Run(path, versions, series, notes, identity, descriptions)
    if not run.loss_tags:
        found = ", ".join(sorted(series)[:8]) or "no scalars at all"
        raise RunError(f"{path}: its event files hold no loss tag (train/loss, train/loss_<modality>, "
                       f"val/...loss_<modality>); found: {found}. Has training logged its first steps yet?")
    return run


def recorded_config(run: Run) -> dict | None:
    """What the run recorded of its config: run.json's experiment config (seeds and logging settings left
    out), else the first training version's ``config.yaml``; None when it has neither."""
    if run.identity is not None:
        return run.identity.experiment
    return next((c for c in map(_version_config, run.versions) if c is not None), None)


def find_versions(path: Path) -> list[Path]:
    """The dirs to read, oldest first: ``path`` itself if it holds event files, else its ``version_*``."""
    if not path.exists():
        raise RunError(f"{path}: no such directory; pass a run dir such as runs/speech/mot "
                       "(its version_* dirs are merged) or a single runs/speech/mot/version_N")
    if not path.is_dir():
        raise RunError(f"{path}: not a directory; pass the run dir that holds version_* dirs")
    if any(path.glob(EVENTS_GLOB)):
        return [path]
    versions = sorted((d for d in path.glob("version_*") if d.is_dir() and any(d.glob(EVENTS_GLOB))),
                      key=_version_number)
    if not versions:
        raise RunError(f"{path}: no TensorBoard event files ({EVENTS_GLOB}) in it or in its version_* "
                       "dirs; is this the run dir a TensorBoardLogger wrote (runs/<setting>/<variant>)?")
    return versions


def _version_config(version: Path) -> dict | None:
    cfg = version / "config.yaml"
    if not cfg.is_file():
        return None
    data = yaml.safe_load(cfg.read_text())
    return data if isinstance(data, dict) else None


def _training_versions(path: Path, versions: list[Path],
                       identity: RunIdentity | None) -> tuple[list[Path], list[str]]:
    """Drop validate/test launches; refuse versions of another experiment than run.json's (or, without
    run.json, than each other's), compared by the hash of their saved config.yaml."""
    configs = {v: _version_config(v) for v in versions}
    skipped = [v for v, c in configs.items() if c is not None and "verbose" in c]
    kept = [v for v in versions if v not in skipped]
    if not kept:
        raise RunError(f"{path}: its version dirs hold only validate/test launches, no training logs")
    experiments = {v: experiment_config(configs[v]) for v in kept if configs[v] is not None}
    hashes = {v: config_hash(e) for v, e in experiments.items()}
    expected = identity.hash if identity is not None else next(iter(hashes.values()), None)
    odd = [v for v in hashes if hashes[v] != expected]
    if odd:
        reference = identity.experiment if identity is not None else experiments[next(iter(hashes))]
        diff = "; ".join(differences(reference, experiments[odd[0]])[:6])
        raise RunError(f"{path}: {', '.join(v.name for v in odd)} belong to another experiment than this run "
                       f"(config hash {hashes[odd[0]]}, the run's {expected}; differs in: {diff}). They cannot be "
                       "merged as one run: move them into their own run dir, or pass single version_N dirs.")
    notes = [f"skipped {v.name} (a validate/test launch, not training)" for v in skipped]
    return kept, notes


def _version_number(d: Path) -> tuple[int, str]:
    suffix = d.name.removeprefix("version_")
    return (int(suffix), "") if suffix.isdigit() else (1 << 30, suffix)


def _read_version(version: Path) -> tuple[dict[str, list[tuple[float, float, float]]], float, dict[str, str]]:
    """``tag -> [(step, value, seconds since this version's first event)]``, the active duration, and
    ``tag -> summary description`` for the tags that carry one (the first the version logged)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(version), size_guidance={SCALARS: 0})  # 0 = keep every point
    try:
        acc.Reload()
    except Exception as err:  # corrupt or unreadable files: say which dir, not a traceback
        raise RunError(f"{version}: cannot read its event files ({err}); remove or move the broken file") from err
    if not acc.Tags()[SCALARS]:  # a launch that has not logged yet (maybe an empty file)
        return {}, 0.0, {}
    start = acc.FirstEventTimestamp()
    out = {tag: [(float(e.step), float(e.value), e.wall_time - start) for e in acc.Scalars(tag)]
           for tag in acc.Tags()[SCALARS]}
    duration = max((p[2] for pts in out.values() for p in pts), default=0.0)
    described = {tag: d for tag in out if (d := _description(acc, tag))}
    return out, duration, described


def _description(acc, tag: str) -> str:
    """The tag's summary description ("" when it was logged without metadata)."""
    try:
        return acc.SummaryMetadata(tag).summary_description
    except KeyError:
        return ""


def _to_series(points: dict[float, tuple[float, float]]) -> Series:
    steps = sorted(points)
    return Series.of(steps, [points[s][0] for s in steps], [points[s][1] for s in steps])


def short_labels(paths: list[Path]) -> list[str]:
    """Shortest path suffixes (at least the last two parts) that tell the runs apart."""
    parts = [p.resolve().parts for p in paths]
    for n in range(2, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-n:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]
