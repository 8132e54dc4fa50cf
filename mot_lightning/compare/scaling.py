"""Scaling: the comparison of ``mot compare`` size by size, for arms trained at several sizes.

``mot compare --scaling DIR... [--baseline ARM]...`` (``commands/compare.py``). Each DIR holds *arms* as its
sub-directories: a sweep's ``<save_dir>/<name>``, or a folder of its variants (``runs/study/speech``). An arm is
one variant of the sweep, holding runs of several sizes (the sweep's ``points`` or ``grid``:
``mot/d64/s0-<hash>``, ``mot/d128/s0-<hash>``, ...).

- **Size** of a run: read from what the run recorded (run.json's experiment config, else its
  ``config.yaml``): the backbone widths ``SIZE_KEYS`` of ``model.backbone``, never a directory name, so any
  layout works (a grid over ``model.backbone.dim``, named points, model preset overlays). The runs of an arm
  at one size must be seeds of one experiment, as a group of the plain comparison (refused otherwise, naming
  what differs).
- **Parameters** of a size: the backbone's parameters per token, embeddings left out (``model/accounting.py``
  on the recorded widths). That is one tower, so the dense, MoT and unimodal runs of a size share it; MoT's
  other towers, which a token never uses, do not move its points.
- **FLOPs** at a size: the training FLOPs (``train/total_flops``) of an arm's runs at their last logged
  point, mean over seeds; the x of a pair is its baseline's. MoT's FLOPs per token equal dense's
  (accounting.py); a unimodal run's differ by its vocabulary's output head.

Each candidate arm is compared with each baseline arm at every size the candidate holds, through
``report.compare_groups``: the same seed pairing, intervals, noise floor, flags and verdicts as the plain
comparison. Only the tags that match ``tags`` (default ``DEFAULT_TAGS``: the validation losses per modality,
``val/loss_<modality>`` and ``val/<set>/loss_<modality>``) and that both arms logged are kept; a pair of arms
without such a tag (text-only against speech-only) is left out. A size the candidate holds and the baseline
does not gets a row saying so.
"""
from __future__ import annotations

import csv
import functools
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mot_lightning.compare.groups import Group, find_run_dirs, group_of, is_run_dir
from mot_lightning.compare.report import Row, Smoothing, compare_groups
from mot_lightning.compare.runs import Run, RunError, load_run, recorded_config, short_labels
from mot_lightning.compare.tables import csv_record
from mot_lightning.run_identity import differences

SIZE_KEYS = ("dim", "n_layers", "n_heads", "n_kv_heads", "attn_head_dim", "ffn_hidden", "ffn_multiple_of")
DEFAULT_TAGS = r"^val/(?:[^/]+/)?loss_[a-z]+$"
ARM_DEPTH = 3  # below an arm: [point/]run dir, or a run dir's version_*


@dataclass(frozen=True)
class Size:
    """A backbone size: the recorded ``SIZE_KEYS`` (key, value) pairs and its parameters per token."""

    widths: tuple[tuple[str, object], ...]
    params: int

    def value(self, key: str) -> object:
        return dict(self.widths).get(key)


@dataclass
class Arm:
    """One arm of a scaling comparison: its groups of seeds by size, smallest first."""

    label: str
    path: Path
    sizes: dict[Size, Group]

    def tags(self, pattern: re.Pattern) -> set[str]:
        return {t for g in self.sizes.values() for r in g.runs for t in r.compared_tags if pattern.search(t)}


@dataclass
class ScalingRow:
    """A candidate arm against a baseline arm on one tag at one size (``row`` None: the baseline has no run of
    that size, ``note`` says so)."""

    baseline: str
    candidate: str
    tag: str
    size: Size
    size_label: str
    flops: float | None  # the baseline's training FLOPs at its last point, mean over seeds
    cand_flops: float | None
    row: Row | None
    note: str = ""


@functools.lru_cache(maxsize=None)
def backbone_params(widths: tuple[tuple[str, object], ...]) -> int:
    """Parameters of one tower of a backbone of these widths (no embeddings): ``model/accounting.py``."""
    from mot_lightning.model.accounting import backbone_stats
    from mot_lightning.model.config import TransformerConfig

    cfg = TransformerConfig(**dict(widths), n_modalities=1, sparsity="dense")
    return backbone_stats(cfg, seq_len=1).total_params


def size_of(run: Run) -> Size:
    """The size the run recorded (module doc)."""
    config = recorded_config(run) or {}
    backbone = (config.get("model") or {}).get("backbone")
    if not isinstance(backbone, dict) or "dim" not in backbone:
        raise RunError(f"{run.path}: cannot tell its size: no model.backbone widths in its run.json or "
                       "config.yaml (was it written by `mot fit`?)")
    widths = tuple((k, backbone[k]) for k in SIZE_KEYS if k in backbone)
    return Size(widths, backbone_params(widths))


