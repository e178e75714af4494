"""Dynamic per-step trees: each step verifies the N paths the heads themselves rate best.

A static tree is an average over steps: when head 1 is confident depth pays, when
it is not width pays. A dynamic policy chooses the tree every step from the heads'
top-k probabilities at that step, at a fixed size N (so the step keeps static shapes).

**Calibration.** Head probabilities are not acceptance probabilities. For each head
(depth d) an isotonic (monotone non-decreasing) map ``c_d`` takes the probability a
head gives a candidate to the chance that the candidate is the true token, fitted on
calibration positions whose path down to depth d - 1 lies inside the recorded top-k
(where the tree could still continue). Calibrated values lie in [0, 1].

**Policy.** A path ``(r_1, ..., r_d)``'s value is ``prod_j c_j(p_j[r_j])``. Head
probabilities fall with rank and each ``c_j`` is monotone, so a path is worth at most
any path that is componentwise of lower rank, or a prefix of it (its *dominators*).
The policy keeps the root and the ``N - 1`` highest-valued paths, ties going to the
canonically earlier path. Every dominator of a chosen path is then chosen too (it
ranks before it), so the choice is always a valid tree, parents before children;
and a path with ``N - 1`` or more dominators can never be chosen, so the candidates
are the finite :func:`candidate_pool`, the same every step (static shapes).

Everything here is numpy; ``medusa_runtime.dynamic`` runs the same policy on the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from treeopt.core.ranks import RankSequences
from treeopt.core.tree import Path, Tree, canonical_key
from treeopt.errors import TreeoptError
from treeopt.optimize.replay import UNMATCHED, _chain_ids, _ratio, _walk

# Calibration maps are tabulated on this many evenly spaced probabilities in [0, 1]:
# the runtime looks values up by index (no interpolation kernel), and 1/1023 is finer
# than any head probability difference that changes a choice in practice.
CALIBRATION_GRID = 1024
# Smallest calibrated value kept before taking logs (a value of 0 would make every
# path through it equal at -inf and leave ties to order alone).
MIN_CALIBRATED = 1e-6
# Positions scored at once when replaying a policy (bounds memory: rows x pool floats).
POLICY_CHUNK_ROWS = 4096


@dataclass(frozen=True)
class HeadCalibration:
    """Per-head isotonic maps, tabulated: ``table[d, g] = c_{d+1}(g / (grid - 1))``."""

    table: np.ndarray  # (K, CALIBRATION_GRID) float64 in [0, 1]

    @property
    def num_heads(self) -> int:
        return int(self.table.shape[0])

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated values of ``probs`` ``(..., K, top_k)`` (head d on axis -2)."""
        grid = self.table.shape[1]
        index = np.clip(np.rint(np.asarray(probs, dtype=np.float64) * (grid - 1)), 0, grid - 1)
        depth = np.arange(probs.shape[-2])[:, None]
        return self.table[depth, index.astype(np.int64)]

    def log_values(self, probs: np.ndarray) -> np.ndarray:
        """``log`` of :meth:`apply`, floored at :data:`MIN_CALIBRATED`."""
        return np.log(np.maximum(self.apply(probs), MIN_CALIBRATED))


def _require_probs(sequences: RankSequences) -> np.ndarray:
    if sequences.probs is None:
        raise TreeoptError(
            "a dynamic policy needs the heads' top-k probabilities: profile again with a "
            "treeopt version that records them (PROFILE.json.ranks.npz 'probs')"
        )
    return sequences.probs


def _reachable(sequences: RankSequences) -> np.ndarray:
    """``(N, K)``: whether the true ranks at heads ``1 .. d-1`` are all inside the top-k at
    each position, i.e. whether a tree could still continue there to depth ``d``."""
    ranks = sequences.ranks
    inside = (ranks >= 0) & (ranks < sequences.top_k)
    first = np.ones((len(ranks), 1), dtype=bool)
    return np.cumprod(np.concatenate([first, inside[:, :-1]], axis=1), axis=1).astype(bool)


