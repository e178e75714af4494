"""Tree pictures: a :class:`Tree` (and optionally each node's acceptance probability)
as graphviz DOT source, and DOT source as SVG/PNG/PDF.

Building DOT is pure and needs nothing but the standard library, so it is what the
tests check; only :func:`render_dot` touches graphviz (the Python package and the
``dot`` binary), imported inside it so ``import treeopt.cli`` stays light.

Layout: the root is at the left (``rankdir=LR``) and each node's children are
emitted in rank order with ``ordering=out``, so rank 0 is always the top child:
the high-probability branches lean to the top, as in the Medusa paper's figure.
A node at depth ``d`` came from Medusa head ``d`` and is labelled ``h<d> r<rank>``.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path as FilePath

from treeopt.core.atomic import atomic_path, atomic_write_text
from treeopt.core.tree import ROOT, Path, Tree, canonical_key, format_path
from treeopt.errors import TreeoptError

# Output formats graphviz renders for us; ".dot" is written as text without it.
PICTURE_FORMATS = ("svg", "png", "pdf")
DOT_FORMAT = "dot"

# Beyond about this many nodes a page-wide picture's labels become unreadable.
DEFAULT_MAX_NODES = 100

INSTALL_HINT = (
    "install it with apt-get install graphviz (Debian/Ubuntu), brew install graphviz (macOS) "
    "or conda install -c conda-forge graphviz"
)

FONT = "Helvetica"
# A light-to-dark sequential ramp (ColorBrewer YlGnBu): likelier nodes are darker,
# so the eye lands on the branches that pay off.
PROBABILITY_RAMP = ("#ffffd9", "#c7e9b4", "#41b6c4", "#225ea8", "#081d58")
# Relative luminance below which white text reads better than black on the fill.
DARK_FILL_LUMINANCE = 0.4
# Node probabilities span orders of magnitude (a 64-node tree's leaves sit near
# 0.1%, head 1's top token near 60%), so colour and size follow log10(p) from
# this floor to 1: each decade gets the same share of the ramp.
LOG_SCALE_FLOOR = 0.001
LEGEND_PROBABILITIES = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # colour key swatches
SWATCH_WIDTH_PT = 36  # narrowest key cell: "100%" at LEGEND_FONT_PT plus padding
SWATCH_HEIGHT_PT = 16
SWATCH_SPACING_PT = 2
SWATCH_BORDER_PT = 1
SWATCH_PAD_PT = 8  # room either side of a key cell's text
APPROX_CHAR_WIDTH_PT = 6.0  # Helvetica at 10 pt averages ~5.5 pt a character; err wide
LEGEND_FONT_PT = 10  # the same size as node labels
PLAIN_FILL = "#eeeeee"  # nodes when no profile gives probabilities
ROOT_FILL = "#555555"  # the root is always accepted; it is not a guess
ROOT_FONT_COLOUR = "#ffffff"
HIDDEN_FILL = "#ffffff"  # "+k hidden" placeholders: outlined, not filled
HIDDEN_BORDER = "#999999"
# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
BOTH_FILL = "#d0d0d0"
FIRST_ONLY_FILL = "#e69f00"
SECOND_ONLY_FILL = "#56b4e9"
SMALLEST_SHOWN_PROBABILITY = 0.001  # 0.1%: the resolution of a one-decimal percent
# Node width in inches for probability 0 and 1 (area grows with probability).
MIN_NODE_WIDTH = 0.55
MAX_NODE_WIDTH = 1.25


@dataclass(frozen=True)
class DotPicture:
    """DOT source plus what it left out.

    Attributes:
        source: the DOT text.
        shown: non-root nodes drawn as themselves.
        hidden: non-root nodes folded into ``+k hidden`` placeholders.
    """

    source: str
    shown: int
    hidden: int

    def hidden_note(self, what: str = "nodes") -> str | None:
        """A one-line account of what was hidden, or None when nothing was."""
        if not self.hidden:
            return None
        return (
            f"hid {self.hidden} of {self.shown + self.hidden} {what} to keep the picture "
            f"readable (each '+k hidden' box is a collapsed subtree; raise --max-nodes to see all)"
        )


# ------------------------------------------------------------------ selection
def visible_paths(
    paths: Sequence[Path],
    max_nodes: int | None,
    probabilities: Mapping[Path, float] | None = None,
) -> set[Path]:
    """The at most ``max_nodes`` paths to draw, closed under ancestors.

    With probabilities the most probable paths win (ties in canonical order);
    without, the first in canonical order (shallow, low-rank first). A path is
    only kept together with all its ancestors, so what is drawn is a tree.
    ``None`` keeps everything.
    """
    if max_nodes is None or max_nodes >= len(paths):
        return set(paths)
    if probabilities is None:
        order = sorted(paths, key=canonical_key)
    else:
        order = sorted(paths, key=lambda p: (-probabilities.get(p, 0.0), canonical_key(p)))
    kept: set[Path] = set()
    for path in order:
        missing = [path[:end] for end in range(1, len(path) + 1) if path[:end] not in kept]
        if len(kept) + len(missing) <= max_nodes:
            kept.update(missing)
        if len(kept) == max_nodes:
            break
    return kept


def hidden_counts(paths: Iterable[Path], kept: set[Path]) -> dict[Path, int]:
    """For each drawn node (root included) the number of hidden nodes below it.

    Only hidden nodes whose nearest drawn ancestor is that node count, so the
    numbers add up to the total hidden.
    """
    counts: dict[Path, int] = {}
    for path in paths:
        if path in kept:
            continue
        anchor = path[:-1]
        while anchor != ROOT and anchor not in kept:
            anchor = anchor[:-1]
        counts[anchor] = counts.get(anchor, 0) + 1
    return counts


# ------------------------------------------------------------------ colours
def _hex_to_rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def probability_position(probability: float) -> float:
    """Where ``probability`` falls on the log-scaled ramp: 0 at or below
    LOG_SCALE_FLOOR (and for 0), 1 at probability 1, linear in log10 between."""
    if probability <= LOG_SCALE_FLOOR:
        return 0.0
    return min(math.log10(probability / LOG_SCALE_FLOOR) / -math.log10(LOG_SCALE_FLOOR), 1.0)


def probability_colour(probability: float) -> str:
    """The ramp colour (``#rrggbb``) for a probability, on the log scale."""
    position = probability_position(probability) * (len(PROBABILITY_RAMP) - 1)
    low = min(int(position), len(PROBABILITY_RAMP) - 2)
    fraction = position - low
    a, b = _hex_to_rgb(PROBABILITY_RAMP[low]), _hex_to_rgb(PROBABILITY_RAMP[low + 1])
    mixed = (round(x + (y - x) * fraction) for x, y in zip(a, b, strict=True))
    return "#" + "".join(f"{channel:02x}" for channel in mixed)


def text_colour(fill: str) -> str:
    """Black or white, whichever reads better on ``fill``."""
    r, g, b = (channel / 255 for channel in _hex_to_rgb(fill))
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "#ffffff" if luminance < DARK_FILL_LUMINANCE else "#000000"


def node_width(probability: float) -> float:
    """Node width in inches, growing with the probability on the same log scale."""
    position = probability_position(probability)
    return round(MIN_NODE_WIDTH + (MAX_NODE_WIDTH - MIN_NODE_WIDTH) * position, 3)


# ------------------------------------------------------------------ DOT text
def node_id(path: Path) -> str:
    """A DOT identifier for a path: ``root``, ``n0_2`` for ``(0, 2)``."""
    return "root" if path == ROOT else "n" + "_".join(str(rank) for rank in path)


def format_probability(probability: float) -> str:
    """A percent with one decimal; ``0%`` only when exactly zero (e.g. a rank the
    profile never recorded), ``<0.1%`` for a small but real chance."""
    if probability == 0:
        return "0%"
    if probability < SMALLEST_SHOWN_PROBABILITY:
        return f"<{SMALLEST_SHOWN_PROBABILITY:.1%}"
    return f"{probability:.1%}"


def node_label(path: Path, probability: float | None = None) -> str:
    """``h<head> r<rank>`` (head = depth), plus the probability when known."""
    if path == ROOT:
        return "root"
    label = f"h{len(path)} r{path[-1]}"
    if probability is not None:
        label += "\n" + format_probability(probability)
    return label


def _quote(value: object) -> str:
    """A DOT double-quoted string (HTML labels are passed pre-wrapped in <...>)."""
    text = str(value)
    if text.startswith("<") and text.endswith(">"):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _attrs(attributes: Mapping[str, object]) -> str:
    return ", ".join(f"{key}={_quote(value)}" for key, value in attributes.items())


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _graph_label(title: str | None, legend: str | None) -> str | None:
    """An HTML-like graph label: the title over the legend, both at the top.

    Each sits in its own one-cell row so the legend keeps its natural width
    instead of stretching to the title's.
    """
    rows = []
    if title:
        rows.append(f"<tr><td><b>{_html_escape(title)}</b></td></tr>")
    if legend:
        rows.append(f'<tr><td align="center">{legend}</td></tr>')
    if not rows:
        return None
    return '<<table border="0" cellspacing="0" cellpadding="2">' + "".join(rows) + "</table>>"


def _swatches(entries: Sequence[tuple[str, str]], caption: str | None = None) -> str:
    """A compact table of equal coloured cells, each holding its text, under an
    optional caption.

    Graphviz stretches a table inside a label to the widest row (the title), so
    the table gets an explicit size computed from its cells' estimated width.
    """
    longest = max(len(text) for text, _ in entries)
    cell_width = max(SWATCH_WIDTH_PT, math.ceil(longest * APPROX_CHAR_WIDTH_PT) + SWATCH_PAD_PT)
    rows = 2 if caption else 1
    # Each cell adds its border on both sides to the width it asks for.
    width = len(entries) * (cell_width + 2 * SWATCH_BORDER_PT) + (
        len(entries) + 1
    ) * SWATCH_SPACING_PT
    height = rows * (SWATCH_HEIGHT_PT + 2 * SWATCH_BORDER_PT) + (rows + 1) * SWATCH_SPACING_PT
    cells = "".join(
        f'<td bgcolor="{fill}" border="{SWATCH_BORDER_PT}" width="{cell_width}" '
        f'height="{SWATCH_HEIGHT_PT}">'
        f'<font color="{text_colour(fill)}" point-size="{LEGEND_FONT_PT}">'
        f"{_html_escape(text)}</font></td>"
        for text, fill in entries
    )
    head = (
        f'<tr><td colspan="{len(entries)}"><font point-size="{LEGEND_FONT_PT}">'
        f"{_html_escape(caption)}</font></td></tr>"
        if caption else ""
    )
    return (
        f'<table border="0" cellspacing="{SWATCH_SPACING_PT}" cellpadding="0" '
        f'fixedsize="true" width="{width}" height="{height}">{head}<tr>{cells}</tr></table>'
    )


def _probability_legend() -> str:
    """The colour key: swatches at 0.1%, 0.3%, 1%, ... 100%."""
    entries = [
        (f"{p:.1%}".replace(".0%", "%"), probability_colour(p)) for p in LEGEND_PROBABILITIES
    ]
    return _swatches(entries, "P(node accepted), log scale")


def _dot_document(
    paths: Sequence[Path],
    node_style: Mapping[Path, dict[str, object]],
    kept: set[Path],
    graph_label: str | None,
) -> str:
    """Assemble DOT: header, drawn nodes, placeholders and edges in rank order."""
    lines = [
        "digraph tree {",
        '  graph [rankdir="LR", ordering="out", nodesep="0.08", ranksep="0.35", '
        f'fontname="{FONT}", labelloc="t"'
        + (f", label={graph_label}" if graph_label else "")
        + "];",
        f'  node [shape="box", style="rounded,filled", fontname="{FONT}", fontsize="10", '
        'height="0.3", margin="0.05,0.02"];',
        '  edge [arrowsize="0.5", color="#777777"];',
        f"  {node_id(ROOT)} [{_attrs(node_style[ROOT])}];",
    ]
    drawn = [path for path in paths if path in kept]
    for path in drawn:
        lines.append(f"  {node_id(path)} [{_attrs(node_style[path])}];")
    hidden = hidden_counts(paths, kept)
    for anchor, count in sorted(hidden.items(), key=lambda item: canonical_key(item[0])):
        attributes = {
            "label": f"+{count} hidden",
            "style": "rounded,dashed",
            "color": HIDDEN_BORDER,
            "fontcolor": HIDDEN_BORDER,
            "fillcolor": HIDDEN_FILL,
        }
        lines.append(f"  hidden_{node_id(anchor)} [{_attrs(attributes)}];")
    # Edges parent by parent, children by rank: with ordering=out this fixes the
    # vertical order, rank 0 on top. A placeholder comes after its siblings.
    parents = [ROOT, *drawn]
    for parent in parents:
        for child in sorted((p for p in drawn if p[:-1] == parent), key=canonical_key):
            lines.append(f"  {node_id(parent)} -> {node_id(child)};")
        if parent in hidden:
            lines.append(f'  {node_id(parent)} -> hidden_{node_id(parent)} [style="dashed"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _root_style() -> dict[str, object]:
    return {
        "label": node_label(ROOT),
        "shape": "circle",
        "fillcolor": ROOT_FILL,
        "fontcolor": ROOT_FONT_COLOUR,
    }


def tree_to_dot(
    tree: Tree,
    probabilities: Mapping[Path, float] | None = None,
    title: str | None = None,
    max_nodes: int | None = None,
) -> DotPicture:
    """DOT source drawing ``tree``; pure.

    Every drawn node is labelled ``h<depth> r<rank>``. With ``probabilities`` (P of
    the node's path being accepted, per path) each node also shows it as a percent,
    is coloured by it on a light-to-dark ramp and sized by it, and a colour key is
    drawn under the title. ``max_nodes`` keeps at most that many nodes (see
    :func:`visible_paths`) and folds the rest into one ``+k hidden`` box per drawn
    parent. Raises TreeoptError if ``probabilities`` misses a path of the tree.
    """
    if probabilities is not None:
        missing = [path for path in tree.paths if path not in probabilities]
        if missing:
            raise TreeoptError(f"no acceptance probability for path {format_path(missing[0])}")
    kept = visible_paths(tree.paths, max_nodes, probabilities)
    styles: dict[Path, dict[str, object]] = {ROOT: _root_style()}
    for path in tree.paths:
        if probabilities is None:
            styles[path] = {"label": node_label(path), "fillcolor": PLAIN_FILL}
            continue
        p = probabilities[path]
        fill = probability_colour(p)
        styles[path] = {
            "label": node_label(path, p),
            "fillcolor": fill,
            "fontcolor": text_colour(fill),
            "width": node_width(p),
        }
    legend = _probability_legend() if probabilities is not None else None
    source = _dot_document(tree.paths, styles, kept, _graph_label(title, legend))
    return DotPicture(source, shown=len(kept), hidden=len(tree) - len(kept))


@dataclass(frozen=True)
class Comparison:
    """How two trees' node sets overlap."""

    both: frozenset[Path]
    first_only: frozenset[Path]
    second_only: frozenset[Path]


def compare_trees(first: Tree, second: Tree) -> Comparison:
    """Split the union of two trees' paths into in-both / first-only / second-only."""
    a, b = set(first.paths), set(second.paths)
    return Comparison(frozenset(a & b), frozenset(a - b), frozenset(b - a))


def comparison_to_dot(
    first: Tree,
    second: Tree,
    names: tuple[str, str] = ("first", "second"),
    probabilities: Mapping[Path, float] | None = None,
    title: str | None = None,
    max_nodes: int | None = None,
) -> DotPicture:
    """DOT source drawing the union of two trees, coloured by membership; pure.

    Grey nodes are in both trees, orange only in ``names[0]``, blue only in
    ``names[1]``; the legend gives each group's count. With ``probabilities``
    (covering the union) nodes also show and are sized by their probability.
    """
    comparison = compare_trees(first, second)
    union = sorted(comparison.both | comparison.first_only | comparison.second_only,
                   key=canonical_key)
    if probabilities is not None:
        missing = [path for path in union if path not in probabilities]
        if missing:
            raise TreeoptError(f"no acceptance probability for path {format_path(missing[0])}")
    fills = {
        **{path: BOTH_FILL for path in comparison.both},
        **{path: FIRST_ONLY_FILL for path in comparison.first_only},
        **{path: SECOND_ONLY_FILL for path in comparison.second_only},
    }
    styles: dict[Path, dict[str, object]] = {ROOT: _root_style()}
    for path in union:
        p = None if probabilities is None else probabilities[path]
        styles[path] = {
            "label": node_label(path, p),
            "fillcolor": fills[path],
            "fontcolor": text_colour(fills[path]),
        }
        if p is not None:
            styles[path]["width"] = node_width(p)
    legend = _swatches([
        (f"in both: {len(comparison.both)}", BOTH_FILL),
        (f"only {names[0]}: {len(comparison.first_only)}", FIRST_ONLY_FILL),
        (f"only {names[1]}: {len(comparison.second_only)}", SECOND_ONLY_FILL),
    ])
    kept = visible_paths(union, max_nodes, probabilities)
    source = _dot_document(union, styles, kept, _graph_label(title, legend))
    return DotPicture(source, shown=len(kept), hidden=len(union) - len(kept))


# ------------------------------------------------------------------ rendering
@dataclass(frozen=True)
class RenderOutcome:
    """What :func:`render_dot` wrote.

    Attributes:
        written: the file written (the picture, or the ``.dot`` fallback).
        fell_back: True when a picture was asked for but graphviz's ``dot`` was
            missing, so only the DOT source was written.
    """

    written: FilePath
    fell_back: bool


def output_format(output: str | os.PathLike[str]) -> str:
    """The format named by ``output``'s extension, or a TreeoptError listing the choices."""
    suffix = FilePath(output).suffix.lower().lstrip(".")
    if suffix not in (*PICTURE_FORMATS, DOT_FORMAT):
        choices = ", ".join(f".{fmt}" for fmt in (*PICTURE_FORMATS, DOT_FORMAT))
        raise TreeoptError(f"cannot tell the picture format of {output}: end it in {choices}")
    return suffix


def render_dot(source: str, output: str | os.PathLike[str]) -> RenderOutcome:
    """Write ``source`` to ``output`` in the format its extension names, atomically.

    ``.dot`` is written as text. For ``.svg``/``.png``/``.pdf`` graphviz's ``dot``
    lays it out; if ``dot`` is not installed the DOT text goes to ``output`` with
    a ``.dot`` extension instead and ``fell_back`` is set (never an exception).
    A ``dot`` failure on the source is a TreeoptError carrying its first line.
    """
    target = FilePath(output)
    fmt = output_format(target)
    if fmt == DOT_FORMAT:
        atomic_write_text(target, source)
        return RenderOutcome(target, fell_back=False)
    fallback = target.with_suffix("." + DOT_FORMAT)
    if shutil.which("dot") is None:
        atomic_write_text(fallback, source)
        return RenderOutcome(fallback, fell_back=True)
    import graphviz

    try:
        data = graphviz.Source(source).pipe(format=fmt, quiet=True)
    except graphviz.ExecutableNotFound:
        atomic_write_text(fallback, source)
        return RenderOutcome(fallback, fell_back=True)
    except subprocess.CalledProcessError as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        first_line = (stderr.strip().splitlines() or [str(exc)])[0]
        raise TreeoptError(f"graphviz could not render {target}: {first_line}") from None
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return RenderOutcome(target, fell_back=False)
