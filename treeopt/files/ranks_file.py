"""Rank-vector files (``PROFILE.json.ranks.npz``): ordered rank vectors beside a profile.

Reading checks every array's dtype, shape and range (:class:`RankSequences`) and
turns every way the file can be broken (empty, truncated, not an ``.npz``, a
plain array, pickled objects) into one line naming it.
"""

from __future__ import annotations

import os
from pathlib import Path as FilePath

import numpy as np

from treeopt.core.atomic import atomic_path
from treeopt.core.ranks import RankSequences
from treeopt.errors import TreeoptError
from treeopt.files.npzdoc import read_npz

RANKS_SUFFIX = ".ranks.npz"
ARRAYS = ("ranks", "groups", "first_decode_index")


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
    """Read what :func:`save_rank_sequences` wrote (``top_k`` for files without one).

    One-line TreeoptError naming ``path`` for a file that is not such an ``.npz``
    or whose arrays are not valid rank vectors.
    """
    where = f"rank vectors {path}"
    data = read_npz(path, where, ARRAYS)
    stored = top_k
    if "top_k" in data:
        value = data["top_k"]
        if value.shape != () or not np.issubdtype(value.dtype, np.integer):
            raise TreeoptError(f"{where}: top_k must be one integer")
        stored = int(value)
    if stored is None:
        raise TreeoptError(f"{where}: missing top_k")
    arrays = [data[name] for name in ARRAYS]
    probs = data.get("probs")
    if probs is not None and np.issubdtype(probs.dtype, np.floating):
        probs = probs.astype(np.float32)
    try:
        return RankSequences(*arrays, stored, probs)
    except TreeoptError as exc:
        raise TreeoptError(f"{where}: {exc}") from None