def size_labels(sizes: list[Size]) -> dict[Size, str]:
    """``dim=64,n_layers=2``: the widths that differ between the sizes (``dim`` and ``n_layers`` if none do)."""
    keys = [k for k in SIZE_KEYS if len({s.value(k) for s in sizes}) > 1] or ["dim", "n_layers"]
    return {s: ",".join(f"{k}={s.value(k)}" for k in keys) for s in sizes}


def arm_dirs(dirs: list[str | Path]) -> list[Path]:
    """The arms below each of ``dirs``: its sub-directories that hold runs, sorted."""
    out: list[Path] = []
    for d in map(Path, dirs):
        if not d.is_dir():
            raise RunError(f"{d}: no such directory; pass the dir that holds the sweep's arms (runs/<sweep name>)")
        if is_run_dir(d):
            raise RunError(f"{d} is a run dir; --scaling takes the dir that holds the arms (runs/<sweep name>), "
                           "each arm a dir of runs of several sizes")
        found = [sub for sub in sorted(p for p in d.iterdir() if p.is_dir()) if find_run_dirs(sub, ARM_DEPTH)]
        if not found:
            raise RunError(f"{d}: no arm in it (no sub-directory holding runs); pass runs/<sweep name>")
        if all(is_run_dir(sub) for sub in found):
            raise RunError(f"{d} holds runs, not arms (dirs of runs): pass the dir above it, which holds the arms")
        out += found
    if len({p.resolve() for p in out}) < len(out):
        raise RunError("an arm was given twice: " + ", ".join(map(str, out)))
    return out


def load_arm(path: Path, label: str) -> Arm:
    """Every run below ``path``, grouped by the size it recorded; each size must be seeds of one experiment."""
    by_size: dict[Size, list[Run]] = {}
    for d in find_run_dirs(path, ARM_DEPTH):
        run = load_run(d)
        by_size.setdefault(size_of(run), []).append(run)
    labels = size_labels(list(by_size))
    sizes: dict[Size, Group] = {}
    for size in sorted(by_size, key=lambda s: (s.params, str(s.widths))):
        runs = by_size[size]
        hashes = list(dict.fromkeys(r.hash for r in runs))
        if len(hashes) > 1 and None not in hashes:
            a, b = runs[0], next(r for r in runs if r.hash != runs[0].hash)
            diff = "; ".join(differences(a.identity.experiment, b.identity.experiment)[:4])
            raise RunError(f"{path}: its runs of size {labels[size]} are {len(hashes)} experiments "
                           f"({', '.join(hashes)}; differ in: {diff}), not seeds of one; an arm holds one experiment "
                           "per size: move the others into an arm dir of their own")
        sizes[size] = group_of(path, runs, label)
    return Arm(label, path, sizes)


def load_arms(dirs: list[str | Path]) -> list[Arm]:
    paths = arm_dirs(dirs)
    return [load_arm(p, lab) for p, lab in zip(paths, short_labels(paths))]


def pick_baselines(arms: list[Arm], names: list[str] | None) -> list[int]:
    """Indices of the baseline arms: each name an arm's path, label or the end of its label (``dense``,
    ``speech/dense``); default: the first arm whose label contains ``dense``, else the first arm."""
    if not names:
        dense = [i for i, a in enumerate(arms) if "dense" in a.label]
        return [dense[0] if dense else 0]
    out = []
    for name in names:
        wanted = Path(name).resolve()
        hits = [i for i, a in enumerate(arms)
                if a.path.resolve() == wanted or a.label == name or a.label.endswith("/" + name.strip("/"))]
        if len(hits) != 1:
            known = ", ".join(a.label for a in arms)
            raise RunError(f"--baseline {name}: " + ("no such arm" if not hits else "more than one arm matches")
                           + f"; the arms are {known}")
        out.append(hits[0])
    return list(dict.fromkeys(out))


def mean_flops(group: Group) -> float | None:
    """Training FLOPs at each run's last logged point, mean over seeds; None unless every run logged them."""
    if any(r.flops is None for r in group.runs):
        return None
    return float(np.mean([r.flops.values[-1] for r in group.runs]))


