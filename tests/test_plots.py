"""Curve plots: which panels are drawn, files produced, bad input refused."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from typer.testing import CliRunner

from treeopt.cli import app
from treeopt.errors import TreeoptError
from treeopt.files.curve_file import write_curve
from treeopt.pictures.plots import curve_series, plot_curve, row_value
from treeopt.workflows.pictures import curve_title

FULL_ROWS = [
    {"num_tokens": n, "expected_accept_length": 1 + 0.5 * (n - 1) ** 0.5,
     "latency_s": 0.02 + 0.001 * n, "overhead": 1 + 0.05 * n,
     "speedup": (1 + 0.5 * (n - 1) ** 0.5) / (1 + 0.05 * n)}
    for n in range(1, 17)
]


@dataclass
class Row:
    num_tokens: int
    expected_accept_length: float
    speedup: float | None = None


def test_series_are_sorted_and_skip_missing_values():
    rows = [Row(3, 2.0), Row(1, 1.0, 1.0), {"num_tokens": 2, "expected_accept_length": 1.5}]
    assert curve_series(rows, "expected_accept_length") == ([1, 2, 3], [1.0, 1.5, 2.0])
    assert curve_series(rows, "speedup") == ([1], [1.0])
    assert row_value({"speedup": float("nan")}, "speedup") is None


def count_panels(svg: str) -> int:
    # matplotlib gives every Axes an id "axes_<n>" in SVG output.
    return svg.count('id="axes_')


def test_full_curve_draws_accept_overhead_and_speedup(tmp_path):
    out = plot_curve(FULL_ROWS, tmp_path / "c.svg", "full")
    svg = out.read_text()
    assert count_panels(svg) == 3  # latency is left out when overhead is there
    assert "best:" in svg


def test_accept_only_curve_draws_one_panel(tmp_path):
    rows = [{k: r[k] for k in ("num_tokens", "expected_accept_length")} for r in FULL_ROWS]
    svg = plot_curve(rows, tmp_path / "c.svg", "accept").read_text()
    assert count_panels(svg) == 1


@pytest.mark.parametrize(("suffix", "magic"), [(".png", b"\x89PNG"), (".pdf", b"%PDF")])
def test_raster_and_pdf(tmp_path, suffix, magic):
    out = plot_curve(FULL_ROWS, tmp_path / f"c{suffix}", "t")
    assert out.read_bytes().startswith(magic)


def test_bad_input(tmp_path):
    with pytest.raises(TreeoptError, match="end it in"):
        plot_curve(FULL_ROWS, tmp_path / "c.txt", "t")
    with pytest.raises(TreeoptError, match="no rows"):
        plot_curve([], tmp_path / "c.svg", "t")
    assert not list(tmp_path.iterdir())


def test_cli_curve_from_csv(tmp_path):
    curve = tmp_path / "curve.csv"
    write_curve(curve, FULL_ROWS, {"profile": "vicuna-7b", "gpu": "H100"})
    out = tmp_path / "curve.svg"
    result = CliRunner().invoke(app, ["render", "--curve", str(curve), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert count_panels(out.read_text()) == 3
    assert curve_title("curve", {"profile": "p", "nested": {"x": 1}, "ok": True}) == (
        "curve (profile=p)"
    )
