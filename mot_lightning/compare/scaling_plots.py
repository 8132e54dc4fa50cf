"""PNG plots of ``mot compare --scaling`` (``scaling.py``).

- ``scaling.png``: one row per tag; the step-matching fraction s and the final-loss ratio candidate / baseline
  against the backbone's parameters per token and against the baseline's training FLOPs (log x), one line per
  (candidate, baseline) pair with its 95% interval over seed pairs as error bars (none with one pair). A dotted
  line marks 1 (as fast / as low as the baseline). Where only some pairs reached the baseline's final loss, the
  mean of those is drawn hollow and labelled ``k/n``; where none did, a triangle at 1 says "s >= 1 (not
  reached)". Pairs at one size are spread a little along x so their bars do not hide each other.
- ``loss_vs_flops_sizes.png``: one panel per tag, the mean curve over seeds of every arm at every size against
  training FLOPs (log x; the optimizer step when a run did not log FLOPs): one colour per arm, darker and
  thicker with size.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np

from mot_lightning.compare.plots import AXES, group_curves, is_diffusion, y_label
from mot_lightning.compare.report import Smoothing
from mot_lightning.compare.scaling import Arm, ScalingRow, size_labels

X_AXES = {"params": "backbone parameters per token (no embeddings)", "flops": "training FLOPs (baseline)"}
Y_AXES = {"s": "s: steps to the baseline's final loss\n/ the baseline's steps", "ratio": "final loss ratio\n"
          "candidate / baseline"}
SPREAD = 0.04  # relative x offset between the pairs at one size


def plot_scaling(rows: list[ScalingRow], path: Path) -> Path | None:
    """Write ``scaling.png`` (module doc); None when no row has a ratio."""
    rows = [r for r in rows if r.row is not None and r.row.ratio is not None]
    if not rows:
        return None
    tags = list(dict.fromkeys(r.tag for r in rows))
    pairs = list(dict.fromkeys((r.candidate, r.baseline) for r in rows))
    xs = ["params"] + (["flops"] if any(r.flops is not None for r in rows) else [])
    columns = [(x, y) for x in xs for y in ("s", "ratio")]
    fig, grid = plt.subplots(len(tags), len(columns), figsize=(4.2 * len(columns), 3.2 * len(tags)), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, tag in enumerate(tags):
        for j, (x, y) in enumerate(columns):
            ax = grid[i][j]
            for k, pair in enumerate(pairs):
                shift = 1.0 + SPREAD * (k - (len(pairs) - 1) / 2)
                points = [r for r in rows if r.tag == tag and (r.candidate, r.baseline) == pair]
                _pair_line(ax, points, x, y, shift, colours[k % len(colours)], f"{pair[0]} vs {pair[1]}")
            ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
            ax.set_xscale("log")
            ax.set_title(tag, fontsize=9)
            ax.set_xlabel(X_AXES[x], fontsize=8)
            ax.set_ylabel(Y_AXES[y], fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, which="major", linewidth=0.3, alpha=0.5)
    handles, labels = grid[0][0].get_legend_handles_labels()
    if handles:
        grid[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _pair_line(ax, points: list[ScalingRow], x: str, y: str, shift: float, colour: str, label: str) -> None:
    """One pair's points on one panel: intervals where every pair reached (or for the ratio), else markers."""
    full, partial, unreached = [], [], []
    for r in points:
        xv = r.size.params if x == "params" else r.flops
        if xv is None:
            continue
        xv *= shift
        if y == "ratio":
            full.append((xv, r.row.ratio))
            continue
        stat = r.row.s["s_steps"]
        if stat.reached == len(stat.values):
            full.append((xv, stat.interval))
        elif stat.reached:
            partial.append((xv, stat.interval.mean, f"{stat.reached}/{len(stat.values)}"))
        else:
            unreached.append(xv)
    if full:
        full.sort(key=lambda p: p[0])
        xv = np.array([p[0] for p in full])
        mean = np.array([p[1].mean for p in full])
        lo = np.array([p[1].lo if p[1].lo is not None else p[1].mean for p in full])
        hi = np.array([p[1].hi if p[1].hi is not None else p[1].mean for p in full])
        ax.errorbar(xv, mean, yerr=[mean - lo, hi - mean], color=colour, marker="o", markersize=4, capsize=3,
                    linewidth=1.2, label=label)
        label = None
    for xv, mean, text in partial:
        ax.plot([xv], [mean], marker="o", markersize=5, markerfacecolor="none", color=colour, linestyle="none",
                label=label)
        ax.annotate(text, (xv, mean), fontsize=6, color=colour, xytext=(3, 3), textcoords="offset points")
        label = None
    if unreached:
        ax.plot(unreached, [1.0] * len(unreached), marker="^", markersize=6, markerfacecolor="none", color=colour,
                linestyle="none", label=None if label is None else f"{label} (s >= 1: not reached)")


def plot_sizes(arms: list[Arm], tags: list[str], smoothing: Smoothing, path: Path) -> Path | None:
    """Write ``loss_vs_flops_sizes.png`` (module doc); None without a tag."""
    if not tags:
        return None
    runs = [r for a in arms for g in a.sizes.values() for r in g.runs]
    axis = "flops" if all(r.flops is not None for r in runs) else "steps"
    sizes = sorted({s for a in arms for s in a.sizes}, key=lambda s: (s.params, str(s.widths)))
    labels = size_labels(sizes)
    ncols = min(3, len(tags))
    nrows = math.ceil(len(tags) / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.8 * nrows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, tag in zip(grid.flat, tags):
        for i, arm in enumerate(arms):
            for size, group in arm.sizes.items():
                if not any(tag in r.scalars for r in group.runs):
                    continue
                _, xs, ys = group_curves(group, tag, axis, smoothing.factor(tag))
                keep = xs > 0 if axis == "flops" else np.ones_like(xs, dtype=bool)
                depth = (sizes.index(size) + 1) / len(sizes)  # 1 for the largest size
                ax.plot(xs[keep], ys.mean(axis=0)[keep], color=colours[i % len(colours)], alpha=0.3 + 0.7 * depth,
                        linewidth=0.7 + 1.6 * depth, label=f"{arm.label} {labels[size]} ({len(ys)} seeds)")
        ax.set_title(tag, fontsize=9)
        ax.set_xlabel(AXES[axis], fontsize=8)
        ax.set_ylabel(y_label(tag, any(is_diffusion(r) for r in runs)), fontsize=8)
        if axis == "flops":
            ax.set_xscale("log")
        ax.tick_params(labelsize=7)
        ax.grid(True, which="major", linewidth=0.3, alpha=0.5)
    for ax in list(grid.flat)[len(tags):]:
        ax.set_visible(False)
    grid.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
