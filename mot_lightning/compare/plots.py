"""PNG plots: loss against steps, FLOPs and wall-clock, one panel per loss tag.

Every run is a line (smoothed as in the table), the baseline dashed, and each
run's match point (where it first reaches the baseline's final loss) a dot.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np

from mot_lightning.compare.matching import Series, smooth
from mot_lightning.compare.report import Row, Smoothing
from mot_lightning.compare.runs import Run

AXES = {"steps": "optimizer step", "flops": "training FLOPs", "time": "wall-clock (s, active)"}


def plot_all(runs: list[Run], labels: list[str], baseline: int, rows: list[Row],
             smoothing: Smoothing, out: Path) -> list[Path]:
    """Write ``loss_vs_<axis>.png`` for each axis the runs support; return the paths written."""
    keys = sorted({t for r in runs for t in r.loss_tags})
    axes = [a for a in AXES if a != "flops" or all(r.flops is not None for r in runs)]
    matches = {(r.run, r.key): r.match.match_step for r in rows if r.match and r.match.match_step is not None}
    written = []
    for axis in axes:
        path = out / f"loss_vs_{axis}.png"
        _plot_axis(runs, labels, baseline, keys, axis, matches, smoothing, path)
        written.append(path)
    return written


def _x(run: Run, series: Series, axis: str, steps: np.ndarray) -> np.ndarray:
    if axis == "steps":
        return steps
    if axis == "flops":
        return np.interp(steps, run.flops.steps, run.flops.values)
    return np.interp(steps, series.steps, series.times)


def _plot_axis(runs: list[Run], labels: list[str], baseline: int, keys: list[str], axis: str,
               matches: dict[tuple[str, str], float], smoothing: Smoothing, path: Path) -> None:
    ncols = min(4, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax, key in zip(grid.flat, keys):
        for i, (run, label) in enumerate(zip(runs, labels)):
            if key not in run.scalars:
                continue
            series = run.scalars[key]
            y = smooth(series.values, smoothing.factor(key))
            line, = ax.plot(_x(run, series, axis, series.steps), y, label=label,
                            linestyle="--" if i == baseline else "-")
            if i == baseline:  # the target every run is matched against
                ax.axhline(y[-1], color=line.get_color(), linewidth=0.6, linestyle=":")
            step = matches.get((label, key))
            if step is not None:
                ax.plot(_x(run, series, axis, np.array([step])), [np.interp(step, series.steps, y)],
                        "o", color=line.get_color())
        ax.set_title(key, fontsize=9)
        ax.set_xlabel(AXES[axis], fontsize=8)
        if ax.lines and all(np.all(np.asarray(ln.get_ydata()) > 0) for ln in ax.lines):
            ax.set_yscale("log")  # losses span decades early in training
        ax.tick_params(labelsize=7)
    for ax in list(grid.flat)[len(keys):]:
        ax.set_visible(False)
    grid.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
