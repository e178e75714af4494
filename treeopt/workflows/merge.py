"""``treeopt merge``: one profile from profiles made separately (other machines, other days).

Profiles are counts and ordered rank vectors, so merging is exact: the merge of
profiles of prompt sets A and B is the profile of A followed by B (profile JSON
without provenance, rank vectors and greedy targets), as long as they measured
the same thing. :func:`check_compatible` makes sure they did: same kind, heads
(or draft depth), top-k and settings, and the same model, heads and tokenizer by
the content digests ``treeopt profile`` records (names only when a file predates
them), refused in one line naming the file and what differs.

Kinds plug in with one function: :data:`MERGERS` maps a profile's kind
(:func:`profile_kind`) to a function ``(profiles, provenance) -> Profile``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from treeopt.core.profile import Profile
from treeopt.core.ranks import RankSequences
from treeopt.errors import TreeoptError

Merger = Callable[[Sequence[Profile], dict[str, Any]], Profile]
# What every profile of a merge must share, beyond kind, num_heads and top_k (absent
# counts as a value: a file that lacks one of them cannot match one that has it).
SETTINGS_KEYS = ("max_new_tokens", "include_prompt", "dtype", "chat_template", "depth")
# Compared when the profiles do not all record content digests (older files).
NAME_KEYS = ("model", "heads")
# Provenance figures that add up over the inputs.
SUMMED_KEYS = ("prompts", "skipped_prompts", "positions", "generated_tokens",
               "greedy_mismatches")


def profile_kind(profile: Profile) -> str:
    """What a profile measured: "medusa_heads", or its ``drafter`` ("draft_model", ...)."""
    return str(profile.provenance.get("drafter") or "medusa_heads")


def merge_rank_vectors(profiles: Sequence[Profile], provenance: dict[str, Any]) -> Profile:
    """Rank-vector profiles (heads, draft models): the inputs' prompts one after another.

    Needs each input's rank vectors (``PROFILE.ranks.npz``); without them, per-prompt
    groups still merge the counts (the result then has no rank vectors).
    """
    first = profiles[0]
    parts = [p.sequences for p in profiles if p.sequences is not None]
    if len(parts) == len(profiles):
        return _from_sequences(parts, first.top_k, provenance)
    if all(p.groups is not None for p in profiles):
        groups = [g for p in profiles for g in p.groups]  # type: ignore[union-attr]
        return Profile.from_groups(groups, first.num_heads, first.top_k, provenance)
    raise TreeoptError("cannot merge profiles without their rank vectors (PROFILE.ranks.npz "
                       "beside each) or per-prompt groups: merge the files treeopt profile "
                       "wrote")


def _from_sequences(parts: list[RankSequences], top_k: int,
                    provenance: dict[str, Any]) -> Profile:
    """The profile of the rank vectors ``parts``, each one's prompts after the previous'."""
    offsets = np.cumsum([0] + [len(s.first_decode_index) for s in parts[:-1]])
    probs = [s.probs for s in parts]
    return Profile.from_rank_vectors(
        np.concatenate([s.ranks for s in parts]).astype(np.int64), top_k,
        groups=np.concatenate([s.groups + offset for s, offset in zip(parts, offsets,
                                                                      strict=True)]),
        provenance=provenance,
        first_decode_index=np.concatenate([s.first_decode_index for s in parts]),
        probs=np.concatenate([p for p in probs if p is not None])
        if all(p is not None for p in probs) else None,
    )


# One entry per kind of profile; a new kind adds its merge function here.
MERGERS: dict[str, Merger] = {
    "medusa_heads": merge_rank_vectors,
    "draft_model": merge_rank_vectors,
}


def _identity(profile: Profile, use_digests: bool) -> dict[str, Any]:
    """What must be equal for two profiles to merge."""
    info = profile.provenance
    identity: dict[str, Any] = {"kind": profile_kind(profile), "heads (num_heads)":
                                profile.num_heads, "top-k": profile.top_k}
    identity.update({key: info.get(key) for key in SETTINGS_KEYS})
    if use_digests:
        digests = info.get("digests") or {}
        identity.update({f"{key} (content digest)": digests.get(key)
                         for key in ("model", "heads", "tokenizer")})
    else:
        identity.update({key: info.get(key) for key in NAME_KEYS})
    return identity


def check_compatible(paths: Sequence[str], profiles: Sequence[Profile]) -> None:
    """One-line TreeoptError unless every profile measured the same model, heads and settings."""
    use_digests = all(isinstance(p.provenance.get("digests"), dict) for p in profiles)
    reference = _identity(profiles[0], use_digests)
    for path, profile in zip(paths[1:], profiles[1:], strict=True):
        identity = _identity(profile, use_digests)
        for key, value in reference.items():
            if identity[key] != value:
                raise TreeoptError(
                    f"cannot merge {path} with {paths[0]}: another {key} ({identity[key]!r:.80} "
                    f"vs {value!r:.80}); only profiles of the same model, heads, tokenizer, "
                    "top-k and settings merge")
    if profile_kind(profiles[0]) not in MERGERS:
        raise TreeoptError(f"{paths[0]}: profiles of kind {profile_kind(profiles[0])!r} cannot be "
                           f"merged (known kinds: {', '.join(sorted(MERGERS))})")


def merged_provenance(paths: Sequence[str], profiles: Sequence[Profile]) -> dict[str, Any]:
    """The first input's provenance, with the figures summed and the inputs listed."""
    merged = dict(profiles[0].provenance)
    for key in SUMMED_KEYS:
        values = [p.provenance.get(key) for p in profiles]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            merged[key] = sum(values)  # type: ignore[arg-type]
    datasets = [p.provenance.get("dataset") for p in profiles]
    if len(set(map(str, datasets))) > 1:
        merged["dataset"] = datasets
    merged["merged_from"] = [str(path) for path in paths]
    merged.pop("world_size", None)  # each input's own; not the merge's
    # A drafter expansion (profile --expand) lives in its own file beside each input;
    # the merge does not combine those yet, so it claims none.
    from treeopt.files.expansion_file import PROVENANCE_KEY

    merged.pop(PROVENANCE_KEY, None)
    return merged