def compare_arms(arms: list[Arm], baselines: list[int], smoothing: Smoothing, min_below: float = 0.5,
                 tags: str = DEFAULT_TAGS) -> list[ScalingRow]:
    """Every other arm against each baseline arm, size by size (module doc); ordered by baseline, candidate,
    tag, size."""
    pattern = re.compile(tags)
    labels = size_labels(sorted({s for a in arms for s in a.sizes}, key=lambda s: (s.params, str(s.widths))))
    out: list[ScalingRow] = []
    for b in baselines:
        base = arms[b]
        for c, cand in enumerate(arms):
            common = [] if c == b else sorted(base.tags(pattern) & cand.tags(pattern))
            if not common:
                continue
            rows: dict[tuple[Size, str], Row] = {}
            for size, group in cand.sizes.items():
                if size in base.sizes:
                    found = compare_groups([base.sizes[size], group], 0, smoothing, min_below)
                    rows.update({(size, r.key): r for r in found if r.key in common})
            for tag in common:
                for size, group in cand.sizes.items():
                    b_group = base.sizes.get(size)
                    out.append(ScalingRow(base.label, cand.label, tag, size, labels[size],
                                          None if b_group is None else mean_flops(b_group), mean_flops(group),
                                          rows.get((size, tag)),
                                          "" if b_group is not None else f"no {base.label} run of this size"))
    return out


def _cells(r: ScalingRow) -> list[str]:
    flops = "n/a" if r.flops is None else f"{r.flops:.3g}"
    head = [f"{r.candidate} vs {r.baseline}", r.size_label, f"{r.size.params:,}", flops]
    row = r.row
    if row is None or row.ratio is None:
        notes = [r.note] if r.note else list(row.notes if row is not None else [])
        return head + ["n/a"] * 7 + ["", "; ".join(notes)]
    noise = row.noise
    floor = (f"{noise.ratio.lo:.3f} .. {noise.ratio.hi:.3f}" if noise is not None and noise.ratio is not None
             else "n/a (1 seed)")
    return head + [f"{row.n_base}/{row.n_cand} ({row.n_pairs})", row.base_final.text(), row.final.text(),
                   row.ratio.text(), row.s["s_steps"].text(), row.s["s_flops"].text(), floor, row.verdict,
                   "; ".join(row.notes)]


COLUMNS = ("candidate vs baseline", "size", "params", "FLOPs (baseline)", "n base/cand (pairs)", "baseline final",
           "final", "ratio", "s (final)", "s_flops", "noise floor (ratio)", "verdict", "flags")


def to_markdown(rows: list[ScalingRow], header: str = "") -> str:
    """One table per tag: every pair of arms, size by size."""
    out = [header, ""] if header else []
    out += ["Per size: means over seeds (final values) or seed pairs (ratio = candidate / baseline, s) with 95% "
            "Student-t intervals [lo, hi], as in the plain comparison (docs/compare.md). params: the backbone's "
            "parameters per token without embeddings (one tower); FLOPs: the baseline's training FLOPs at its "
            "last logged point, mean over seeds. noise floor: the ratio between the baseline's own seeds (range)."]
    for tag in dict.fromkeys(r.tag for r in rows):
        out += ["", f"## {tag}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        out += ["| " + " | ".join(c.replace("|", "/") for c in _cells(r)) + " |" for r in rows if r.tag == tag]
    return "\n".join(out) + "\n"


def csv_records(rows: list[ScalingRow]) -> list[dict[str, object]]:
    records = []
    for r in rows:
        rec: dict[str, object] = {"tag": r.tag, "baseline": r.baseline, "candidate": r.candidate,
                                  "size": r.size_label, **{k: "" if v is None else v for k, v in r.size.widths},
                                  "params": r.size.params, "flops_baseline": "" if r.flops is None else r.flops,
                                  "flops_candidate": "" if r.cand_flops is None else r.cand_flops}
        if r.row is not None:
            rec |= {k: v for k, v in csv_record(r.row).items() if k not in ("group", "key")}
        else:
            rec["note"] = r.note
        records.append(rec)
    return records


def to_csv(rows: list[ScalingRow]) -> str:
    """Raw numbers, one line per (baseline, candidate, tag, size); an undefined value is an empty cell."""
    records = csv_records(rows)
    fields = list(dict.fromkeys(k for rec in records for k in rec)) or ["tag"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue()


def header(arms: list[Arm], baselines: list[int], smoothing: Smoothing) -> str:
    labels = size_labels(sorted({s for a in arms for s in a.sizes}, key=lambda s: (s.params, str(s.widths))))
    lines = ["baseline" + ("s" if len(baselines) > 1 else "") + ": " + ", ".join(arms[b].label for b in baselines)
             + f"; EMA smoothing train {smoothing.train:g}, val {smoothing.val:g}"]
    for arm in arms:
        parts = []
        for size, g in arm.sizes.items():
            seeds = ",".join("?" if s is None else str(s) for s in g.seeds)
            parts.append(f"{labels[size]} ({size.params:,} params; seeds {seeds}; "
                         f"{'config hash ' + g.hash if g.hash else 'no run.json'}; "
                         f"final step {max(r.last_step for r in g.runs):g})")
        lines.append(f"{arm.label}: " + "; ".join(parts))
    return "\n".join(lines)