def _isotonic(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Isotonic fit of ``y`` on ``x`` tabulated on the grid (scipy's PAVA, then interp)."""
    from scipy.optimize import isotonic_regression

    grid = np.linspace(0.0, 1.0, CALIBRATION_GRID)
    if len(x) == 0:
        return grid.copy()  # no evidence: trust the head
    order = np.argsort(x, kind="stable")
    fitted = isotonic_regression(y[order].astype(np.float64), increasing=True).x
    return np.clip(np.interp(grid, x[order], fitted), 0.0, 1.0)


def fit_calibration(sequences: RankSequences) -> HeadCalibration:
    """Fit ``c_d`` for every head on ``sequences`` (which must carry ``probs``).

    Samples for head d: every rank ``i < top_k`` at every position whose true ranks at
    heads ``1 .. d-1`` are inside the top-k, labelled 1 iff the true token has rank i.
    Guarantee: each tabulated map is non-decreasing in the probability and in [0, 1].
    """
    probs = _require_probs(sequences)
    ranks = sequences.ranks.astype(np.int64)
    reachable = _reachable(sequences)
    tables = []
    for depth in range(sequences.num_heads):
        rows = reachable[:, depth]
        x = probs[rows, depth, :].reshape(-1)
        y = (np.arange(sequences.top_k)[None, :] == ranks[rows, depth][:, None]).reshape(-1)
        tables.append(_isotonic(x, y.astype(np.float64)))
    return HeadCalibration(np.stack(tables))


def calibration_report(calibration: HeadCalibration, sequences: RankSequences,
                       bins: int = 10) -> list[dict[str, float]]:
    """Per head, on ``sequences`` (held out): Brier score and expected calibration error of
    the raw head probability and of the calibrated value, as predictors of "this
    candidate is the true token" on the positions :func:`fit_calibration` uses."""
    probs = _require_probs(sequences)
    ranks = sequences.ranks.astype(np.int64)
    reachable = _reachable(sequences)
    calibrated = calibration.apply(probs)
    report = []
    for depth in range(sequences.num_heads):
        rows = reachable[:, depth]
        y = (np.arange(sequences.top_k)[None, :] == ranks[rows, depth][:, None]).reshape(-1)
        row: dict[str, float] = {"head": depth + 1, "samples": float(y.size)}
        # The top candidate alone: what decides most choices, readable at a glance.
        row["top1_observed"] = float(np.mean(ranks[rows, depth] == 0)) if rows.any() else math.nan
        row["top1_raw"] = float(np.mean(probs[rows, depth, 0])) if rows.any() else math.nan
        row["top1_calibrated"] = (float(np.mean(calibrated[rows, depth, 0])) if rows.any()
                                  else math.nan)
        for name, predicted in (("raw", probs[rows, depth, :].reshape(-1)),
                                ("calibrated", calibrated[rows, depth, :].reshape(-1))):
            row[f"brier_{name}"] = float(np.mean((predicted - y) ** 2)) if y.size else math.nan
            row[f"ece_{name}"] = _expected_calibration_error(predicted, y, bins)
        report.append(row)
    return report


def _expected_calibration_error(predicted: np.ndarray, label: np.ndarray, bins: int) -> float:
    if predicted.size == 0:
        return math.nan
    which = np.minimum((predicted * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.sum() * abs(predicted[members].mean() - label[members].mean())
    return float(total / predicted.size)


def candidate_pool(size: int, num_heads: int) -> list[Path]:
    """Every path that the policy can choose at tree size ``size`` (root included), canonical.

    A path with ranks ``r`` has ``sum_{l=1..d} prod_{j<=l} (r_j + 1) - 1`` dominators
    (see the module doc); it is in the pool iff that is ``< size - 1``. Exact: the
    policy never needs a path outside it, whatever the probabilities.
    """
    if size < 1 or num_heads < 0:
        raise TreeoptError(f"tree size must be >= 1 and heads >= 0, not {size}, {num_heads}")
    pool: list[Path] = []
    frontier: list[tuple[Path, int, int]] = [((), 0, 1)]  # path, dominators so far, product
    while frontier:
        path, dominators, product = frontier.pop()
        for rank in range(size):
            grown = product * (rank + 1)
            count = dominators + grown
            if count - 1 >= size - 1:
                break  # higher ranks only add dominators
            child = (*path, rank)
            pool.append(child)
            if len(child) < num_heads:
                frontier.append((child, count, grown))
    return sorted(pool, key=canonical_key)


def pool_ranks(pool: Sequence[Path], num_heads: int) -> np.ndarray:
    """``(M, K)`` ranks of each pool path, ``-1`` past its depth."""
    table = np.full((len(pool), num_heads), -1, dtype=np.int64)
    for index, path in enumerate(pool):
        table[index, : len(path)] = path
    return table


def path_log_values(log_values: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """``(R, M)``: each pool path's summed log value at each of ``R`` positions.

    ``log_values`` ``(R, K, top_k)`` per-candidate log values; ``ranks`` from
    :func:`pool_ranks` (ranks must be ``< top_k``).
    """
    depth = np.arange(ranks.shape[1])[None, :]
    gathered = log_values[:, depth, np.clip(ranks, 0, None)]  # (R, M, K)
    return np.where(ranks[None] >= 0, gathered, 0.0).sum(axis=-1)


def choose_paths(log_values: np.ndarray, size: int) -> Tree:
    """The policy's tree at one position: ``log_values`` ``(K, top_k)``, ``size`` with root."""
    num_heads = log_values.shape[0]
    pool = candidate_pool(size, num_heads)
    _check_top_k(pool, log_values.shape[1])
    values = path_log_values(log_values[None], pool_ranks(pool, num_heads))[0]
    order = np.argsort(-values, kind="stable")[: size - 1]
    return Tree.from_paths([pool[i] for i in sorted(order)], num_heads=num_heads)


def _check_top_k(pool: Sequence[Path], top_k: int) -> None:
    needed = 1 + max((max(path) for path in pool), default=-1)
    if needed > top_k:
        raise TreeoptError(f"a dynamic tree of this size needs the heads' top-{needed}; the "
                           f"probabilities hold only the top-{top_k}")


def dynamic_accept_lengths(sequences: RankSequences, calibration: HeadCalibration,
                           size: int) -> np.ndarray:
    """``(N,)`` tokens a greedy step at each position emits under the policy at ``size``."""
    probs = _require_probs(sequences)
    num_heads = min(sequences.num_heads, calibration.num_heads)
    pool = candidate_pool(size, num_heads)
    _check_top_k(pool, sequences.top_k)
    if not pool:
        return np.ones(len(sequences), dtype=np.int64)
    ranks = pool_ranks(pool, num_heads)
    truncated = RankSequences(sequences.ranks[:, :num_heads], sequences.groups,
                              sequences.first_decode_index, sequences.top_k)
    chain = _chain_ids(pool, truncated)  # (N, K): pool index of each true prefix
    lengths = np.ones(len(sequences), dtype=np.int64)
    for start in range(0, len(sequences), POLICY_CHUNK_ROWS):
        rows = slice(start, start + POLICY_CHUNK_ROWS)
        values = path_log_values(calibration.log_values(probs[rows, :num_heads]), ranks)
        index = np.arange(len(pool))[None, :]
        for depth in range(num_heads):
            node = chain[rows, depth]
            found = node != UNMATCHED
            node = np.where(found, node, 0)
            own = np.take_along_axis(values, node[:, None], axis=1)
            # Paths ranked before this one: higher value, or equal value and earlier.
            ahead = ((values > own) | ((values == own) & (index < node[:, None]))).sum(axis=1)
            chosen = found & (ahead < size - 1)
            lengths[rows] += chosen  # a chain stops at its first unchosen node (prefixes
            if not chosen.any():  # of a chosen path are chosen), so counting is exact
                break
    return lengths


def dynamic_tokens_per_step(sequences: RankSequences, calibration: HeadCalibration,
                            size: int) -> float:
    """Tokens per verification step greedy decoding gets with the policy at ``size``,
    replaying decoding's walk over ``sequences`` (exactly as :func:`replay.replay`)."""
    lengths = dynamic_accept_lengths(sequences, calibration, size)
    emitted, steps, _ = _walk(lambda rows: lengths[rows], sequences, 1)
    return float(_ratio(emitted, steps)[0])
