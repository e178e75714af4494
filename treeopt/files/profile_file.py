"""Profile files (``treeopt.profile/1``): JSON I/O, schema check, the shipped profiles by name.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path as FilePath
from typing import Any

import numpy as np

from treeopt.core.atomic import atomic_write_text, output_set, remove_output
from treeopt.core.profile import FORMAT, PROBABILITY_TOLERANCE, JointCounts, Profile, ProfileGroup
from treeopt.core.tree import format_path
from treeopt.errors import TreeoptError
from treeopt.files.jsondoc import check_format, check_schema, numeric_array, shipped_schema
from treeopt.files.ranks_file import load_rank_sequences, ranks_path, save_rank_sequences

# The profile's record of its rank vectors (order included: a shuffled or swapped
# .ranks.npz summarizes to the same counts but replays a different walk).
RANKS_DIGEST = "rank_vectors_sha256"


# ------------------------------------------------------------------ JSON I/O
@cache
def schema() -> dict[str, Any]:
    """The shipped JSON Schema of ``treeopt.profile/1``."""
    return shipped_schema("profile.schema.json")


def _joint_to_json(joint: JointCounts) -> list[list[Any]]:
    """Entries in canonical order (depth, then ranks): diffable files."""
    ordered = sorted(joint.items(), key=lambda item: (len(item[0]), item[0]))
    return [[list(prefix), count] for prefix, count in ordered]


def profile_to_json(profile: Profile) -> dict[str, Any]:
    """The ``treeopt.profile/1`` object for ``profile``."""
    data: dict[str, Any] = {
        "format": FORMAT,
        "num_heads": profile.num_heads,
        "top_k": profile.top_k,
        "num_positions": profile.num_positions,
        "marginal": [[round(float(p), 12) for p in row] for row in profile.marginal],
        "joint": None if profile.joint is None else _joint_to_json(profile.joint),
    }
    if profile.groups is not None:
        data["groups"] = [
            {
                "num_positions": group.num_positions,
                "marginal_counts": group.marginal_counts.tolist(),
                "joint": _joint_to_json(group.joint),
            }
            for group in profile.groups
        ]
    data["provenance"] = profile.provenance
    if profile.sequences is not None:
        data[RANKS_DIGEST] = profile.sequences.digest()
    return data


def _joint_from_json(raw: list[Any], num_heads: int, top_k: int, where: str) -> JointCounts:
    joint: JointCounts = {}
    for prefix_raw, count in raw:
        prefix = tuple(prefix_raw)
        if len(prefix) > num_heads:
            raise TreeoptError(
                f"{where}: prefix {format_path(prefix)} is longer than num_heads {num_heads}"
            )
        if any(rank >= top_k for rank in prefix):
            raise TreeoptError(f"{where}: prefix {format_path(prefix)} has a rank >= top_k {top_k}")
        if prefix in joint:
            raise TreeoptError(f"{where}: prefix {format_path(prefix)} listed twice")
        joint[prefix] = count
    return joint


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _check_joint_entries(raw: Any, where: str) -> None:
    """The schema's ``$defs/joint``, in Python: ``[[prefix of ranks >= 0], count >= 0], ...``."""
    if not isinstance(raw, list):
        raise TreeoptError(f"{where} must be a list of [prefix, count] pairs")
    for index, entry in enumerate(raw):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], list)):
            raise TreeoptError(f"{where}/{index}: {entry!r:.60} is not a [prefix, count] pair")
        if not all(map(_is_count, entry[0])):
            raise TreeoptError(f"{where}/{index}/0: prefix {entry[0]!r:.60} must hold ranks >= 0")
        if not _is_count(entry[1]):
            raise TreeoptError(f"{where}/{index}/1: count {entry[1]!r:.40} must be an integer >= 0")


