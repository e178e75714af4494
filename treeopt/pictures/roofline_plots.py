"""Figures for ``treeopt roofline --plot`` and ``treeopt simulate --plot``, like the appendix's.

matplotlib is imported inside each function (Agg backend, no display needed);
every file is written through :func:`treeopt.core.atomic.atomic_path`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from treeopt.cost.roofline import OPERATORS, Ceilings
from treeopt.errors import TreeoptError

PHASE_COLORS = {"prefill": "tab:red", "decode": "tab:blue", "parallel_decode": "tab:green"}
OPERATOR_MARKERS = dict(zip(OPERATORS, "os^vDP*Xhp", strict=False))
# The appendix's setting for the first simulation plot and its sweeps.
OVERVIEW_BATCH = 1
OVERVIEW_CONTEXT = 1024
BATCH_SWEEP_CONTEXT = 1024
CONTEXT_SWEEP_BATCH = 4
SIMULATION_FILES = ("simulate_acceleration.png", "simulate_batch.png", "simulate_context.png")
DPI = 120


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: str | os.PathLike[str]) -> Path:
    from treeopt.core.atomic import atomic_path
    from treeopt.pictures.plots import plot_format

    try:
        fmt = plot_format(path)
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=fmt, dpi=DPI, bbox_inches="tight")
    finally:
        _pyplot().close(figure)
    return Path(path)


def plot_roofline(rows: Sequence[dict[str, Any]], ceiling: Ceilings,
                  path: str | os.PathLike[str], title: str) -> Path:
    """Log-log attainable FLOP/s vs operational intensity with the roofline drawn.

    Filled markers: the model's attainable TFLOP/s; hollow ones (if present):
    ``measured_tflops``. Colour = phase, marker = operator.
    """
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, 5.5))
    intensities = [row["operational_intensity"] for row in rows]
    ridge = ceiling.peak_flops / ceiling.bandwidth
    # Span the points and the ridge, with a factor-2 margin either side.
    low, high = min(*intensities, ridge) / 2, max(*intensities, ridge) * 2
    peak_tflops = ceiling.peak_flops / 1e12
    axes.plot([low, ridge, high], [low * ceiling.bandwidth / 1e12, peak_tflops, peak_tflops],
              color="black", linewidth=1.5,
              label=f"roofline: {ceiling.bandwidth / 1e9:,.0f} GB/s, {peak_tflops:,.0f} TFLOP/s")
    seen: set[tuple[str, str]] = set()
    for row in rows:
        key = (row["operator"], row["phase"])
        style = {"color": PHASE_COLORS[row["phase"]],
                 "marker": OPERATOR_MARKERS.get(row["operator"], "o")}
        axes.scatter(row["operational_intensity"], row["attainable_tflops"], s=28, alpha=0.75,
                     label=None if key in seen else f"{row['operator']} ({row['phase']})",
                     **style)
        if row.get("measured_tflops"):
            axes.scatter(row["operational_intensity"], row["measured_tflops"], s=28,
                         facecolors="none", edgecolors=style["color"], marker=style["marker"])
        seen.add(key)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("operational intensity (FLOPs / byte)")
    axes.set_ylabel("TFLOP/s")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.25)
    axes.legend(fontsize=6, ncol=2, loc="lower right")
    return _save(figure, path)


def _series(rows: Sequence[dict[str, Any]], batch: int, context: int,
            key: str) -> tuple[list[int], list[float]]:
    chosen = sorted((row for row in rows if row["batch"] == batch and row["context"] == context),
                    key=lambda row: row["candidates"])
    return [row["candidates"] for row in chosen], [row[key] for row in chosen]


def _nearest(values: Sequence[int], wanted: int) -> int:
    return min(values, key=lambda value: (abs(value - wanted), value))


def plot_simulation(rows: Sequence[dict[str, Any]], directory: str | os.PathLike[str],
                    title: str) -> list[Path]:
    """The appendix's three simulation figures, as :data:`SIMULATION_FILES` in ``directory``.

    (1) acceleration rate, speedup and normalized latency vs candidates at b=1,
    s=1024; (2) speedup vs candidates per batch at s=1024; (3) speedup vs
    candidates per context at b=4. Where the rows lack that batch or context,
    the nearest one present is used (and named in the title).
    """
    plt = _pyplot()
    batches = sorted({row["batch"] for row in rows})
    contexts = sorted({row["context"] for row in rows})
    if not rows:
        raise TreeoptError("nothing to plot: no setting fits in the GPU's memory")
    from treeopt.core.atomic import output_set

    folder = Path(directory)
    made = not folder.exists()
    try:
        folder.mkdir(exist_ok=True)  # its parent was checked when the option was parsed
    except OSError as exc:
        raise TreeoptError(f"cannot create folder {folder}: {exc.strerror or exc}") from None
    try:
        with output_set():  # the three figures: all written, or none
            return _simulation_figures(plt, rows, batches, contexts, folder, title)
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if still empty: nothing of the user's is removed
        raise


def _simulation_figures(plt: Any, rows: Sequence[dict[str, Any]], batches: list[int],
                        contexts: list[int], folder: Path, title: str) -> list[Path]:
    written = []

    batch, context = _nearest(batches, OVERVIEW_BATCH), _nearest(contexts, OVERVIEW_CONTEXT)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for key, label in (("acceleration_rate", "acceleration rate"), ("speedup", "speedup"),
                       ("overhead", "normalized latency (overhead)")):
        axes.plot(*_series(rows, batch, context, key), marker=".", label=label)
    axes.set_xlabel("candidates q (tokens verified per step, root included)")
    axes.set_title(f"{title}: batch {batch}, context {context}")
    axes.grid(True, alpha=0.3)
    axes.legend()
    written.append(_save(figure, folder / SIMULATION_FILES[0]))

    for index, (fixed_name, fixed, varying_name, varying) in enumerate((
        ("context", _nearest(contexts, BATCH_SWEEP_CONTEXT), "batch", batches),
        ("batch", _nearest(batches, CONTEXT_SWEEP_BATCH), "context", contexts),
    ), start=1):
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for value in varying:
            b, s = (value, fixed) if varying_name == "batch" else (fixed, value)
            axes.plot(*_series(rows, b, s, "speedup"), marker=".", label=f"{varying_name} {value}")
        axes.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        axes.set_xlabel("candidates q (tokens verified per step, root included)")
        axes.set_ylabel("speedup over plain decoding")
        axes.set_title(f"{title}: speedup, {fixed_name} {fixed}")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
        written.append(_save(figure, folder / SIMULATION_FILES[index]))
    return written

