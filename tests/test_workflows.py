"""The workflows behind the verbs, called as an API: the verbs' results, files as promised."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from treeopt.core.latency import LatencyTable
from treeopt.errors import TreeoptError
from treeopt.files.curve_file import read_curve
from treeopt.files.latency_file import write_latency
from treeopt.files.tree_file import load_tree_document
from treeopt.workflows.pictures import RenderSettings, render_picture
from treeopt.workflows.roofline import SimulateSettings, simulate_speedups
from treeopt.workflows.trees import BuildSettings, build_to_files
from treeopt.workflows.tuning import TuneSettings, tune_to_files

GOLDEN_64 = 2.3844  # vicuna-7b, independent, budget 64 (tests/test_cli_build.py has 1e-6)


def test_build_returns_the_document_or_writes_it(tmp_path: Path) -> None:
    printed = build_to_files(BuildSettings(64))
    document = json.loads(printed.document or "")
    assert len(document["paths"]) == 63
    assert round(document["expected_accept_length"], 4) == GOLDEN_64
    assert document["provenance"]["builder"] == "treeopt greedy"
    assert "max_depth" not in document["provenance"]  # unknowns are left out
    tree_path, curve_path = tmp_path / "t.json", tmp_path / "c.json"
    written = build_to_files(BuildSettings(64, max_rank=[4, 3], output=tree_path,
                                           curve=curve_path))
    assert written.document is None
    assert load_tree_document(tree_path).provenance["max_rank"] == [4, 3]
    curve = read_curve(curve_path)
    assert curve.rows[-1].expected_accept_length == pytest.approx(
        written.result.expected_accept_length)


def lat_file(path: Path) -> Path:
    """Batch 1: flat up to 8 tokens (trees pay); batch 8: linear in size (no tree pays)."""
    rows = {}
    for n in range(1, 17):
        rows[(1, 512, n)] = 0.01 * (1 + max(0, n - 8))
        rows[(8, 512, n)] = 0.01 * n
    write_latency(path, LatencyTable(rows, source="measured", device="cpu", dtype="float32",
                                     arch="synthetic"))
    return path


def test_tune_writes_everything_or_nothing(tmp_path: Path) -> None:
    said: list[str] = []
    latency = lat_file(tmp_path / "lat.json")
    outcome = tune_to_files(TuneSettings([latency], batch=1, context=512,
                                         output=tmp_path / "t.json", curve=tmp_path / "c.csv",
                                         say=said.append))
    assert said == [f"latency: {latency}: {outcome.table.describe()}"]
    best = outcome.tuned.result.best
    assert 1 < best.num_tokens <= 16
    assert load_tree_document(tmp_path / "t.json").provenance["budget"] == best.num_tokens
    assert [row.num_tokens for row in read_curve(tmp_path / "c.csv").rows] == list(range(1, 17))
    with pytest.raises(TreeoptError, match="no tree beats plain decoding"):
        tune_to_files(TuneSettings([latency], batch=8, context=512, output=tmp_path / "x.json",
                                   curve=tmp_path / "x.csv"))
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "x.csv").exists()


def test_simulation_uses_the_one_speedup_rule() -> None:
    outcome = simulate_speedups(SimulateSettings([1], [1024], [1, 16, 64], acceptance="log:0.5"))
    assert [row["candidates"] for row in outcome.rows] == [1, 16, 64]
    for row in outcome.rows:
        assert row["speedup"] == row["acceleration_rate"] / row["overhead"]
    assert outcome.rows[0]["speedup"] == 1.0 and outcome.left_out == 0


def test_render_refuses_before_work_and_draws_dot(tmp_path: Path) -> None:
    with pytest.raises(TreeoptError, match="nothing to draw"):
        render_picture(RenderSettings())
    outcome = render_picture(RenderSettings("mc_sim_7b_63", output=tmp_path / "t.dot",
                                            max_nodes=5))
    assert outcome.written == tmp_path / "t.dot" and not outcome.fell_back
    assert outcome.hidden_note is not None and "hid 58 of 63" in outcome.hidden_note
