"""The diagnostics section of ``mot compare`` (the ``diag/`` tags of ``callbacks/``; docs/diagnostics.md).

For every group, at each run's last logged point, averaged over its seeds (± the standard deviation over seeds):

- ``diagnostics.md``: the attention shares (``diag/attn/<query>_to_<key>/layer<i>``) as one query x key table
  per layer with the groups side by side; the per-tower update ratio, gradient norm and QK-logit scale;
  the router health; the loss by noise level (``val/<set>/loss_image_t<k>``);
- ``attention_maps.png``: the attention-share heatmaps, one column per group, one row per layer;
- ``tower_curves.png``: ``diag/update_ratio/<tower>/<component>`` and ``diag/grad_norm/...`` against steps,
  one panel per component, mean over seeds per (group, tower).

Nothing is written when no run logged a ``diag/`` tag.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mot_lightning.compare.groups import Group

ATTN = re.compile(r"^diag/attn/(\w+)_to_(\w+)/layer(\d+)$")
NOISE_BIN = re.compile(r"^val/(?:(.+)/)?loss_image_t(\d+)$")
PER_TOWER = ("diag/update_ratio/", "diag/grad_norm/", "diag/qk_logit_max/", "diag/tokens/", "diag/router/")


def has_diagnostics(groups: list[Group]) -> bool:
    return any(t.startswith("diag/") or NOISE_BIN.match(t) for g in groups for r in g.runs for t in r.scalars)


def finals(group: Group, tag: str) -> np.ndarray:
    """The last logged value of ``tag`` in each run of the group that has it."""
    return np.array([r.scalars[tag].values[-1] for r in group.runs if tag in r.scalars])


def _cell(values: np.ndarray) -> str:
    if not len(values):
        return "-"
    return f"{values.mean():.4g}" + (f" ± {values.std(ddof=1):.2g}" if len(values) > 1 else "")


def attention_tables(groups: list[Group]) -> tuple[list[str], dict[int, dict[str, np.ndarray]]]:
    """(modality labels, {layer: {group label: mean share float[M, M]}}) over the groups' seeds."""
    tags = {t for g in groups for r in g.runs for t in r.scalars if ATTN.match(t)}
    labels = sorted({m for t in tags for m in ATTN.match(t).groups()[:2]}, key=["text", "image", "speech"].index)
    layers = sorted({int(ATTN.match(t).group(3)) for t in tags})
    out: dict[int, dict[str, np.ndarray]] = {}
    for layer in layers:
        for g in groups:
            table = np.full((len(labels), len(labels)), np.nan)
            for a, qa in enumerate(labels):
                for b, kb in enumerate(labels):
                    values = finals(g, f"diag/attn/{qa}_to_{kb}/layer{layer}")
                    table[a, b] = values.mean() if len(values) else np.nan
            out.setdefault(layer, {})[g.label] = table
    return labels, out


def section(groups: list[Group]) -> str:
    """The markdown section."""
    lines = ["## Diagnostics", "", "Last logged value of each run, mean ± sd over seeds (docs/diagnostics.md)."]
    labels, tables = attention_tables(groups)
    for layer, by_group in tables.items():
        lines += ["", f"Attention shares, layer {layer} (query -> key, normalised per allowed key):", "",
                  "| query -> key | " + " | ".join(g.label for g in groups) + " |",
                  "|---|" + "---|" * len(groups)]
        for a, qa in enumerate(labels):
            for b, kb in enumerate(labels):
                cells = [_cell(finals(g, f"diag/attn/{qa}_to_{kb}/layer{layer}")) for g in groups]
                if set(cells) != {"-"}:
                    lines.append(f"| {qa} -> {kb} | " + " | ".join(cells) + " |")
    scalar_tags = sorted({t for g in groups for r in g.runs for t in r.scalars
                          if t.startswith(PER_TOWER) or NOISE_BIN.match(t)})
    if scalar_tags:
        lines += ["", "| tag | " + " | ".join(g.label for g in groups) + " |", "|---|" + "---|" * len(groups)]
        lines += [f"| {t} | " + " | ".join(_cell(finals(g, t)) for g in groups) + " |" for t in scalar_tags]
    return "\n".join(lines) + "\n"


def plot_diagnostics(groups: list[Group], out: Path) -> list[Path]:
    """Write ``attention_maps.png`` and ``tower_curves.png`` (each only when its tags exist)."""
    import matplotlib.pyplot as plt

    from mot_lightning.callbacks.heatmaps import share_heatmap

    written = []
    labels, tables = attention_tables(groups)
    if tables:
        fig, axes = plt.subplots(len(tables), len(groups), figsize=(3.2 * len(groups), 2.8 * len(tables)),
                                 squeeze=False)
        for row, (layer, by_group) in enumerate(tables.items()):
            for col, g in enumerate(groups):
                share_heatmap(by_group[g.label], labels, f"{g.label}: layer {layer}", ax=axes[row][col])
        fig.tight_layout()
        written.append(out / "attention_maps.png")
        fig.savefig(written[-1])
        plt.close(fig)
    if _tower_curves(groups, out / "tower_curves.png"):
        written.append(out / "tower_curves.png")
    return written


def _tower_curves(groups: list[Group], path: Path) -> bool:
    import matplotlib.pyplot as plt

    kinds = ("update_ratio", "grad_norm")
    tags = sorted({t for g in groups for r in g.runs for t in r.scalars
                   if t.startswith(tuple(f"diag/{k}/" for k in kinds))})
    components = sorted({t.split("/")[3] for t in tags})
    if not components:
        return False
    fig, axes = plt.subplots(len(kinds), len(components), figsize=(3.6 * len(components), 5.6), squeeze=False)
    styles = ["-", "--", ":", "-."]
    for r, kind in enumerate(kinds):
        for c, component in enumerate(components):
            ax = axes[r][c]
            for gi, g in enumerate(groups):
                for tag in [t for t in tags if t.split("/")[1] == kind and t.split("/")[3] == component]:
                    series = [run.scalars[tag] for run in g.runs if tag in run.scalars]
                    if not series:  # a tower of another group (dense has only "shared")
                        continue
                    steps = series[0].steps
                    mean = np.mean([np.interp(steps, s.steps, s.values) for s in series], axis=0)
                    ax.plot(steps, mean, styles[gi % len(styles)], label=f"{g.label}: {tag.split('/')[2]}")
            ax.set_title(f"{kind} / {component}", fontsize=9)
            ax.set_xlabel("optimizer step")
            ax.set_yscale("log")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
