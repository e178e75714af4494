"""Acceptance profiles, format ``treeopt.profile/1``: what profiling heads yields.

For every calibration position t and Medusa head k (k = 1..K), profiling records
``r_k``, the 0-based rank of the base model's own token at t+1+k in head k's
distribution, or a *miss* when it falls outside the recorded ``top_k``. A profile
keeps two summaries of those rank vectors:

- ``marginal[k][i] = P(r_{k+1} == i)`` (K x top_k; a row sums to <= 1, the rest
  being the miss probability).
- ``joint``: for each position, the longest prefix ``(r_1, ..., r_j)`` whose ranks
  are all ``< top_k``, counted per distinct prefix (``()`` counts positions where
  head 1 missed). This is exact for tree evaluation: at a position, a tree accepts
  the longest prefix of that position's rank vector that is a node of the tree.

Profiles measured by prompt keep the same counts per prompt (``groups``), so a
profile can be split into a training part and a held-out part by prompt.

A measured profile also keeps its ordered rank vectors beside the JSON
(``PROFILE.json.ranks.npz``, :mod:`treeopt.optimize.replay`); :func:`load_profile`
attaches them as ``sequences``, so trees can be scored by tokens per decoding
step, replaying decoding's walk, not only by the position average.

.. code-block:: json

    {"format": "treeopt.profile/1", "num_heads": 2, "top_k": 2, "num_positions": 4,
     "marginal": [[0.5, 0.25], [0.5, 0.25]],
     "joint": [[[], 1], [[0], 1], [[0, 1], 1], [[1, 0], 1]],
     "groups": [{"num_positions": 2, "marginal_counts": [[2, 0], [0, 1]],
                 "joint": [[[0], 1], [[0, 1], 1]]},
                {"num_positions": 2, "marginal_counts": [[0, 1], [2, 0]],
                 "joint": [[[], 1], [[1, 0], 1]]}],
     "provenance": {"model": "...", "dataset": "..."}}

The JSON Schema ships as ``treeopt/schemas/profile.schema.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from treeopt.core.checks import check_int
from treeopt.core.ranks import RankSequences
from treeopt.core.tree import Path
from treeopt.errors import ParameterError, TreeoptError

FORMAT = "treeopt.profile/1"

# Probabilities read from JSON went through decimal printing; a row of
# differences of cumulative accuracies may sum to 1 + a few ulps.
PROBABILITY_TOLERANCE = 1e-9

JointCounts = dict[Path, int]


@dataclass(frozen=True, eq=False)
class ProfileGroup:
    """The counts of one prompt (or any unit that must not be split)."""

    num_positions: int
    marginal_counts: np.ndarray  # (num_heads, top_k) int: positions with r_k == i
    joint: JointCounts


@dataclass(frozen=True, eq=False)
class Profile:
    """Per-head rank statistics of a model's Medusa heads on a calibration set.

    Attributes:
        num_heads: Medusa heads profiled (K).
        top_k: ranks recorded per head; a rank ``>= top_k`` is a miss.
        marginal: ``(num_heads, top_k)`` float array, ``P(r_k == i)``.
        joint: count per distinct longest in-top-k rank prefix, or ``None`` for a
            marginal-only profile (e.g. imported from published accuracies).
        num_positions: calibration positions (0 when unknown, e.g. published figures).
        provenance: free-form: model, heads, dataset, split, dtype, created, version.
        groups: the same counts per prompt, for held-out splits; ``None`` if not kept.
        sequences: the ordered rank vectors summarized, for replaying decoding
            (:mod:`treeopt.optimize.replay`); ``None`` if not at hand. Not part of the JSON.
    """

    num_heads: int
    top_k: int
    marginal: np.ndarray
    joint: JointCounts | None = None  # insertion order is not meaningful
    num_positions: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)
    groups: tuple[ProfileGroup, ...] | None = None
    sequences: RankSequences | None = None

    # ----------------------------------------------------------- construction
    @classmethod
    def from_rank_vectors(
        cls,
        ranks: Sequence[Sequence[int]] | np.ndarray,
        top_k: int,
        groups: Sequence[int] | np.ndarray | None = None,
        provenance: Mapping[str, Any] | None = None,
        first_decode_index: Sequence[int] | np.ndarray | None = None,
        probs: np.ndarray | None = None,
    ) -> Profile:
        """Summarize measured rank vectors.

        Args:
            ranks: ``(N positions, K heads)`` ints; ``ranks[t, k]`` is the rank of
                the true future token in head k+1's distribution at position t, or
                -1 (or any value ``>= top_k``) for a miss.
            top_k: ranks recorded per head.
            groups: ``(N,)`` prompt index of each position, so the profile can be
                split by prompt; ``None`` keeps no grouping.
            provenance: free-form description stored with the profile.
            first_decode_index: per prompt index, the row (within that prompt's
                rows, which must be contiguous and in text order) where decoding's
                first step is; given, the rank vectors are kept as ``sequences``.
            probs: optional ``(N, K, top_k)`` head probabilities of each rank, kept
                with the sequences (for per-step tree policies).
        """
        top_k = _positive_int(top_k, "top_k")
        array = np.asarray(ranks)
        if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
            raise TreeoptError(
                f"rank vectors must be a non-empty (positions, heads) array, not shape "
                f"{array.shape}"
            )
        if not np.issubdtype(array.dtype, np.integer):
            raise TreeoptError(f"rank vectors must be integers, not {array.dtype}")
        if groups is None:
            group_ids = np.zeros(array.shape[0], dtype=np.int64)
        else:
            group_ids = np.asarray(groups)
            if group_ids.shape != (array.shape[0],):
                raise TreeoptError(
                    f"groups must have one entry per position ({array.shape[0]}), "
                    f"not shape {group_ids.shape}"
                )
        parts = [
            _group_from_ranks(array[group_ids == gid], top_k) for gid in np.unique(group_ids)
        ]
        profile = cls.from_groups(
            parts, array.shape[1], top_k, dict(provenance or {}), keep_groups=groups is not None
        )
        if first_decode_index is None:
            return profile
        # Counted from these very rank vectors: nothing to check against.
        return replace(profile, sequences=RankSequences(
            array, group_ids, np.asarray(first_decode_index, dtype=np.int64), top_k, probs
        ))

    @classmethod
    def from_groups(
        cls,
        groups: Sequence[ProfileGroup],
        num_heads: int,
        top_k: int,
        provenance: Mapping[str, Any] | None = None,
        keep_groups: bool = True,
    ) -> Profile:
        """The profile of the union of ``groups`` (per-prompt counts)."""
        if not groups:
            raise TreeoptError("a profile needs at least one group of positions")
        num_positions = sum(group.num_positions for group in groups)
        if num_positions == 0:
            raise TreeoptError("a measured profile needs at least one position")
        counts = np.sum([group.marginal_counts for group in groups], axis=0)
        joint: JointCounts = {}
        for group in groups:
            for prefix, count in group.joint.items():
                joint[prefix] = joint.get(prefix, 0) + count
        return cls(
            num_heads=num_heads,
            top_k=top_k,
            marginal=counts / num_positions,
            joint=joint,
            num_positions=num_positions,
            provenance=dict(provenance or {}),
            groups=tuple(groups) if keep_groups else None,
        )

    @classmethod
    def from_cumulative_accuracy(
        cls,
        rows: Sequence[Sequence[float]] | np.ndarray,
        provenance: Mapping[str, Any] | None = None,
    ) -> Profile:
        """A marginal-only profile from cumulative top-1..top-k accuracies.

        ``rows[k][i]`` is P(r_{k+1} <= i) (head k+1's top-(i+1) accuracy), so
        ``marginal[k][i] = rows[k][i] - rows[k][i-1]``. Raises TreeoptError if a row
        is not non-decreasing within [0, 1].
        """
        cumulative = np.asarray(rows, dtype=float)
        if cumulative.ndim != 2 or cumulative.size == 0:
            raise TreeoptError(
                f"cumulative accuracies must be a (heads, top_k) table, not shape "
                f"{cumulative.shape}"
            )
        for head, row in enumerate(cumulative, start=1):
            if not np.all(np.isfinite(row)) or row.min() < 0 or row.max() > 1:
                raise TreeoptError(
                    f"head {head}: accuracies must lie in [0, 1], got {row.tolist()}"
                )
            if np.any(np.diff(row) < -PROBABILITY_TOLERANCE):
                raise TreeoptError(
                    f"head {head}: cumulative top-k accuracies must not decrease, "
                    f"got {row.tolist()}"
                )
        marginal = np.clip(np.diff(cumulative, axis=1, prepend=0.0), 0.0, 1.0)
        return cls(
            num_heads=cumulative.shape[0],
            top_k=cumulative.shape[1],
            marginal=marginal,
            joint=None,
            num_positions=0,
            provenance=dict(provenance or {}),
        )

    # ------------------------------------------------------------- derived
    @property
    def has_joint(self) -> bool:
        """Whether joint counts were recorded (needed by the joint and blend models)."""
        return self.joint is not None

    @cached_property
    def prefix_mass(self) -> dict[Path, int]:
        """Positions whose longest in-top-k prefix starts with each path (root included).

        ``prefix_mass[p] / num_positions`` is the joint model's probability that a
        tree containing ``p`` accepts ``p``.
        """
        if self.joint is None:
            raise TreeoptError("this profile has no joint counts (marginal only)")
        mass: dict[Path, int] = {}
        for prefix, count in self.joint.items():
            for length in range(len(prefix) + 1):
                key = prefix[:length]
                mass[key] = mass.get(key, 0) + count
        return mass

    @cached_property
    def child_counts(self) -> dict[Path, np.ndarray]:
        """For each path with positions below it: ``prefix_mass`` of ``path + (i,)``, i < top_k."""
        children: dict[Path, np.ndarray] = {}
        for path, count in self.prefix_mass.items():
            if path:
                row = children.setdefault(path[:-1], np.zeros(self.top_k))
                row[path[-1]] = count
        return children

    def with_sequences(self, sequences: RankSequences | None) -> Profile:
        """This profile with ``sequences`` attached, after checking they are what it summarizes.

        Raises TreeoptError if their shape, positions, per-head counts or prompts
        differ from the profile's.
        """
        if sequences is None:
            return replace(self, sequences=None)
        counts = np.round(self.marginal * self.num_positions).astype(np.int64)
        prompts = len(np.unique(sequences.groups))
        if (
            self.joint is None
            or sequences.top_k != self.top_k
            or len(sequences) != self.num_positions
            or sequences.num_heads != self.num_heads
            or not np.array_equal(_marginal_counts(sequences.ranks, self.top_k), counts)
            or (self.groups is not None and prompts != len(self.groups))
        ):
            raise TreeoptError(
                "the rank vectors do not match the profile (different positions, heads, top-k "
                "or counts): re-run treeopt profile, or delete the stale .ranks.npz file"
            )
        return replace(self, sequences=sequences)

    def _group_ids(self) -> np.ndarray:
        """Prompt index (in ``sequences``) of each entry of ``groups``."""
        assert self.sequences is not None
        return np.unique(self.sequences.groups)

    def split(self, holdout_fraction: float, seed: int = 0) -> tuple[Profile, Profile]:
        """Split by prompt group into ``(train, heldout)``.

        ``round(holdout_fraction * groups)`` groups, at least one and leaving at
        least one, chosen by a seeded permutation, form the held-out part.
        """
        if not 0 < holdout_fraction < 1:
            raise ParameterError(
                "holdout_fraction", f"must be between 0 and 1 (exclusive), not {holdout_fraction}"
            )
        if self.groups is None or len(self.groups) < 2:
            raise TreeoptError(
                "this profile keeps no per-prompt groups (needs >= 2 to split; measure it with "
                "treeopt profile)"
            )
        count = len(self.groups)
        num_heldout = min(count - 1, max(1, round(holdout_fraction * count)))
        permutation = np.random.default_rng(seed).permutation(count)
        heldout_ids = sorted(int(i) for i in permutation[:num_heldout])
        train_ids = sorted(int(i) for i in permutation[num_heldout:])
        parts = []
        for part, ids in (("train", train_ids), ("heldout", heldout_ids)):
            provenance = dict(self.provenance)
            provenance["split"] = {
                "part": part, "holdout_fraction": holdout_fraction, "seed": seed, "groups": ids,
            }
            parts.append(self._part([self.groups[i] for i in ids], ids, provenance))
        return parts[0], parts[1]

    def _part(self, groups: list[ProfileGroup], ids: Sequence[int],
              provenance: dict[str, Any]) -> Profile:
        part = Profile.from_groups(groups, self.num_heads, self.top_k, provenance)
        if self.sequences is None:
            return part
        prompt_ids = self._group_ids()[list(ids)]
        return replace(part, sequences=self.sequences.subset(prompt_ids.tolist()))

    def subset(self, group_indices: Sequence[int]) -> Profile:
        """The profile of the given prompt groups only (for cross-validation)."""
        if self.groups is None:
            raise TreeoptError("this profile keeps no per-prompt groups")
        return self._part([self.groups[i] for i in group_indices], group_indices,
                          self.provenance)


def _group_from_ranks(ranks: np.ndarray, top_k: int) -> ProfileGroup:
    """Marginal counts and longest-prefix counts of one group's rank vectors."""
    hit = (ranks >= 0) & (ranks < top_k)
    counts = _marginal_counts(ranks, top_k)
    # Longest prefix: everything from the first miss on is dropped (set to -1).
    in_prefix = np.cumprod(hit, axis=1).astype(bool)
    masked = np.where(in_prefix, ranks, -1)
    unique_rows, row_counts = np.unique(masked, axis=0, return_counts=True)
    joint: JointCounts = {}
    for row, count in zip(unique_rows.tolist(), row_counts.tolist(), strict=True):
        length = row.index(-1) if -1 in row else len(row)
        joint[tuple(row[:length])] = int(count)
    return ProfileGroup(int(ranks.shape[0]), counts, joint)


def _marginal_counts(ranks: np.ndarray, top_k: int) -> np.ndarray:
    """``(heads, top_k)``: positions whose rank in each head is each ``i < top_k``."""
    hit = (ranks >= 0) & (ranks < top_k)
    counts = np.zeros((ranks.shape[1], top_k), dtype=np.int64)
    for head in range(ranks.shape[1]):
        counts[head] = np.bincount(ranks[hit[:, head], head], minlength=top_k)
    return counts


def _positive_int(value: object, name: str) -> int:
    return check_int(value, name, error=TreeoptError)


