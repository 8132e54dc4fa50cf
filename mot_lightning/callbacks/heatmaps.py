"""A modality x modality attention-share heatmap as a matplotlib figure (TensorBoard images, ``mot compare``)."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files and TensorBoard only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def share_heatmap(share: np.ndarray, labels: Sequence[str], title: str, ax=None):
    """Draw ``share[query, key]`` (rows: query modality, columns: key modality, values in [0, 1]) with each
    cell's value written in it; -> the figure (a new one unless ``ax`` is given)."""
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(labels), 1.0 + 0.8 * len(labels)), dpi=100)
    ax.imshow(share, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    ax.set_title(title, fontsize=9)
    for q in range(share.shape[0]):
        for k in range(share.shape[1]):
            value = share[q, k]
            text = "-" if np.isnan(value) else f"{value:.2f}"
            ax.text(k, q, text, ha="center", va="center", color="white" if value < 0.6 else "black", fontsize=8)
    return fig if fig is not None else ax.figure
