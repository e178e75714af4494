"""The tuner's choice on synthetic acceptance and latency curves with a known optimum."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from treeopt.core.latency import LatencyTable
from treeopt.errors import TreeoptError
from treeopt.optimize.tune import batch_view, best_point, curve_rows, speedup_points, tune_size

# E[accept](n) for n = 1..8: diminishing returns, as a nested optimal tree gives.
ACCEPT = [1.0, 1.8, 2.4, 2.8, 3.0, 3.1, 3.15, 3.18]
BASE_S = 0.010
EXTRA_S = 0.002  # per token above the memory-bound plateau


def plateau_latency(n: int, plateau: int = 4) -> float:
    """Flat up to ``plateau`` tokens (memory-bound), then EXTRA_S per extra token."""
    return BASE_S + EXTRA_S * max(0, n - plateau)


def make_table(rows: dict[tuple[int, int, int], float | None]) -> LatencyTable:
    return LatencyTable(measurements=rows, source="measured", device="cpu",
                        dtype="float32", arch="synthetic")


def batch1_table(sizes=range(1, 9)) -> LatencyTable:
    return make_table({(1, 128, n): plateau_latency(n) for n in sizes})


def test_known_optimum_at_the_end_of_the_plateau():
    # overhead 1,1,1,1,1.2,1.4,1.6,1.8 -> speedup 1,1.8,2.4,2.8,2.5,2.214..,1.968..,1.766..
    result = tune_size(ACCEPT, batch1_table(), batch=1, context=128)
    assert result.best.num_tokens == 4
    assert result.best.speedup == pytest.approx(2.8)
    assert [round(p.speedup, 4) for p in result.points] == [
        1.0, 1.8, 2.4, 2.8, 2.5, 2.2143, 1.9687, 1.7667
    ]
    assert result.limited_by == "latency table"  # a tie (8 and 8) names the table
    shorter = tune_size(ACCEPT[:6], batch1_table(), batch=1, context=128)
    assert shorter.limited_by == "acceptance curve" and len(shorter.points) == 6


def test_interpolated_sizes_are_tuned_too():
    # Measured at 1, 4 and 8 only: overhead(6) interpolates to 1.4, speedup(6) = 3.1 / 1.4.
    result = tune_size(ACCEPT, batch1_table(sizes=(1, 4, 8)), batch=1, context=128)
    assert result.points[5].overhead == pytest.approx(1.4)
    assert result.best.num_tokens == 4


def test_oom_caps_the_sizes_considered():
    rows = {(1, 128, n): plateau_latency(n) for n in range(1, 9)}
    rows[(1, 128, 3)] = None  # out of memory from 3 tokens on
    result = tune_size(ACCEPT, make_table(rows), batch=1, context=128)
    assert len(result.points) == 2
    assert result.best.num_tokens == 2
    assert result.limited_by == "latency table"


def test_max_budget_caps_the_sizes_considered():
    result = tune_size(ACCEPT, batch1_table(), batch=1, context=128, max_budget=3)
    assert result.best.num_tokens == 3
    assert result.best.speedup == pytest.approx(2.4)
    assert result.limited_by == "max budget"


def test_ties_go_to_the_smaller_tree():
    points = speedup_points([1.0, 2.0, 3.0], {1: 1.0, 2: 1.0, 3: 1.5}, 3)
    assert best_point(points).num_tokens == 2


def test_large_batches_shrink_or_reverse_the_gain():
    rows = {}
    for n in range(1, 9):
        rows[(1, 128, n)] = plateau_latency(n)  # memory-bound: plateau to 4 tokens
        rows[(16, 128, n)] = plateau_latency(n, plateau=2)  # plateau ends sooner
        rows[(64, 128, n)] = BASE_S * n  # compute-bound: every token costs a full step
    view = batch_view(ACCEPT, make_table(rows), context=128)
    assert [(row.batch, row.num_tokens) for row in view] == [(1, 4), (16, 3), (64, 1)]
    assert view[0].speedup == pytest.approx(2.8)
    assert view[1].speedup == pytest.approx(2.0)  # 2.4 / 1.2
    assert view[2].speedup == pytest.approx(1.0)  # no tree pays: plain decoding


def test_batch_view_unknown_context():
    with pytest.raises(TreeoptError, match=r"no batch at context 999 \(contexts: 128\)"):
        batch_view(ACCEPT, batch1_table(), context=999)


def test_curve_rows_carry_every_column():
    table = batch1_table()
    result = tune_size(ACCEPT, table, batch=1, context=128)
    rows = curve_rows(result, table.latency_curve(1, 128))
    assert rows[4] == pytest.approx(
        {"num_tokens": 5, "expected_accept_length": 3.0, "latency_s": 0.012,
         "overhead": 1.2, "speedup": 2.5}
    )


def test_short_acceptance_curve_is_an_error():
    with pytest.raises(TreeoptError, match="covers 2 sizes, fewer than 3"):
        speedup_points([1.0, 1.5], {1: 1.0, 2: 1.0, 3: 1.0}, 3)


@given(
    st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=20),
    st.lists(st.floats(min_value=0.0, max_value=0.01), min_size=20, max_size=20),
)
def test_best_is_the_argmax(gains, steps):
    accept = [1.0]
    for gain in gains[1:]:
        accept.append(accept[-1] + gain)
    latency, rows = BASE_S, {}
    for n in range(1, len(accept) + 1):
        rows[(1, 1, n)] = latency
        latency += steps[n - 1]
    result = tune_size(accept, make_table(rows), batch=1, context=1)
    assert all(result.best.speedup >= p.speedup for p in result.points)
    assert result.best.speedup >= 1.0  # plain decoding is always a candidate


def test_tune_tree_returns_the_builders_tree_of_the_best_size():
    from treeopt.core.profile import Profile
    from treeopt.optimize.build import build_tree
    from treeopt.optimize.tune import tune_tree

    profile = Profile.from_cumulative_accuracy(
        [[0.6, 0.7, 0.75], [0.4, 0.5, 0.55], [0.3, 0.38, 0.42]], {"source": "synthetic"})
    table = make_table({(1, 128, n): plateau_latency(n) for n in range(1, 9)}
                       | {(4, 128, n): BASE_S * n for n in range(1, 9)})
    tuned = tune_tree(profile, table)  # batch: the smallest; context: the only one
    assert (tuned.result.batch, tuned.result.context) == (1, 128)
    built = build_tree(profile, 8)
    assert tuned.accept_curve == pytest.approx(list(built.curve))
    # Overhead is flat to 4 tokens and E[accept] rises strictly, so n* = 4 exactly when
    # the 5th token's gain is below the 20% its overhead adds.
    assert built.curve[4] / 1.2 < built.curve[3]
    assert tuned.result.best.num_tokens == 4
    assert tuned.tree == built.tree_at(4) and tuned.score == pytest.approx(built.curve[3])
    assert tuned.weighting == "positions"
    compute_bound = tune_tree(profile, table, batch=4)
    assert compute_bound.result.best.num_tokens == 1 and compute_bound.tree.num_tokens == 1
    with pytest.raises(TreeoptError, match="nothing to tune"):
        tune_tree(profile, table, max_budget=1)
