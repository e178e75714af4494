"""Decoding replayed over recorded rank vectors: tokens per step as the runtime measures it.

``treeopt profile`` keeps, beside ``PROFILE.json``, the ordered rank vectors it
summarized (``PROFILE.json.ranks.npz``): per prompt, one row per position of the
greedy continuation, ``ranks[t, k]`` = the rank of the true token ``t + 2 + k`` in
head ``k + 1``'s top-k at position ``t`` (``-1`` or ``>= top_k``: a miss).

Greedy verification with a tree at position ``t`` accepts the longest prefix of
``ranks[t]`` that is a path of the tree, so a step there emits
``accept_length(t) = 1 + that prefix's length`` tokens and decoding's next step
is at ``t + accept_length(t)``. Replaying that walk from each prompt's first
decoding position gives exactly the tokens per verification step greedy decoding
gets on the profiled text (up to the last step's truncation at EOS or
``max_new_tokens``).

Why not average over all positions: where acceptance is high, steps are long
and skip positions, so decoding *visits* hard text more often than its share of
positions. The position average (:func:`treeopt.optimize.acceptance_models.expected_accept_length`)
then overstates measured tokens per step, the more so the better the heads (see
``benchmarks/results/stories_e2e.json``). Everything here is numpy, vectorized over positions and
over many trees at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from treeopt.core.ranks import RankSequences
from treeopt.core.tree import Path, Tree
from treeopt.errors import TreeoptError

# Chain entries past the last matched node: larger than any node count.
UNMATCHED = np.iinfo(np.int64).max
# Most (tree, position) accept lengths tabulated at once by nested_tokens_per_step
# (int16: 64 MiB).
NESTED_TABLE_ENTRIES = 1 << 25


# ------------------------------------------------------------------ replay
def _chain_ids(paths: Sequence[Path], sequences: RankSequences) -> np.ndarray:
    """``(N, K)``: at each position, the index in ``paths`` of its depth-j prefix.

    Entry ``[t, j]`` is the index of ``ranks[t, :j + 1]`` in ``paths`` if that prefix
    and all shorter ones are listed, else ``UNMATCHED``. ``paths`` must list every
    path's parent before it (insertion order or canonical order).
    """
    ranks = sequences.ranks.astype(np.int64)
    num_positions, num_heads = ranks.shape
    chain = np.full((num_positions, num_heads), UNMATCHED, dtype=np.int64)
    if not paths:
        return chain
    width = max(sequences.top_k, max(max(path) for path in paths) + 1)
    node_of = {path: index for index, path in enumerate(paths)}
    # Node i's key is parent's id * width + rank, the root's id being 0 and node i's i + 1.
    keys = np.array([(node_of[path[:-1]] + 1 if len(path) > 1 else 0) * width + path[-1]
                     for path in paths], dtype=np.int64)
    order = np.argsort(keys)
    sorted_keys = keys[order]
    current = np.zeros(num_positions, dtype=np.int64)  # id of the node matched so far
    active = np.ones(num_positions, dtype=bool)
    for depth in range(num_heads):
        rank = ranks[:, depth]
        candidate = current * width + np.clip(rank, 0, width - 1)
        slot = np.minimum(np.searchsorted(sorted_keys, candidate), len(keys) - 1)
        found = (active & (rank >= 0) & (rank < sequences.top_k)
                 & (sorted_keys[slot] == candidate))
        node = order[slot]
        chain[found, depth] = node[found]
        current = np.where(found, node + 1, current)
        active = found
        if not active.any():
            break
    return chain


def accept_lengths(tree: Tree, sequences: RankSequences) -> np.ndarray:
    """``(N,)`` tokens a greedy step at each position emits with ``tree`` (1 + nodes accepted)."""
    _check_depth(tree.depth, sequences)
    chain = _chain_ids(tree.paths, sequences)
    return 1 + np.sum(chain != UNMATCHED, axis=1)


def _walk(lengths_at: object, sequences: RankSequences, num_trees: int,
          record_visits: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Walk every prompt for ``num_trees`` trees at once.

    ``lengths_at(rows)`` maps a ``(num_trees, prompts)`` array of rows to the tokens
    each tree's step there emits. Returns ``(emitted, steps, visited)``: per tree,
    tokens emitted (a last step running past the text counts in full) and steps;
    ``visited`` (``(N,)`` bool, tree 0's walk) only if ``record_visits``.
    """
    starts, ends = sequences.bounds()
    position = np.broadcast_to(starts, (num_trees, len(starts))).copy()
    emitted = np.zeros(num_trees, dtype=np.int64)
    steps = np.zeros(num_trees, dtype=np.int64)
    visited = np.zeros(len(sequences), dtype=bool) if record_visits else None
    active = position < ends
    while active.any():
        rows = np.where(active, position, 0)
        gained = np.where(active, lengths_at(rows), 0)  # type: ignore[operator]
        emitted += gained.sum(axis=1)
        steps += active.sum(axis=1)
        if visited is not None:
            visited[rows[0][active[0]]] = True
        position += gained
        active = position < ends
    return emitted, steps, visited


