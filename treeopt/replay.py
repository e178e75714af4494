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
positions. The position average (:func:`treeopt.evaluate.expected_accept_length`)
then overstates measured tokens per step, the more so the better the heads (see
``benchmarks/results/stories_e2e.json``). Everything here is numpy, vectorized over positions and
over many trees at once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Any

import numpy as np

from treeopt.errors import TreeoptError
from treeopt.fileio import atomic_path
from treeopt.tree import Path, Tree

RANKS_SUFFIX = ".ranks.npz"
# Chain entries past the last matched node: larger than any node count.
UNMATCHED = np.iinfo(np.int64).max
# Most (tree, position) accept lengths tabulated at once by nested_tokens_per_step
# (int16: 64 MiB).
NESTED_TABLE_ENTRIES = 1 << 25


@dataclass(frozen=True, eq=False)
class RankSequences:
    """Ordered rank vectors of profiled text, by prompt.

    Attributes:
        ranks: ``(N, K)`` ints, each prompt's rows contiguous and in text order.
        groups: ``(N,)`` prompt index of each row.
        first_decode_index: ``first_decode_index[g]`` is the row, within prompt
            ``g``'s rows, where decoding's first step is (its last prompt token).
        top_k: ranks recorded per head; a rank ``>= top_k`` or ``< 0`` is a miss.
    """

    ranks: np.ndarray
    groups: np.ndarray
    first_decode_index: np.ndarray
    top_k: int

    def __post_init__(self) -> None:
        if self.ranks.ndim != 2 or self.groups.shape != (self.ranks.shape[0],):
            raise TreeoptError(
                f"rank vectors must be (positions, heads) with one group per position, not "
                f"{self.ranks.shape} and {self.groups.shape}"
            )
        if len(self.groups) and not _contiguous(self.groups):
            raise TreeoptError("each prompt's rank vectors must be contiguous")

    @property
    def num_heads(self) -> int:
        return int(self.ranks.shape[1])

    def __len__(self) -> int:
        return int(self.ranks.shape[0])

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(start, end)`` rows of each prompt's walk: first decoding row, one past its last."""
        ids, first_rows, counts = np.unique(self.groups, return_index=True, return_counts=True)
        starts = first_rows + self.first_decode_index[ids]
        return starts.astype(np.int64), (first_rows + counts).astype(np.int64)

    def subset(self, group_ids: Sequence[int]) -> RankSequences:
        """The rows of the given prompt indices only (indices keep their meaning)."""
        keep = np.isin(self.groups, np.asarray(list(group_ids), dtype=self.groups.dtype))
        return RankSequences(self.ranks[keep], self.groups[keep], self.first_decode_index,
                             self.top_k)


def _contiguous(groups: np.ndarray) -> bool:
    changes = np.flatnonzero(np.diff(groups)) + 1
    firsts = groups[np.concatenate(([0], changes))]
    return len(np.unique(firsts)) == len(firsts)


# --------------------------------------------------------------------- files
def ranks_path(profile_path: str | os.PathLike[str]) -> FilePath:
    """Where the rank vectors behind profile ``profile_path`` are kept (beside it)."""
    return FilePath(f"{os.fspath(profile_path)}{RANKS_SUFFIX}")


def save_rank_sequences(path: str | os.PathLike[str], sequences: RankSequences) -> None:
    """Write ``sequences`` as ``.npz``, atomically (ranks as int16 when they fit)."""
    ranks = sequences.ranks
    if ranks.size and ranks.min() >= -(1 << 15) and ranks.max() < (1 << 15):
        ranks = ranks.astype(np.int16)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, ranks=ranks, groups=sequences.groups,
                 first_decode_index=sequences.first_decode_index, top_k=sequences.top_k)


def load_rank_sequences(path: str | os.PathLike[str], top_k: int | None = None) -> RankSequences:
    """Read what :func:`save_rank_sequences` wrote (``top_k`` for files without one)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = int(data["top_k"]) if "top_k" in data else top_k
            if stored is None:
                raise KeyError("top_k")
            return RankSequences(data["ranks"], data["groups"], data["first_decode_index"],
                                 stored)
    except (OSError, ValueError, KeyError) as exc:
        raise TreeoptError(f"cannot read rank vectors {path}: {exc}") from None


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

    ``data``: a measured :class:`~treeopt.profile.Profile` (its ``sequences``) or
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
    :func:`treeopt.build.build_tree` inserts them. Returns ``len(order) + 1`` values,
    the first (root only: plain decoding) being 1.0.
    """
    if order:
        _check_depth(max(len(path) for path in order), sequences)
    chain = _chain_ids(order, sequences)
    num_trees, num_positions = len(order) + 1, len(sequences)
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
