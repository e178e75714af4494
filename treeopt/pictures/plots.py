"""Curve plots: expected accept length, step overhead and speedup against budget.

The rows come from a ``treeopt.curve/1`` file (``treeopt build --curve``,
``treeopt tune --curve``): each has ``num_tokens`` and ``expected_accept_length``
and may have ``latency_s``, ``overhead`` and ``speedup``. A row may be a mapping
or an object with those attributes. matplotlib is imported inside
:func:`plot_curve` (with the non-interactive Agg backend) so importing this
module costs nothing.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from treeopt.core.atomic import atomic_path, check_output_path
from treeopt.errors import TreeoptError

PLOT_FORMATS = ("svg", "png", "pdf")
PANEL_WIDTH_IN = 6.4  # one column of a README or paper at readable font sizes
PANEL_HEIGHT_IN = 2.6
DPI = 150  # PNG resolution: crisp on high-density screens, still a small file
LINE_COLOUR = "#0072b2"  # Okabe-Ito blue, as in render's comparison legend
BEST_COLOUR = "#d55e00"  # Okabe-Ito vermillion: the best budget stands out
MARKER_SIZE = 3
TITLE_WRAP_CHARS = 60  # about what fits across PANEL_WIDTH_IN at the default title size
BEST_MARKER_SIZE = 12  # the star must read as a highlight over the line markers

# (field, y-axis label) of each panel, top to bottom; a panel is drawn only when
# some row has a value for its field. Accept length is always there; latency only
# when there is no overhead (overhead is the same curve, normalised).
PANELS = (
    ("expected_accept_length", "expected accept length\n(tokens/step)"),
    ("overhead", "step overhead\n(x plain decoding step)"),
    ("latency_s", "step latency (s)"),
    ("speedup", "speedup"),
)


def row_value(row: object, field: str) -> float | None:
    """``field`` of a curve row (mapping or object) as a float; None if absent or null."""
    value = row.get(field) if isinstance(row, Mapping) else getattr(row, field, None)
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def curve_series(rows: Iterable[object], field: str) -> tuple[list[int], list[float]]:
    """(num_tokens, value) pairs of the rows that have ``field``, by num_tokens."""
    pairs = []
    for row in rows:
        budget, value = row_value(row, "num_tokens"), row_value(row, field)
        if budget is not None and value is not None:
            pairs.append((int(budget), value))
    pairs.sort()
    return [budget for budget, _ in pairs], [value for _, value in pairs]


def plot_format(path: str | os.PathLike[str]) -> str:
    """The picture format of ``path`` by its extension (``png``, ``svg``, ``pdf``, ...).

    One-line TreeoptError for any other extension, or a path that cannot be an
    output file; verbs call it before any work.
    """
    target = check_output_path(path)
    fmt = target.suffix.lower().lstrip(".")
    if fmt not in PLOT_FORMATS:
        choices = ", ".join(f".{name}" for name in PLOT_FORMATS)
        raise TreeoptError(f"cannot tell the plot format of {target}: end it in {choices}")
    return fmt


def plot_curve(rows: Sequence[object], path: str | os.PathLike[str], title: str) -> Path:
    """Plot accept length (and overhead, speedup when present) against num_tokens.

    One panel per quantity, sharing the budget axis; the best speedup is marked.
    The format follows ``path``'s extension (.svg, .png, .pdf); the file is
    written atomically and its path returned. Raises TreeoptError for an empty
    curve or an unknown extension.
    """
    target = Path(path)
    fmt = plot_format(target)
    panels = [
        (field, label, *curve_series(rows, field))
        for field, label in PANELS
    ]
    panels = [panel for panel in panels if panel[2]]
    if any(panel[0] == "overhead" for panel in panels):
        panels = [panel for panel in panels if panel[0] != "latency_s"]
    if not panels or panels[0][0] != "expected_accept_length":
        raise TreeoptError("the curve has no rows with num_tokens and expected_accept_length")

    import matplotlib

    matplotlib.use("Agg")  # files only; never try to open a window
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(
        len(panels), 1, sharex=True, squeeze=False,
        figsize=(PANEL_WIDTH_IN, PANEL_HEIGHT_IN * len(panels)),
    )
    try:
        for axis, (field, label, budgets, values) in zip(axes[:, 0], panels, strict=True):
            axis.plot(budgets, values, marker="o", markersize=MARKER_SIZE, color=LINE_COLOUR)
            axis.set_ylabel(label)
            axis.grid(True, alpha=0.3)
            if field == "speedup":
                best = max(range(len(values)), key=values.__getitem__)
                axis.plot([budgets[best]], [values[best]], marker="*", markersize=BEST_MARKER_SIZE,
                          color=BEST_COLOUR, linestyle="none",
                          label=f"best: {values[best]:.2f}x at {budgets[best]} tokens")
                axis.legend(loc="best", fontsize="small")
        axes[-1, 0].set_xlabel("tokens verified per step (budget, root included)")
        axes[0, 0].set_title(textwrap.fill(title, TITLE_WRAP_CHARS))
        figure.tight_layout()
        with atomic_path(target) as tmp:
            figure.savefig(tmp, format=fmt, dpi=DPI)
    finally:
        plt.close(figure)
    return target