def _ratio(emitted: np.ndarray, steps: np.ndarray) -> np.ndarray:
    if np.any(steps == 0):
        raise TreeoptError("no decoding positions to replay")
    return emitted / steps


def replay(tree: Tree, sequences: RankSequences) -> tuple[float, np.ndarray]:
    """Greedy decoding with ``tree`` walked over the profiled text.

    Returns ``(tokens per verification step, visited)``, ``visited`` being ``(N,)``
    bool: the positions decoding takes a step at. Exact replay of decoding's walk
    (see the module docstring), so the rate matches the runtime's measured rate on
    the same prompts.
    """
    lengths = accept_lengths(tree, sequences)
    emitted, steps, visited = _walk(lambda rows: lengths[rows], sequences, 1,
                                    record_visits=True)
    assert visited is not None
    return float(_ratio(emitted, steps)[0]), visited


def tokens_per_step(tree: Tree, data: RankSequences | Any) -> float:
    """Tokens per verification step greedy decoding with ``tree`` gets on the profiled text.

    ``data``: a measured :class:`~treeopt.core.profile.Profile` (its ``sequences``) or
    :class:`RankSequences`. A profile without rank vectors (the shipped ones,
    made from published accuracies) is a one-line TreeoptError.
    """
    sequences = getattr(data, "sequences", data)
    if not isinstance(sequences, RankSequences):
        raise TreeoptError(
            "tokens per step needs the rank vectors `treeopt profile` keeps "
            "(PROFILE.json.ranks.npz beside the profile); this profile has none"
        )
    return replay(tree, sequences)[0]


def nested_tokens_per_step(order: Sequence[Path], sequences: RankSequences) -> np.ndarray:
    """Tokens per step of every nested tree: entry ``n - 1`` is for the first ``n - 1`` nodes.

    ``order`` lists nodes so that each prefix of it is a tree (parents first), as
    :func:`treeopt.optimize.build.build_tree` inserts them. Returns ``len(order) + 1`` values,
    the first (root only: plain decoding) being 1.0.
    """
    if order:
        _check_depth(max(len(path) for path in order), sequences)
    return nested_tokens_per_step_of_chain(_chain_ids(order, sequences), sequences,
                                           len(order) + 1)


def nested_tokens_per_step_of_chain(chain: np.ndarray, sequences: RankSequences,
                                    num_trees: int) -> np.ndarray:
    """Tokens per step of nested trees given where each position's true path enters them.

    ``chain[t, j]``: the index (in a parents-first order) of the node holding the true
    depth-``j + 1`` token at position ``t``, or ``UNMATCHED``; the tree of the first
    ``m`` nodes accepts the entries below ``m``, so a child's index must exceed its
    parent's. Returns ``num_trees`` values, for the first ``0..num_trees - 1`` nodes.
    """
    num_positions = len(sequences)
    # A parent precedes its children in ``order``, so the tree of the first m nodes
    # accepts exactly the chain entries with index < m: position t's accept length
    # rises by one at m = chain[t, j] + 1. Tabulate lengths[m, t] by a cumulative sum,
    # in blocks of trees to bound memory.
    matched = chain != UNMATCHED
    rises_at = chain[matched] + 1
    columns = np.broadcast_to(np.arange(num_positions)[:, None], chain.shape)[matched]
    block = max(1, NESTED_TABLE_ENTRIES // max(num_positions, 1))
    emitted = np.zeros(num_trees, dtype=np.int64)
    steps = np.zeros(num_trees, dtype=np.int64)
    for first in range(0, num_trees, block):
        last = min(num_trees, first + block)
        rises = np.zeros((last - first, num_positions), dtype=np.int16)
        below = rises_at <= first  # already in the block's first tree
        np.add.at(rises[0], columns[below], 1)
        inside = ~below & (rises_at < last)
        np.add.at(rises, (rises_at[inside] - first, columns[inside]), 1)
        lengths = 1 + np.cumsum(rises, axis=0, dtype=np.int16)
        tree_index = np.arange(last - first)[:, None]
        emitted[first:last], steps[first:last], _ = _walk(
            lambda rows, lengths=lengths, tree_index=tree_index: lengths[tree_index, rows],
            sequences, last - first)
    return _ratio(emitted, steps)


def _check_depth(depth: int, sequences: RankSequences) -> None:
    if depth > sequences.num_heads:
        raise TreeoptError(
            f"tree is {depth} deep but the rank vectors have {sequences.num_heads} heads"
        )
