"""Expansion files (``PROFILE.json.expansion.npz``): a drafter's recorded beam expansion.

Written by ``treeopt profile --draft-model D --expand K_MAX,D_MAX`` beside the
profile and its rank vectors (``PROFILE.json.ranks.npz``); one row per rank-vector
row. Arrays (:class:`treeopt.core.expansion.DraftExpansion`): ``node_offsets``
int64 ``(P + 1,)``, ``parent`` int32 and ``rank`` int16 ``(M,)``, ``child_probs``
float32 ``(M, k_max)``, scalars ``k_max`` and ``d_max``. The profile's provenance
records ``expansion: {k_max, d_max, nodes, sha256}``, so a stale or swapped file is
refused. Size: about ``6 + 4 * k_max`` bytes a node (uncompressed), at most
``1 + (d_max - 1) * k_max (k_max + 1) / 2`` nodes a position.
"""

from __future__ import annotations

import os
from pathlib import Path as FilePath
from typing import Any

import numpy as np

from treeopt.core.atomic import atomic_path
from treeopt.core.expansion import DraftExpansion
from treeopt.errors import TreeoptError, first_line

EXPANSION_SUFFIX = ".expansion.npz"
ARRAYS = ("node_offsets", "parent", "rank", "child_probs", "k_max", "d_max")
PROVENANCE_KEY = "expansion"


def expansion_path(profile_path: str | os.PathLike[str]) -> FilePath:
    """Where the expansion behind profile ``profile_path`` is kept (beside it)."""
    return FilePath(f"{os.fspath(profile_path)}{EXPANSION_SUFFIX}")


def expansion_record(expansion: DraftExpansion) -> dict[str, Any]:
    """What the profile's provenance says about its expansion (checked on load)."""
    return {"k_max": int(expansion.k_max), "d_max": int(expansion.d_max),
            "positions": len(expansion), "nodes": expansion.num_nodes,
            "sha256": expansion.digest()}


def save_expansion(path: str | os.PathLike[str], expansion: DraftExpansion) -> None:
    """Write ``expansion`` as ``.npz``, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, node_offsets=expansion.node_offsets.astype(np.int64),
                 parent=expansion.parent.astype(np.int32), rank=expansion.rank.astype(np.int16),
                 child_probs=expansion.child_probs.astype(np.float32),
                 k_max=int(expansion.k_max), d_max=int(expansion.d_max))


def read_expansion(path: str | os.PathLike[str]) -> DraftExpansion:
    """Read what :func:`save_expansion` wrote; one-line TreeoptError naming ``path``."""
    where = f"expansion {path}"
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [name for name in ARRAYS if name not in data.files]
            if missing:
                raise TreeoptError(f"{where}: missing {', '.join(missing)}")
            arrays = {name: data[name] for name in ARRAYS}
    except TreeoptError:
        raise
    except FileNotFoundError:
        raise TreeoptError(f"cannot read {where}: no such file") from None
    except Exception as exc:  # numpy and zipfile raise many kinds for broken files
        raise TreeoptError(f"cannot read {where}: {first_line(exc)}") from None
    for name in ARRAYS[:3]:
        if not np.issubdtype(arrays[name].dtype, np.integer):
            raise TreeoptError(f"{where}: {name} must be integers")
    if not np.issubdtype(arrays["child_probs"].dtype, np.floating) or \
            arrays["k_max"].shape != () or arrays["d_max"].shape != ():
        raise TreeoptError(f"{where}: child_probs must be floats, k_max and d_max integers")
    try:
        return DraftExpansion(int(arrays["k_max"]), int(arrays["d_max"]),
                              arrays["node_offsets"].astype(np.int64), arrays["parent"],
                              arrays["rank"], arrays["child_probs"].astype(np.float32))
    except TreeoptError as exc:
        raise TreeoptError(f"{where}: {exc}") from None


def load_expansion(profile_path: str | os.PathLike[str], profile: Any) -> DraftExpansion:
    """The expansion beside ``profile_path``, checked against ``profile`` (loaded from it).

    One-line TreeoptError when the profile has none (saying how to record one), or
    when the file is not the one the profile recorded.
    """
    record = (profile.provenance or {}).get(PROVENANCE_KEY)
    sidecar = expansion_path(profile_path)
    if not isinstance(record, dict) or not sidecar.exists():
        raise TreeoptError(
            f"{profile_path} has no drafter expansion: record one with treeopt profile "
            "--draft-model D --expand K_MAX,D_MAX (dynamic:S,K,N is scored from it)")
    expansion = read_expansion(sidecar)
    if record.get("sha256") != expansion.digest() or profile.sequences is None \
            or len(expansion) != len(profile.sequences):
        raise TreeoptError(f"{sidecar}: not the expansion {profile_path} was made with "
                           "(re-run treeopt profile --expand, or delete the stale file)")
    return expansion
