"""Ordered rank vectors of profiled text (what replayed decoding walks over).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from treeopt.errors import TreeoptError

MISS = -1  # the rank recorded when the true token is not in a head's top-k


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
        """Check dtypes, shapes and ranges: every array must be what the profile summarized."""
        for name in ("ranks", "groups", "first_decode_index"):
            array = getattr(self, name)
            if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.integer):
                kind = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
                raise TreeoptError(f"{name} must be an integer array, not {kind}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)) \
                or self.top_k < 1:
            raise TreeoptError(f"top_k must be a positive integer, not {self.top_k!r}")
        if self.ranks.ndim != 2 or self.groups.shape != (self.ranks.shape[0],):
            raise TreeoptError(
                f"rank vectors must be (positions, heads) with one group per position, not "
                f"{self.ranks.shape} and {self.groups.shape}"
            )
        if self.ranks.size and self.ranks.min() < MISS:
            raise TreeoptError(
                f"ranks must be >= {MISS} ({MISS} or >= top_k: a miss), not {self.ranks.min()}"
            )
        if self.first_decode_index.ndim != 1:
            raise TreeoptError("first_decode_index must be one value per prompt")
        if self.probs is not None:
            if not isinstance(self.probs, np.ndarray) or \
                    not np.issubdtype(self.probs.dtype, np.floating):
                raise TreeoptError("head probabilities must be a float array")
            if self.probs.shape != (*self.ranks.shape, self.top_k):
                raise TreeoptError(
                    f"head probabilities must be (positions, heads, top_k) = "
                    f"{(*self.ranks.shape, self.top_k)}, not {self.probs.shape}"
                )
            if self.probs.size and not (np.all(np.isfinite(self.probs))
                                        and self.probs.min() >= 0 and self.probs.max() <= 1):
                raise TreeoptError("head probabilities must be finite numbers in [0, 1]")
        if len(self.groups) == 0:
            return
        if self.groups.min() < 0 or self.groups.max() >= len(self.first_decode_index):
            raise TreeoptError(
                f"prompt indices must lie in 0..{len(self.first_decode_index) - 1} "
                f"(one first_decode_index each), not {self.groups.min()}..{self.groups.max()}"
            )
        if not _contiguous(self.groups):
            raise TreeoptError("each prompt's rank vectors must be contiguous")
        ids, counts = np.unique(self.groups, return_counts=True)
        first = self.first_decode_index[ids]
        if np.any(first < 0) or np.any(first >= counts):
            raise TreeoptError("a first_decode_index lies outside its prompt's rows")

    def digest(self) -> str:
        """SHA-256 of the arrays in order: what a profile records to recognise its own vectors.

        Head probabilities count as the float16 the file keeps (exact after a round trip).
        """
        hasher = hashlib.sha256(f"top_k={int(self.top_k)};".encode())
        for array in (self.ranks, self.groups, self.first_decode_index):
            hasher.update(str(array.shape).encode())
            hasher.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
        if self.probs is not None:
            hasher.update(np.ascontiguousarray(self.probs, dtype=np.float16).tobytes())
        return hasher.hexdigest()

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


