"""Compare runs against a baseline, one row per (run, loss tag); render as text, Markdown, CSV."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from mot_lightning.compare.matching import Match, match_curves
from mot_lightning.compare.runs import Run

COLUMNS = ("run", "key", "s_steps", "s_flops", "s_time", "final", "baseline_final", "ratio", "note")


@dataclass(frozen=True)
class Smoothing:
    """EMA factors over logged points (see matching.py): dense training curves vs sparse validation."""

    train: float = 0.6
    val: float = 0.0

    def factor(self, tag: str) -> float:
        return self.train if tag.startswith("train/") else self.val


@dataclass
class Row:
    run: str
    key: str
    match: Match | None  # None: the tag is missing on one side (n/a)
    notes: list[str] = field(default_factory=list)

    def cells(self, readable: bool) -> dict[str, object]:
        """Column -> value; an undefined s is "not reached"/"n/a" when ``readable``, else empty."""
        m = self.match
        undefined = "not reached" if m is not None and m.match_step is None else "n/a"
        s = (lambda v: (undefined if readable else "") if v is None else v)
        return {"run": self.run, "key": self.key,
                "s_steps": s(m and m.s_steps), "s_flops": s(m and m.s_flops), "s_time": s(m and m.s_time),
                "final": "" if m is None else m.final, "baseline_final": "" if m is None else m.base_final,
                "ratio": "" if m is None else m.ratio, "note": "; ".join(self.notes)}


def compare_runs(runs: list[Run], labels: list[str], baseline: int, smoothing: Smoothing) -> list[Row]:
    """Every non-baseline run against ``runs[baseline]`` on every loss tag any run logged."""
    base = runs[baseline]
    keys = sorted({t for r in runs for t in r.loss_tags})
    return [_row(run, label, base, labels[baseline], key, smoothing)
            for i, (run, label) in enumerate(zip(runs, labels)) if i != baseline for key in keys]


def _row(run: Run, label: str, base: Run, base_label: str, key: str, smoothing: Smoothing) -> Row:
    for side, name in ((base, f"baseline {base_label}"), (run, label)):
        if key not in side.scalars:
            return Row(label, key, None, [f"n/a: {name} never logged {key}"])
    ours, theirs = run.scalars[key], base.scalars[key]
    m = match_curves(ours, theirs, smoothing.factor(key), run.flops, base.flops)
    notes = list(m.notes)
    if m.match_step is not None and m.final > m.base_final:
        notes.append(f"reached at step {m.match_step:.0f} but ended above the baseline (noisy or rising curve)")
    if ours.last_step < theirs.last_step:
        notes = [n + " (yet)" if n == "not reached" else n for n in notes]
        notes.append(f"partial: logged to step {ours.last_step:g} of the baseline's {theirs.last_step:g}")
    return Row(label, key, m, notes)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1e4 else f"{value:.3g}"
    return str(value)


def to_text(rows: list[Row]) -> str:
    """Fixed-width table for the terminal."""
    table = [list(COLUMNS)] + [[_fmt(v) for v in r.cells(readable=True).values()] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in table)


def to_markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(v) for v in r.cells(readable=True).values()) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[Row]) -> str:
    """Raw numbers; an undefined value is an empty cell and the note says why."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(r.cells(readable=False) for r in rows)
    return buf.getvalue()
