"""Heatmaps of predicted tokens/s over an engine's knob grid, one panel per batch size."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from treeopt.core.atomic import atomic_path
from treeopt.pictures.plots import DPI, plot_format


def plot_knob_heatmap(choices: Sequence[object], path: str | os.PathLike[str], title: str
                      ) -> Path:
    """Per batch size (a ``BatchChoice``), predicted tokens/s over steps (rows) x topk
    (columns), each cell the best over TOKENS; the chosen setting is starred, a batch
    where speculation does not pay says so. Written atomically; returns the path."""
    target = Path(path)
    fmt = plot_format(target)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axes = plt.subplots(1, len(choices), squeeze=False,
                                figsize=(3.6 * len(choices), 3.4))
    try:
        for axis, choice in zip(axes[0], choices, strict=True):
            points = choice.points  # type: ignore[attr-defined]
            steps = max(p.setting.steps for p in points)
            topk = max(p.setting.topk for p in points)
            grid = np.full((steps, topk), np.nan)
            for p in points:
                cell = (p.setting.steps - 1, p.setting.topk - 1)
                grid[cell] = np.fmax(grid[cell], p.tokens_per_second)
            image = axis.imshow(grid, origin="lower", aspect="auto", cmap="viridis",
                                extent=(0.5, topk + 0.5, 0.5, steps + 0.5))
            figure.colorbar(image, ax=axis, fraction=0.046, label="tokens/s (predicted)")
            best = choice.best  # type: ignore[attr-defined]
            if best is not None:
                axis.plot([best.topk], [best.steps], marker="*", markersize=14,
                          color="red", linestyle="none")
                label = f"best dynamic:{best}"
            else:
                label = "speculation off (nothing beats plain decoding)"
            axis.set_title(f"batch {choice.batch}: {label}", fontsize="small")  # type: ignore[attr-defined]
            axis.set_xlabel("TOPK")
            axis.set_ylabel("STEPS")
        figure.suptitle(title, fontsize="small")
        figure.tight_layout()
        with atomic_path(target) as tmp:
            figure.savefig(tmp, format=fmt, dpi=DPI)
    finally:
        plt.close(figure)
    return target
