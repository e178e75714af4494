"""`treeopt tune` end to end on a synthetic profile and latency file with a known optimum."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from treeopt.cli import app
from treeopt.core.latency import LatencyTable
from treeopt.files.latency_file import write_latency

# Cumulative top-1..top-3 accuracies of 3 heads: every candidate has positive
# probability, so E[accept] rises strictly with every token added.
CUMULATIVE = [[0.6, 0.7, 0.75], [0.4, 0.5, 0.55], [0.3, 0.38, 0.42]]
PLATEAU = 6  # latency is flat up to 6 tokens per step, then each token costs a full step
BASE_S = 0.01


@pytest.fixture
def profile_file(tmp_path):
    from treeopt.core.profile import Profile
    from treeopt.files.profile_file import write_profile

    path = tmp_path / "profile.json"
    write_profile(path, Profile.from_cumulative_accuracy(CUMULATIVE, {"source": "synthetic"}))
    return path


def latency_file(path, source="measured", device="cpu", plateau=PLATEAU):
    rows = {}
    for n in range(1, 17):
        extra = max(0, n - plateau)
        rows[(1, 512, n)] = BASE_S * (1 + extra)
        rows[(8, 512, n)] = BASE_S * n  # compute-bound batch: no tree pays
    write_latency(path, LatencyTable(rows, source=source, device=device, dtype="float32",
                                     arch="synthetic"))
    return path


def run(*args):
    return CliRunner().invoke(app, ["tune", *map(str, args)])


def test_tune_picks_the_end_of_the_plateau(tmp_path, profile_file):
    lat = latency_file(tmp_path / "lat.json")
    out, curve = tmp_path / "tree.json", tmp_path / "curve.json"
    result = run("--profile", profile_file, "--latency", lat, "--batch", 1, "-o", out,
                 "--curve", curve)
    assert result.exit_code == 0, result.output
    assert "best: n* = 6 tokens/step" in result.output
    assert "measured on cpu" in result.output
    tree = json.loads(out.read_text())
    assert len(tree["paths"]) == PLATEAU - 1
    assert tree["provenance"]["latency_source"] == "measured"
    assert tree["provenance"]["latency_device"] == "cpu"
    rows = json.loads(curve.read_text())["rows"]
    assert [row["num_tokens"] for row in rows] == list(range(1, 17))
    assert rows[PLATEAU - 1]["overhead"] == pytest.approx(1.0)
    assert rows[PLATEAU]["overhead"] == pytest.approx(2.0)
    assert tree["expected_accept_length"] == pytest.approx(
        rows[PLATEAU - 1]["expected_accept_length"], abs=1e-6)


def test_measured_latency_is_preferred(tmp_path, profile_file):
    predicted = latency_file(tmp_path / "pred.json", source="roofline-model",
                             device="h100-sxm", plateau=3)
    measured = latency_file(tmp_path / "meas.json")
    result = run("--profile", profile_file, "--latency", predicted, "--latency", measured,
                 "--batch", 1)
    assert result.exit_code == 0, result.output
    assert "meas.json: measured on cpu" in result.output
    assert "preferred over" in result.output
    assert "best: n* = 6" in result.output


def test_batch_view_and_no_gain_at_large_batch(tmp_path, profile_file):
    lat = latency_file(tmp_path / "lat.json")
    result = run("--profile", profile_file, "--latency", lat, "--batch", 8,
                 "-o", tmp_path / "tree.json")
    assert result.exit_code == 2
    assert "no tree beats plain decoding" in result.output
    assert not (tmp_path / "tree.json").exists()


def test_unknown_batch_is_a_one_line_error(tmp_path, profile_file):
    lat = latency_file(tmp_path / "lat.json")
    result = run("--profile", profile_file, "--latency", lat, "--batch", 2)
    assert result.exit_code == 2
    assert (f"error: {lat}: latency table has no batch 2 at context 512 (it covers batches 1, "
            "8 and contexts 512)") in result.output


def test_plot(tmp_path, profile_file):
    lat = latency_file(tmp_path / "lat.json")
    plot = tmp_path / "tune.png"
    result = run("--profile", profile_file, "--latency", lat, "--batch", 1, "--plot", plot)
    assert result.exit_code == 0, result.output
    assert plot.stat().st_size > 0


def test_no_latency_given():
    result = run("--profile", "x")
    assert result.exit_code == 2
    assert "error: --latency is needed: a latency table from `treeopt overhead`" in result.output


def test_tune_with_rank_vectors_scores_tokens_per_step(tmp_path):
    """A measured profile's curve is replayed tokens per step; n*'s tree is rebuilt for n*."""
    import numpy as np

    from treeopt.core.profile import Profile
    from treeopt.files.profile_file import load_profile, write_profile
    from treeopt.files.tree_file import load_tree
    from treeopt.optimize.build import build_tree
    from treeopt.optimize.replay import tokens_per_step

    rng = np.random.default_rng(0)
    easy = np.repeat(rng.random(200) < 0.5, 8)[:1600]
    ranks = np.where(rng.random((1600, 3)) < 0.5, 1, rng.integers(-1, 3, (1600, 3)))
    ranks[easy] = 0
    path = tmp_path / "measured.json"
    write_profile(path, Profile.from_rank_vectors(ranks, 3, groups=np.arange(1600) // 200,
                                                  first_decode_index=np.zeros(8, dtype=int)))
    profile = load_profile(path)
    lat = latency_file(tmp_path / "lat.json")
    out, curve = tmp_path / "tree.json", tmp_path / "curve.json"
    result = run("--profile", path, "--latency", lat, "--batch", 1, "-a", "joint", "-o", out,
                 "--curve", curve)
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["provenance"]["weighting"] == "steps"
    tree = load_tree(str(out))
    # The written figure is the written tree's replayed tokens per step...
    assert document["expected_accept_length"] == pytest.approx(
        tokens_per_step(tree, profile.sequences), abs=1e-4)
    # ...at least the nested curve's value at n*, and the curve is replayed too.
    rows = json.loads(curve.read_text())["rows"]
    best = tree.num_tokens
    assert document["expected_accept_length"] >= rows[best - 1]["expected_accept_length"] - 1e-6
    nested = build_tree(profile, 16, "joint")
    assert rows[best - 1]["expected_accept_length"] == pytest.approx(nested.curve[best - 1],
                                                                      abs=1e-4)