def _merge_targets(paths: Sequence[str], output: Path) -> None:
    """Union of the inputs' greedy-targets caches beside ``output`` (where they have one)."""
    from treeopt.core.atomic import atomic_write_text
    from treeopt.files.jsondoc import read_json

    continuations: dict[str, Any] = {}
    fmt = None
    for path in paths:
        cache = Path(f"{path}.targets.json")
        if cache.is_file():
            data = read_json(cache, "targets cache")
            if isinstance(data, dict) and isinstance(data.get("continuations"), dict):
                fmt = data.get("format")
                continuations.update(data["continuations"])
    if continuations:
        atomic_write_text(Path(f"{output}.targets.json"),
                          json.dumps({"format": fmt, "continuations": continuations}))


def merge_profile_files(paths: Sequence[str], output: str | Path) -> Profile:
    """Merge the profiles at ``paths`` (in that order) into ``output``; return the result.

    Checks every input and their compatibility before writing anything; writes the
    profile, its rank vectors and the union of the inputs' greedy targets.
    """
    from treeopt.core.atomic import check_output_path
    from treeopt.files.profile_file import load_profile, write_profile

    if len(paths) < 2:
        raise TreeoptError(f"merge needs at least 2 profiles, got {len(paths)}")
    output = check_output_path(output)
    if any(Path(path).resolve() == Path(output).resolve() for path in paths):
        raise TreeoptError(f"-o {output} is one of the inputs: write the merge elsewhere")
    profiles = [load_profile(path) for path in paths]  # their errors name the file
    check_compatible([str(p) for p in paths], profiles)
    merger = MERGERS[profile_kind(profiles[0])]
    merged = merger(profiles, merged_provenance(paths, profiles))
    write_profile(output, merged)
    _merge_targets(paths, Path(output))
    return merged
