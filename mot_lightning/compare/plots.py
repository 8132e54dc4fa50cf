"""PNG plots: loss against steps, FLOPs and wall-clock, one panel per loss tag.

Each group has one colour: every seed a thin line (smoothed as in the table), the mean
over seeds a bold line (dashed for the baseline) with a min-max band over seeds, and the
baseline's mean final value a dotted line (the step-matching target). The mean is taken
on the logged steps inside the range every seed covers; on the FLOPs and time axes it is drawn at the seeds' mean
FLOPs / time of each step. Every panel has both axis labels; the y unit comes from the
tag (``loss (nats/token)``; ``diffusion MSE`` for images of a diffusion run). A log scale
is used only when a panel's values span more than ``LOG_SPAN`` x, else a linear one.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import LogLocator, MaxNLocator, ScalarFormatter

from mot_lightning.compare.groups import Group
from mot_lightning.compare.matching import smooth
from mot_lightning.compare.report import Smoothing
from mot_lightning.compare.runs import Run

AXES = {"steps": "optimizer step", "flops": "training FLOPs", "time": "wall-clock (s)"}
LOG_SPAN = 3.0


def is_diffusion(run: Run) -> bool:
    """A Transfusion run: images trained by diffusion (its image loss is an MSE, not nats)."""
    if "train/loss_lm" in run.scalars:
        return True
    model = (run.identity.experiment.get("model", {}) if run.identity is not None else {})
    objective = model.get("objective") or {}
    return bool(model.get("diffusion")) or "Transfusion" in str(objective.get("class_path", ""))


def y_label(tag: str, diffusion: bool) -> str:
    modality = tag.rsplit("loss_", 1)[1] if "/loss_" in tag else None
    if diffusion and modality == "image":
        return "diffusion MSE"
    if diffusion and modality is None:
        return "loss (nats/token + λ·MSE)"
    return "loss (nats/token)"


def plot_all(groups: list[Group], baseline: int, smoothing: Smoothing, out: Path) -> list[Path]:
    """Write ``loss_vs_<axis>.png`` for each axis the runs support; return the paths written."""
    keys = sorted({t for g in groups for r in g.runs for t in r.loss_tags})
    runs = [r for g in groups for r in g.runs]
    axes = [a for a in AXES if a != "flops" or all(r.flops is not None for r in runs)]
    written = []
    for axis in axes:
        path = out / f"loss_vs_{axis}.png"
        _plot_axis(groups, baseline, keys, axis, smoothing, path)
        written.append(path)
    return written


def _x(run: Run, key: str, axis: str, steps: np.ndarray) -> np.ndarray:
    if axis == "steps":
        return steps
    if axis == "flops":
        return np.interp(steps, run.flops.steps, run.flops.values)
    series = run.scalars[key]
    return np.interp(steps, series.steps, series.times)


def group_curves(group: Group, key: str, axis: str, factor: float):
    """Per-seed (x, y), and the seeds interpolated on the logged steps inside the range all of them
    cover: ``xs`` (T,) and ``ys`` (seeds, T)."""
    runs = [r for r in group.runs if key in r.scalars]
    seeds = [(_x(r, key, axis, r.scalars[key].steps), smooth(r.scalars[key].values, factor)) for r in runs]
    first = max(r.scalars[key].steps[0] for r in runs)
    last = min(r.scalars[key].last_step for r in runs)
    steps = np.unique(np.concatenate([r.scalars[key].steps for r in runs]))
    steps = steps[(steps >= first) & (steps <= last)]
    ys = np.stack([np.interp(steps, r.scalars[key].steps, y) for r, (_, y) in zip(runs, seeds)])  # (seeds, T)
    xs = np.stack([_x(r, key, axis, steps) for r in runs]).mean(axis=0)  # (T,)
    return seeds, xs, ys


def _plot_panel(ax, groups: list[Group], baseline: int, key: str, axis: str, factor: float) -> None:
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, group in enumerate(groups):
        if not any(key in r.scalars for r in group.runs):
            continue
        colour = colours[i % len(colours)]
        seeds, xs, ys = group_curves(group, key, axis, factor)
        for x, y in seeds:
            ax.plot(x, y, color=colour, linewidth=0.6, alpha=0.45)
        band = "" if len(ys) < 2 else ", band min-max"
        ax.plot(xs, ys.mean(axis=0), color=colour, linewidth=2.0, linestyle="--" if i == baseline else "-",
                label=f"{group.label}: mean of {len(ys)} seed{'s' if len(ys) > 1 else ''}{band}")
        if len(ys) > 1:
            ax.fill_between(xs, ys.min(axis=0), ys.max(axis=0), color=colour, alpha=0.15, linewidth=0)
        if i == baseline:
            ax.axhline(float(np.mean([y[-1] for _, y in seeds])), color=colour, linewidth=0.8, linestyle=":")
    ax.set_title(key, fontsize=9)
    ax.set_xlabel(AXES[axis], fontsize=8)
    ax.set_ylabel(y_label(key, any(is_diffusion(r) for g in groups for r in g.runs)), fontsize=8)
    _scale(ax)
    ax.tick_params(labelsize=7)
    ax.grid(True, which="major", linewidth=0.3, alpha=0.5)


def _scale(ax) -> None:
    """Log y only over a wide range; otherwise linear with several ticks."""
    values = np.concatenate([np.asarray(ln.get_ydata(), dtype=float) for ln in ax.lines if len(ln.get_ydata()) > 1]
                            or [np.array([1.0])])
    values = values[np.isfinite(values)]
    lo, hi = (values.min(), values.max()) if len(values) else (1.0, 1.0)
    if lo > 0 and hi / lo > LOG_SPAN:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(plt.NullFormatter())
    else:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6))


def _plot_axis(groups: list[Group], baseline: int, keys: list[str], axis: str, smoothing: Smoothing,
               path: Path) -> None:
    ncols = min(4, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.4 * nrows), squeeze=False)
    for ax, key in zip(grid.flat, keys):
        _plot_panel(ax, groups, baseline, key, axis, smoothing.factor(key))
    for ax in list(grid.flat)[len(keys):]:
        ax.set_visible(False)
    grid.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
