"""Rank-vector files (``PROFILE.json.ranks.npz``): ordered rank vectors beside a profile.
"""

from __future__ import annotations

import os
from pathlib import Path as FilePath

import numpy as np

from treeopt.core.atomic import atomic_path
from treeopt.core.ranks import RankSequences
from treeopt.errors import TreeoptError

RANKS_SUFFIX = ".ranks.npz"


def ranks_path(profile_path: str | os.PathLike[str]) -> FilePath:
    """Where the rank vectors behind profile ``profile_path`` are kept (beside it)."""
    return FilePath(f"{os.fspath(profile_path)}{RANKS_SUFFIX}")


def save_rank_sequences(path: str | os.PathLike[str], sequences: RankSequences) -> None:
    """Write ``sequences`` as ``.npz``, atomically (ranks as int16 when they fit; head
    probabilities, when present, as float16: a policy needs no more precision)."""
    ranks = sequences.ranks
    if ranks.size and ranks.min() >= -(1 << 15) and ranks.max() < (1 << 15):
        ranks = ranks.astype(np.int16)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        extra = {} if sequences.probs is None else {"probs": sequences.probs.astype(np.float16)}
        np.savez(handle, ranks=ranks, groups=sequences.groups,
                 first_decode_index=sequences.first_decode_index, top_k=sequences.top_k,
                 **extra)


def load_rank_sequences(path: str | os.PathLike[str], top_k: int | None = None) -> RankSequences:
    """Read what :func:`save_rank_sequences` wrote (``top_k`` for files without one)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = int(data["top_k"]) if "top_k" in data else top_k
            if stored is None:
                raise KeyError("top_k")
            probs = data["probs"].astype(np.float32) if "probs" in data else None
            return RankSequences(data["ranks"], data["groups"], data["first_decode_index"],
                                 stored, probs)
    except (OSError, ValueError, KeyError) as exc:
        raise TreeoptError(f"cannot read rank vectors {path}: {exc}") from None


