"""Ordered rank vectors of profiled text (what replayed decoding walks over).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from treeopt.errors import TreeoptError


@dataclass(frozen=True, eq=False)
class RankSequences:
    """Ordered rank vectors of profiled text, by prompt.

    Attributes:
        ranks: ``(N, K)`` ints, each prompt's rows contiguous and in text order.
        groups: ``(N,)`` prompt index of each row.
        first_decode_index: ``first_decode_index[g]`` is the row, within prompt
            ``g``'s rows, where decoding's first step is (its last prompt token).
        top_k: ranks recorded per head; a rank ``>= top_k`` or ``< 0`` is a miss.
        probs: optional ``(N, K, top_k)``: head ``k + 1``'s probability of its rank-``i``
            token at row ``t`` (what a per-step tree policy sees; ``treeopt profile``
            records it).
    """

    ranks: np.ndarray
    groups: np.ndarray
    first_decode_index: np.ndarray
    top_k: int
    probs: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.ranks.ndim != 2 or self.groups.shape != (self.ranks.shape[0],):
            raise TreeoptError(
                f"rank vectors must be (positions, heads) with one group per position, not "
                f"{self.ranks.shape} and {self.groups.shape}"
            )
        if len(self.groups) and not _contiguous(self.groups):
            raise TreeoptError("each prompt's rank vectors must be contiguous")
        if self.probs is not None and self.probs.shape != (*self.ranks.shape, self.top_k):
            raise TreeoptError(
                f"head probabilities must be (positions, heads, top_k) = "
                f"{(*self.ranks.shape, self.top_k)}, not {self.probs.shape}"
            )

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
                             self.top_k, None if self.probs is None else self.probs[keep])


def _contiguous(groups: np.ndarray) -> bool:
    changes = np.flatnonzero(np.diff(groups)) + 1
    firsts = groups[np.concatenate(([0], changes))]
    return len(np.unique(firsts)) == len(firsts)


