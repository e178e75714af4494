"""The dynamic per-step tree policy (treeopt.optimize.dynamic) against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from treeopt.core.ranks import RankSequences
from treeopt.core.tree import canonical_key
from treeopt.optimize.dynamic import (
    CALIBRATION_GRID,
    HeadCalibration,
    calibration_report,
    candidate_pool,
    choose_paths,
    dynamic_accept_lengths,
    dynamic_tokens_per_step,
    fit_calibration,
)
from treeopt.optimize.replay import accept_lengths, tokens_per_step


def sorted_probs(rng: np.random.Generator, rows: int, heads: int, top_k: int) -> np.ndarray:
    raw = rng.dirichlet(np.full(top_k + 1, 0.3), size=(rows, heads))[..., :top_k]
    return -np.sort(-raw, axis=-1)  # a head's top-k comes sorted by probability


def brute_force_tree(log_values: np.ndarray, size: int) -> set[tuple[int, ...]]:
    """Top size-1 paths over the whole product space, ties to the canonically earlier."""
    heads, top_k = log_values.shape
    paths = [p for d in range(1, heads + 1) for p in itertools.product(range(top_k), repeat=d)]
    value = {p: sum(log_values[j, r] for j, r in enumerate(p)) for p in paths}
    ranked = sorted(paths, key=lambda p: (-value[p], canonical_key(p)))
    return set(ranked[: size - 1])


def test_pool_sizes_are_known_values() -> None:
    # Paths with fewer than size-1 dominators, 5 heads. By hand for size 4 (3 slots):
    # (0,1) has dominators (0) and (0,0); (1,0) has (0), (1), (0,0): one too many.
    assert [len(candidate_pool(n, 5)) for n in (1, 2, 4, 8, 16)] == [0, 1, 6, 35, 172]
    assert set(candidate_pool(4, 5)) == {(0,), (1,), (2,), (0, 0), (0, 1), (0, 0, 0)}
    pool = candidate_pool(4, 5)
    assert pool == sorted(pool, key=canonical_key)


@pytest.mark.parametrize("seed", range(12))
def test_policy_is_the_exact_top_n_and_a_tree(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size, heads = int(rng.integers(2, 12)), 3
    top_k = size  # every rank a pool path can use
    calibration = HeadCalibration(np.sqrt(np.linspace(0, 1, CALIBRATION_GRID))[None]
                                  .repeat(heads, axis=0))
    probs = sorted_probs(rng, 1, heads, top_k)[0]
    log_values = calibration.log_values(probs)
    tree = choose_paths(log_values, size)
    assert set(tree.paths) == brute_force_tree(log_values, size)
    assert tree.num_tokens == size  # parents before children: Tree validates it


def random_sequences(seed: int, rows: int = 300, heads: int = 3, top_k: int = 8,
                     groups: int = 6) -> RankSequences:
    rng = np.random.default_rng(seed)
    probs = sorted_probs(rng, rows, heads, top_k)
    # The true token's rank follows the head's own probabilities (plus a miss).
    cumulative = np.cumsum(probs, axis=-1)
    draw = rng.random((rows, heads, 1))
    ranks = (draw > cumulative).sum(axis=-1)
    ranks[ranks >= top_k] = -1
    group_ids = np.sort(rng.integers(0, groups, rows))
    return RankSequences(ranks.astype(np.int64), group_ids, np.zeros(groups, dtype=np.int64),
                         top_k, probs.astype(np.float32))


@pytest.mark.parametrize("size", [2, 4, 7])
def test_replayed_accept_lengths_match_per_position_trees(size: int) -> None:
    sequences = random_sequences(size)
    calibration = fit_calibration(sequences)
    lengths = dynamic_accept_lengths(sequences, calibration, size)
    for t in range(0, len(sequences), 17):
        tree = choose_paths(calibration.log_values(sequences.probs[t]), size)
        one = RankSequences(sequences.ranks[t:t + 1], np.zeros(1, dtype=np.int64),
                            np.zeros(1, dtype=np.int64), sequences.top_k)
        assert lengths[t] == accept_lengths(tree, one)[0]


def test_calibration_recovers_a_known_map() -> None:
    rng = np.random.default_rng(0)
    rows, heads, top_k = 20000, 2, 4
    probs = sorted_probs(rng, rows, heads, top_k)
    truth = probs ** 2  # the chance a candidate is right is the square of its probability
    hit = rng.random(truth.shape) < truth
    first = np.where(hit.any(-1), hit.argmax(-1), -1)
    sequences = RankSequences(first, np.zeros(rows, dtype=np.int64),
                              np.zeros(1, dtype=np.int64), top_k, probs)
    calibration = fit_calibration(sequences)
    table = calibration.table
    assert np.all(np.diff(table, axis=1) >= 0) and table.min() >= 0 and table.max() <= 1
    grid = np.linspace(0, 1, CALIBRATION_GRID)
    middle = (grid > 0.2) & (grid < 0.6)  # where the samples are dense
    assert np.max(np.abs(table[0, middle] - grid[middle] ** 2)) < 0.08
    report = calibration_report(calibration, sequences)
    assert report[0]["ece_calibrated"] < report[0]["ece_raw"]


def test_dynamic_beats_static_when_confidence_varies() -> None:
    """Half the positions have a confident head 1 (depth pays), half do not (width pays)."""
    rng = np.random.default_rng(1)
    rows, heads, top_k, size = 4000, 3, 6, 4
    confident = rng.random(rows) < 0.5
    probs = np.where(confident[:, None, None], [0.9, 0.02, 0.02, 0.02, 0.02, 0.02],
                     [0.3, 0.25, 0.2, 0.15, 0.05, 0.05]).astype(np.float32)
    probs = np.broadcast_to(probs, (rows, heads, top_k)).copy()
    cumulative = np.cumsum(probs, axis=-1)
    ranks = (rng.random((rows, heads, 1)) > cumulative).sum(axis=-1)
    ranks[ranks >= top_k] = -1
    sequences = RankSequences(ranks, np.zeros(rows, dtype=np.int64),
                              np.zeros(1, dtype=np.int64), top_k, probs)
    calibration = fit_calibration(sequences)
    dynamic = dynamic_tokens_per_step(sequences, calibration, size)
    from treeopt.core.profile import Profile
    from treeopt.optimize.build import build_tree

    profile = Profile.from_rank_vectors(ranks, top_k=top_k).with_sequences(sequences)
    static = tokens_per_step(build_tree(profile, budget=size, acceptance_model="joint").tree,
                             sequences)
    assert dynamic > static + 0.05


def test_needs_probabilities() -> None:
    sequences = random_sequences(0)
    bare = RankSequences(sequences.ranks, sequences.groups, sequences.first_decode_index,
                         sequences.top_k)
    from treeopt.errors import TreeoptError

    with pytest.raises(TreeoptError, match="probabilities"):
        fit_calibration(bare)