def _check_arrays(data: dict[str, Any]) -> None:
    """The schema's clauses for ``marginal``, ``joint`` and ``groups``, at Python speed.

    A measured profile holds thousands of joint entries: JSON Schema validation of
    them took seconds; these checks are at least as strict (tests hold the two to agree).
    """
    rows = data.get("marginal")
    if not (isinstance(rows, list) and rows and all(isinstance(row, list) and row for row in rows)):
        raise TreeoptError("marginal must be a non-empty list of non-empty rows")
    for head, row in enumerate(rows):
        bad = [rank for rank, p in enumerate(row) if not (type(p) in (int, float) and 0 <= p <= 1)]
        if bad:
            raise TreeoptError(
                f"marginal/{head}/{bad[0]}: {row[bad[0]]!r:.40} is not a probability in [0, 1]")
    if data.get("joint") is not None:
        _check_joint_entries(data["joint"], "joint")
    groups = data.get("groups")
    if groups is None:
        return
    if not isinstance(groups, list) or not groups:
        raise TreeoptError("groups must be a non-empty list of objects")
    for index, group in enumerate(groups):
        where = f"groups/{index}"
        if not isinstance(group, dict) or not _is_count(group.get("num_positions")):
            raise TreeoptError(f"{where} must be an object with a num_positions count")
        counts = group.get("marginal_counts")
        if not (isinstance(counts, list) and all(isinstance(row, list) and all(map(_is_count, row))
                                                for row in counts)):
            raise TreeoptError(f"{where}: marginal_counts must be rows of non-negative integers")
        _check_joint_entries(group.get("joint"), f"{where}/joint")


def profile_from_json(data: Any) -> Profile:
    """Validate a parsed ``treeopt.profile/1`` object; one-line TreeoptError otherwise."""
    check_format(data, FORMAT, "profile file")
    _check_arrays(data)
    check_schema(data, schema(), "profile", checked=("marginal", "joint", "groups"))
    num_heads, top_k = data["num_heads"], data["top_k"]
    rows = data["marginal"]
    if len({len(row) for row in rows}) > 1:
        raise TreeoptError(f"marginal rows must all have top_k = {top_k} values (ragged rows)")
    marginal = numeric_array(rows, float, "marginal", ndim=2)
    if marginal.shape != (num_heads, top_k):
        raise TreeoptError(
            f"marginal must be num_heads x top_k = {num_heads} x {top_k}, "
            f"not {' x '.join(str(n) for n in marginal.shape) if marginal.ndim == 2 else 'ragged'}"
        )
    if not np.all(np.isfinite(marginal)):
        raise TreeoptError("marginal holds a value that is not a finite number (NaN or inf)")
    for head, row in enumerate(marginal, start=1):
        if row.sum() > 1 + PROBABILITY_TOLERANCE:
            raise TreeoptError(f"marginal row of head {head} sums to {row.sum():.6g} > 1")
    num_positions = data["num_positions"]
    joint = None
    if data.get("joint") is not None:
        joint = _joint_from_json(data["joint"], num_heads, top_k, "joint")
        total = sum(joint.values())
        if total != num_positions:
            raise TreeoptError(
                f"joint counts sum to {total}, not num_positions {num_positions}"
            )
    groups = None
    if data.get("groups") is not None:
        if joint is None:
            raise TreeoptError("groups need joint counts (\"joint\" is null)")
        groups = tuple(_group_from_json(raw, num_heads, top_k, index)
                       for index, raw in enumerate(data["groups"]))
        _check_groups_add_up(groups, marginal, joint, num_positions)
    return Profile(
        num_heads=num_heads,
        top_k=top_k,
        marginal=marginal,
        joint=joint,
        num_positions=num_positions,
        provenance=dict(data.get("provenance") or {}),
        groups=groups,
    )


def _group_from_json(raw: dict[str, Any], num_heads: int, top_k: int, index: int) -> ProfileGroup:
    where = f"groups/{index}"
    counts = numeric_array(raw["marginal_counts"], np.int64, f"{where}: marginal_counts", ndim=2)
    if counts.shape != (num_heads, top_k):
        raise TreeoptError(f"{where}: marginal_counts must be {num_heads} x {top_k}")
    joint = _joint_from_json(raw["joint"], num_heads, top_k, where)
    if sum(joint.values()) != raw["num_positions"]:
        raise TreeoptError(f"{where}: joint counts do not sum to its num_positions")
    if np.any(counts.sum(axis=1) > raw["num_positions"]):
        raise TreeoptError(f"{where}: a head's marginal_counts exceed its num_positions")
    return ProfileGroup(raw["num_positions"], counts, joint)


