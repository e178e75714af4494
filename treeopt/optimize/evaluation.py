"""Scoring trees under a profile: one row per tree (and held-out in-sample tree) and model.

What ``treeopt eval`` prints, as data: the expected accept length under each
model of acceptance, the nodes that use ranks beyond the profile's top-k, and,
when the profile keeps its rank vectors, tokens per step replayed over the
calibration text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from treeopt.core.expansion import BeamSetting, parse_beam_setting
from treeopt.core.profile import Profile
from treeopt.errors import ParameterError

# The --holdout reference row: a tree built on the very prompts it is scored on.
IN_SAMPLE = "in-sample"


def split_profile(profile: Profile, holdout: float | None, seed: int = 0
                  ) -> tuple[Profile, Profile | None]:
    """``(part to use, held-out part)``; without ``holdout`` the profile itself and None."""
    if holdout is None:
        return profile, None
    return profile.split(holdout, seed)


def default_models(profile: Profile) -> list[str]:
    """Every model of acceptance ``profile`` supports: independent, joint, blend."""
    models = ["independent"] + (["joint"] if profile.has_joint else [])
    if profile.has_joint and profile.groups is not None and len(profile.groups) >= 2:
        models.append("blend")  # its weight is cross-validated over prompts
    return models


DYNAMIC_PREFIX = "dynamic:"


def dynamic_size(name: str) -> int | None:
    """``"dynamic:16"`` -> 16 (a per-step tree policy of 16 tokens); other names -> None."""
    if not name.startswith(DYNAMIC_PREFIX):
        return None
    text = name[len(DYNAMIC_PREFIX):]
    if not text.isdigit() or int(text) < 2:
        raise ParameterError("trees", f"entry {name!r} is not a dynamic tree: write dynamic:N "
                                      "with N >= 2 tokens a step")
    return int(text)


def _dynamic_rows(policies: Sequence[tuple[str, int]], fitted: Profile, scored: Profile
                  ) -> list[dict[str, Any]]:
    """Replayed tokens per step of each dynamic policy, calibrated on ``fitted`` (the
    training part with a held-out split) and scored on ``scored``."""
    from treeopt.optimize.dynamic import dynamic_tokens_per_step, fit_calibration

    if not policies:
        return []
    if fitted.sequences is None or scored.sequences is None:
        raise ParameterError("trees", "with dynamic:N need a measured profile with rank "
                             "vectors and head probabilities (treeopt profile): they are "
                             "scored by replay")
    calibration = fit_calibration(fitted.sequences)
    return [{"tree": name, "nodes": size - 1, "num_tokens": size,
             "acceptance_model": "per-step", "expected_accept_length": None,
             "nodes_beyond_top_k": 0,
             "tokens_per_step_replayed": dynamic_tokens_per_step(scored.sequences, calibration,
                                                                 size)}
            for name, size in policies]


def _beam_rows(beams: Sequence[tuple[str, BeamSetting]], profile_name: str, full: Profile,
               scored: Profile) -> list[dict[str, Any]]:
    """Replayed tokens per step of each engine-style ``dynamic:S,K,N``, from the drafter
    expansion beside the profile (restricted to the scored prompts)."""
    import numpy as np

    from treeopt.files.expansion_file import load_expansion
    from treeopt.optimize.beam_replay import beam_tokens_per_step

    if not beams:
        return []
    expansion = load_expansion(profile_name, full)
    assert full.sequences is not None and scored.sequences is not None
    if scored is not full:
        expansion = expansion.rows(np.isin(full.sequences.groups,
                                           np.unique(scored.sequences.groups)))
    rates = beam_tokens_per_step(expansion, scored.sequences, [s for _, s in beams])
    return [{"tree": name, "nodes": s.num_tokens - 1, "num_tokens": s.num_tokens,
             "acceptance_model": "engine beam", "expected_accept_length": None,
             "nodes_beyond_top_k": 0, "tokens_per_step_replayed": rates[s]}
            for name, s in beams]


def evaluate_trees(
    trees: Sequence[str], profile_name: str, models: Sequence[str] | None = None,
    holdout: float | None = None, seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per tree (and per in-sample tree with ``holdout``) and model of acceptance.

    Each row has ``tree, nodes, num_tokens, acceptance_model, expected_accept_length,
    nodes_beyond_top_k, profile`` (+ ``tokens_per_step_replayed`` when the scored
    profile has rank vectors, + ``split`` with ``holdout``). With ``holdout`` the
    trees are scored on the held-out prompts and an ``in-sample-N`` row per tree size
    (``dynamic:N`` included) gives the tree built on those very prompts by position
    average under the most faithful model scored (:func:`most_faithful`, named in
    the row's ``built_with``), scored under every model like the other trees: the
    ceiling of E[accept] for any N-token tree there under that model, and only of
    that (replayed tokens per step has no builder with a guarantee, so a tree built
    on other prompts by decoding steps can replay better; it is not called an
    oracle).
    ``models`` defaults to :func:`default_models` of the scored profile. A tree named
    ``dynamic:N`` is the per-step policy of :mod:`treeopt.optimize.dynamic` at N
    tokens: calibrated on the training part (the whole profile without ``holdout``)
    and scored by replay only (its ``expected_accept_length`` is None).
    """
    from treeopt.files.profile_file import load_profile
    from treeopt.files.tree_file import load_tree
    from treeopt.optimize.acceptance_models import AcceptanceModel, expected_accept_length
    from treeopt.optimize.build import build_tree
    from treeopt.optimize.replay import tokens_per_step

    full = load_profile(profile_name)
    fitted, heldout = split_profile(full, holdout, seed)
    scored = full if heldout is None else heldout
    beams = [(name, setting) for name in trees
             if (setting := parse_beam_setting(name)) is not None]
    others = [name for name in trees if name not in dict(beams)]
    dynamic = [(name, size) for name in others if (size := dynamic_size(name)) is not None]
    loaded = [(name, load_tree(name)) for name in others if dynamic_size(name) is None]
    beyond = {name: sum(1 for path in tree.paths if max(path) >= scored.top_k)
              for name, tree in loaded}
    replayed: dict[str, float] = {}
    if scored.sequences is not None:
        replayed = {name: tokens_per_step(tree, scored.sequences) for name, tree in loaded}
    models = list(models or default_models(scored))
    weights = {model: AcceptanceModel(scored, model).blend_weight for model in models}
    if heldout is not None:
        # One in-sample tree per size (dynamic:N sizes too: the static tree built on the
        # held-out prompts at N is what a per-step policy has to beat), built under the
        # most faithful model scored and scored like every other tree: one tree per row,
        # so the row and the lead figure are the same number.
        builder = most_faithful(models)
        sizes = {tree.num_tokens for _, tree in loaded if len(tree) > 0}
        for size in sorted(sizes | {size for _, size in dynamic}):
            built = build_tree(heldout, size, builder, blend_weight=weights[builder],
                               weighting="positions").tree
            name = f"{IN_SAMPLE}-{size}"
            loaded.append((name, built))
            beyond[name] = 0
            if scored.sequences is not None:
                replayed[name] = tokens_per_step(built, scored.sequences)
    rows: list[dict[str, Any]] = []
    for model in models:
        for name, tree in loaded:
            rows.append({
                "tree": name, "nodes": len(tree), "num_tokens": tree.num_tokens,
                "acceptance_model": model,
                "expected_accept_length": expected_accept_length(tree, scored, model,
                                                                 weights[model]),
                "nodes_beyond_top_k": beyond[name],
            })
            if name.startswith(f"{IN_SAMPLE}-"):
                rows[-1]["built_with"] = builder
            if replayed:
                rows[-1]["tokens_per_step_replayed"] = replayed[name]
    rows += _dynamic_rows(dynamic, fitted, scored)
    rows += _beam_rows(beams, profile_name, full, scored)
    for row in rows:
        row["profile"] = profile_name
        if holdout is not None:
            row["split"] = {"part": "heldout", "holdout_fraction": holdout, "seed": seed}
    return rows


def most_faithful(models: Sequence[str] | set[str]) -> str:
    """Of ``models``, the one that models most of how heads' misses correlate (blend,
    then joint, then independent)."""
    return next(m for m in ("blend", "joint", "independent", *sorted(models)) if m in models)


def lead_figures(rows: Sequence[dict[str, Any]]) -> tuple[str, dict[str, float]]:
    """(which figure, tree -> that figure): the one figure per tree to trust.

    Replayed tokens per step when the rows have it (exact replay of greedy decoding
    on the profiled text); else E[accept] under the most faithful model scored
    (blend, then joint, then independent: each models more of how heads' misses
    correlate).
    """
    replayed = [row for row in rows if "tokens_per_step_replayed" in row]
    if replayed:
        return ("replayed tokens per step (what the runtime measures on these prompts)",
                {row["tree"]: row["tokens_per_step_replayed"] for row in replayed})
    model = most_faithful({row["acceptance_model"] for row in rows})
    return (f"E[accept], {model} model of acceptance",
            {row["tree"]: row["expected_accept_length"] for row in rows
             if row["acceptance_model"] == model and row["expected_accept_length"] is not None})
