"""Trees and profiles from files: ``treeopt build`` and ``treeopt import-profile`` as one call each.

Each function checks its settings, does the work, writes its documents atomically
(with provenance from :mod:`treeopt.workflows.provenance`) and returns what a
caller prints. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treeopt.core.profile import Profile
from treeopt.errors import TreeoptError
from treeopt.files.shipped import DEFAULT_PROFILE
from treeopt.optimize.build import BuildResult
from treeopt.workflows.provenance import provenance


@dataclass(frozen=True)
class BuildSettings:
    """What ``build_to_files`` builds and where it writes (see :func:`build_tree`'s arguments).

    ``output`` None: the tree document is returned as text instead of written.
    ``curve``: also write the expected accept length of every budget 1..N there.
    ``holdout``/``seed``: build on the part of the profile's prompts not held out.
    """

    budget: int
    profile: str = DEFAULT_PROFILE
    acceptance_model: str = "independent"
    max_depth: int | None = None
    max_rank: int | list[int] | None = None
    max_children: int | None = None
    engine: str | None = None
    weighting: str | None = None
    holdout: float | None = None
    seed: int = 0
    output: Path | None = None
    curve: Path | None = None


@dataclass(frozen=True)
class BuiltTree:
    """The build, its provenance, when no output file was given the document's text, and a
    note when the engine's shape could not reach the budget exactly."""

    result: BuildResult
    provenance: dict[str, Any]
    document: str | None
    note: str | None = None


def build_provenance(settings: BuildSettings, profile: Profile,
                     result: BuildResult) -> dict[str, Any]:
    """The provenance of a built tree: its profile, budget, builder, limits and split."""
    greedy = settings.engine in (None, "trtllm")
    facts: dict[str, Any] = {
        "profile": settings.profile,
        "model": profile.provenance.get("model"),
        "budget": settings.budget,
        "builder": "treeopt greedy" if greedy else "treeopt product search",
        "acceptance_model": settings.acceptance_model,
        "weighting": result.weighting,
        "blend_weight": result.blend_weight,
        "weighting_rounds": result.rounds if result.weighting == "steps" else None,
        "max_depth": settings.max_depth, "max_rank": settings.max_rank,
        "max_children": settings.max_children, "engine": settings.engine,
    }
    if settings.holdout is not None:
        facts["split"] = {"part": "train", "holdout_fraction": settings.holdout,
                          "seed": settings.seed}
    return provenance(facts)


def build_to_files(settings: BuildSettings) -> BuiltTree:
    """Build the best tree for ``settings.budget`` and write it (and the curve) with provenance.

    Guarantees the tree written (or returned as text) is ``result.tree`` with
    ``result.expected_accept_length``, and the curve's row n is ``result.curve[n - 1]``.
    """
    from treeopt.core.atomic import output_set
    from treeopt.files.curve_file import curve_suffix, write_curve
    from treeopt.files.profile_file import load_profile
    from treeopt.files.tree_file import TreeDocument, dumps, write_tree
    from treeopt.optimize.build import budget_shortfall, build_tree
    from treeopt.optimize.evaluation import split_profile

    if settings.curve is not None:
        curve_suffix(settings.curve)
    loaded, _ = split_profile(load_profile(settings.profile), settings.holdout, settings.seed)
    result = build_tree(
        loaded, settings.budget, settings.acceptance_model, max_depth=settings.max_depth,
        max_rank=settings.max_rank, max_children=settings.max_children,
        engine=settings.engine, weighting=settings.weighting,
    )
    facts = build_provenance(settings, loaded, result)
    note = budget_shortfall(result, settings.engine)
    with output_set():  # the tree and its curve: both written, or neither
        if settings.curve is not None:
            rows = [{"num_tokens": n, "expected_accept_length": value}
                    for n, value in enumerate(result.curve, start=1)]
            write_curve(settings.curve, rows, facts)
        if settings.output is not None:
            write_tree(settings.output, result.tree, result.expected_accept_length, facts)
    if settings.output is None:
        return BuiltTree(result, facts,
                         dumps(TreeDocument(result.tree, result.expected_accept_length, facts)),
                         note)
    return BuiltTree(result, facts, None, note)


def import_published_profile(csv_file: Path, model: str, output: Path,
                             source: str | None = None, note: str | None = None
                             ) -> tuple[str, Profile]:
    """Make a marginal-only profile from a CSV of cumulative top-k head accuracies; write it.

    Returns ``(the CSV's model name, the profile written)``. ``source`` (default: the
    file's name) and ``note`` go into the provenance.
    """
    from treeopt.files.accuracy_csv import read_accuracy_csv
    from treeopt.files.profile_file import write_profile

    name, rows = read_accuracy_csv(csv_file, model)
    facts = provenance(model=name, source=source or csv_file.name,
                       kind="published cumulative top-k accuracy", note=note or None)
    try:
        profile = Profile.from_cumulative_accuracy(rows, facts)
    except TreeoptError as exc:
        raise TreeoptError(f"{csv_file}: {exc}") from None
    write_profile(output, profile)
    return name, profile