def _check_groups_add_up(
    groups: tuple[ProfileGroup, ...], marginal: np.ndarray, joint: JointCounts, num_positions: int
) -> None:
    summed = Profile.from_groups(groups, marginal.shape[0], marginal.shape[1])
    if summed.num_positions != num_positions or summed.joint != joint:
        raise TreeoptError("groups do not add up to the profile's joint counts")
    if not np.allclose(summed.marginal, marginal, atol=1e-9):
        raise TreeoptError("groups do not add up to the profile's marginal")


def _profile_and_digest(data: Any) -> tuple[Profile, str | None]:
    profile = profile_from_json(data)
    digest = data.get(RANKS_DIGEST)
    if digest is not None and not (isinstance(digest, str) and len(digest) == 64
                                   and all(char in "0123456789abcdef" for char in digest)):
        raise TreeoptError(f"{RANKS_DIGEST} must be 64 hex digits, not {digest!r:.80}")
    return profile, digest


def read_profile(path: str | os.PathLike[str]) -> Profile:
    """Read and validate a ``treeopt.profile/1`` file."""
    from treeopt.files.jsondoc import read_document

    return read_document(path, "profile", _profile_and_digest)[0]


def load_profile(name_or_path: str | os.PathLike[str]) -> Profile:
    """A profile file, or a shipped profile by name (e.g. ``vicuna-7b``).

    A file's rank vectors (``PROFILE.ranks.npz`` beside it, as ``treeopt profile``
    writes them) are attached as ``sequences`` when present.
    """
    from treeopt.files.shipped import names_a_file

    candidate = FilePath(name_or_path)
    if names_a_file(candidate):
        from treeopt.files.jsondoc import read_document

        profile, recorded = read_document(candidate, "profile", _profile_and_digest)
        sidecar = ranks_path(candidate)
        if not (sidecar.exists() or sidecar.is_symlink()):
            return profile
        sequences = load_rank_sequences(sidecar, profile.top_k)  # its errors name it
        try:
            attached = profile.with_sequences(sequences)
        except TreeoptError as exc:
            raise TreeoptError(f"{sidecar}: {exc}") from None
        if recorded is not None and recorded != sequences.digest():
            raise TreeoptError(
                f"{sidecar}: the rank vectors are not the ones {candidate} was made from "
                f"(reordered or from another run): re-run treeopt profile, or delete the "
                f"stale .ranks.npz file"
            )
        return attached
    from treeopt.files.shipped import shipped_profile_path

    return read_profile(shipped_profile_path(str(name_or_path)))


def dumps(profile: Profile) -> str:
    """Serialize with one joint entry per line: diffable, still compact."""
    data = profile_to_json(profile)
    lines = ["{"]
    items = list(data.items())
    for position, (key, value) in enumerate(items):
        comma = "," if position < len(items) - 1 else ""
        if key in ("marginal", "joint", "groups") and value:
            body = ",\n".join("    " + json.dumps(entry) for entry in value)
            lines.append(f"  {json.dumps(key)}: [\n{body}\n  ]{comma}")
        else:
            text = json.dumps(value, indent=2).replace("\n", "\n  ")
            lines.append(f"  {json.dumps(key)}: {text}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_profile(path: str | os.PathLike[str], profile: Profile) -> None:
    """Write ``profile`` as ``treeopt.profile/1`` JSON, atomically.

    Its ``sequences``, if any, go to ``PROFILE.ranks.npz`` beside it (a stale one
    there is removed otherwise), so :func:`load_profile` gets the same profile back.
    """
    sidecar = ranks_path(path)
    with output_set():  # the profile and its rank vectors: both written, or neither
        if profile.sequences is not None:
            save_rank_sequences(sidecar, profile.sequences)
        else:
            remove_output(sidecar)
        atomic_write_text(path, dumps(profile))

