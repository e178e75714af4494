"""The appendix's qualitative findings, on the analytic model with the log acceptance fit."""

import math

import pytest

from treeopt.cost.arch import get_arch
from treeopt.cost.gpus import GPUS
from treeopt.cost.simulate import (
    SIMULATION_KEYS,
    best_candidates,
    log_acceleration_curve,
    parse_acceptance,
    simulate,
)
from treeopt.errors import TreeoptError

LLAMA_7B = get_arch("llama-7b")
A100 = GPUS["a100-80gb-pcie"]
CANDIDATES = [1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 160, 192, 256]
CURVE = log_acceleration_curve(0.3, 256)


def run(batches, contexts):
    return simulate(CURVE, LLAMA_7B, A100, batches, contexts, CANDIDATES)


def best_speedup(batch, context):
    return best_candidates(run([batch], [context]))[0]


def test_rows_have_exactly_the_keys_and_speedup_is_ratio():
    rows = run([1], [1024])
    assert all(tuple(row) == SIMULATION_KEYS for row in rows)
    first = rows[0]
    assert first["candidates"] == 1 and first["overhead"] == 1.0 and first["speedup"] == 1.0
    for row in rows:
        assert row["speedup"] == pytest.approx(row["acceleration_rate"] / row["overhead"])


def test_speedup_rises_then_falls_with_candidates():
    speedups = [row["speedup"] for row in run([1], [1024])]
    peak = speedups.index(max(speedups))
    assert 0 < peak < len(speedups) - 1
    assert speedups[peak] > speedups[0] and speedups[-1] < speedups[peak]


def test_large_batches_shrink_speedup_and_best_tree():
    small, large = best_speedup(1, 1024), best_speedup(64, 1024)
    assert large["speedup"] < small["speedup"]
    assert large["candidates"] < small["candidates"]


def test_long_contexts_lower_speedup():
    short, long = best_speedup(4, 128), best_speedup(4, 8192)
    assert long["speedup"] < short["speedup"]


def test_log_curve_and_parsing():
    assert CURVE[0] == 1.0 and CURVE[63] == pytest.approx(1 + 0.3 * math.log(64))
    assert parse_acceptance("log:0.25") == 0.25
    for bad in ("log:", "log:-1", "lin:0.3", "log:nan"):
        with pytest.raises(TreeoptError):
            parse_acceptance(bad)


def test_candidates_beyond_curve_is_an_error():
    with pytest.raises(TreeoptError, match="exceeds"):
        simulate([1.0, 1.5], LLAMA_7B, A100, [1], [128], [1, 4])
