"""Verbs ``build``, ``eval`` and ``import-profile``: from head accuracies to trees.

No torch here: these verbs read profiles and trees only.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from treeopt.cli.options import (
    AcceptanceChoice,
    EngineChoice,
    HoldoutOption,
    ProfileOption,
    SeedOption,
    WeightingChoice,
    curve_file,
    output_file,
    output_file_or_stdout,
)
from treeopt.core.timestamps import utc_now
from treeopt.errors import TreeoptError
from treeopt.files.shipped import DEFAULT_PROFILE


def _version() -> str:
    from treeopt._version import __version__

    return __version__


def parse_max_rank(text: str | None) -> int | list[int] | None:
    """``"9"`` -> 9; ``"10,10,5"`` -> [10, 10, 5]; one-line error otherwise."""
    if text is None:
        return None
    parts = [part.strip() for part in text.split(",")]
    try:
        ranks = [int(part) for part in parts]
    except ValueError:
        raise TreeoptError(
            f"--max-rank must be an integer or comma-separated integers per depth, not {text!r}"
        ) from None
    return ranks[0] if len(ranks) == 1 else ranks


def _split(profile: Any, holdout: float | None, seed: int) -> tuple[Any, Any | None]:
    """``(part to use, held-out part)``; without --holdout the profile itself and None."""
    if holdout is None:
        return profile, None
    return profile.split(holdout, seed)


def build(
    budget: Annotated[
        int,
        typer.Option(
            "--budget", "-b",
            help="Tokens verified per step, the root (base model's own token) included: "
            "--budget 64 builds 63 nodes, the size of mc_sim_7b_63. At least 2.",
        ),
    ],
    profile: ProfileOption = DEFAULT_PROFILE,
    model_of_acceptance: Annotated[
        AcceptanceChoice,
        typer.Option(
            "--acceptance-model", "-a", "--model-of-acceptance",
            help="independent: heads independent (product of per-head rank probabilities; "
            "works with any profile). joint: exact frequencies of rank prefixes on the "
            "calibration set. blend: joint shrunk toward independent, weight chosen by "
            "cross-validation over prompts (best for small calibration sets). joint and blend "
            "need a measured profile.",
        ),
    ] = AcceptanceChoice.independent,
    max_depth: Annotated[
        int | None, typer.Option("--max-depth", help="Deepest level allowed (default: heads).")
    ] = None,
    max_rank: Annotated[
        str | None,
        typer.Option(
            "--max-rank",
            help="Largest 0-based rank allowed: one value (9 = ranks 0..9) or one per depth, "
            "e.g. 9,9,4 (the last repeats deeper).",
        ),
    ] = None,
    max_children: Annotated[
        int | None, typer.Option("--max-children", help="Most children of any node, root too.")
    ] = None,
    engine: Annotated[
        EngineChoice | None,
        typer.Option(
            "--engine",
            help="Fit a runtime: trtllm (<= 63 nodes, ranks < 16); vllm (every node at a level "
            "has the same number of children: the best full product tree, searched "
            "exhaustively; vLLM before PR #42121); vllm-medusa (the top-1 chain vLLM's Medusa "
            "drafts today). A shape that cannot hit --budget exactly says so on stderr.",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", callback=output_file_or_stdout,
            help="treeopt.tree/1 file to write (default, or -: stdout)."),
    ] = None,
    curve: Annotated[
        Path | None,
        typer.Option(
            "--curve", callback=curve_file,
            help="Also write expected accept length for every budget 1..N (.json or .csv, "
            "treeopt.curve/1).",
        ),
    ] = None,
    weighting: Annotated[
        WeightingChoice | None,
        typer.Option(
            "--weighting",
            help="steps: weight calibration positions the way decoding visits them, so the "
            "score is tokens per decoding step, what the runtime measures (needs the rank "
            "vectors treeopt profile keeps beside the profile, PROFILE.ranks.npz). positions: "
            "every position counts once (the position average overstates tokens per step "
            "when acceptance swings along the text). Default: steps when the rank vectors "
            "are there, else positions (e.g. the shipped profiles).",
        ),
    ] = None,
    holdout: HoldoutOption = None,
    seed: SeedOption = 0,
) -> None:
    """Build the tree with the highest expected accept length for a budget.

    Greedy by node value from the profile; optimal without --max-*/--engine limits
    (with them, valid but possibly suboptimal). One pass yields the best tree of
    every smaller budget too (see --curve). With a measured profile's rank vectors
    the score is tokens per decoding step, replayed over the calibration text
    (see --weighting).

    Example: treeopt build --budget 64 -o tree.json
    """
    from treeopt.files.curve_file import write_curve
    from treeopt.files.profile_file import load_profile
    from treeopt.files.tree_file import TreeDocument, dumps, write_tree
    from treeopt.optimize.build import budget_shortfall, build_tree

    if curve is not None and curve.suffix.lower() not in (".json", ".csv"):
        raise TreeoptError(f"--curve file {curve} must end in .json or .csv")
    loaded, _ = _split(load_profile(profile), holdout, seed)
    result = build_tree(
        loaded, budget, model_of_acceptance.value, max_depth=max_depth,
        max_rank=parse_max_rank(max_rank), max_children=max_children,
        engine=None if engine is None else engine.value,
        weighting=None if weighting is None else weighting.value,
    )
    provenance: dict[str, Any] = {
        "profile": profile,
        "model": loaded.provenance.get("model"),
        "budget": budget,
        "builder": "treeopt greedy" if engine in (None, EngineChoice.trtllm)
        else "treeopt product search",
        "acceptance_model": model_of_acceptance.value,
        "weighting": result.weighting,
        "created": utc_now(),
        "treeopt_version": _version(),
    }
    if result.blend_weight is not None:
        provenance["blend_weight"] = result.blend_weight
    if result.weighting == "steps":
        provenance["weighting_rounds"] = result.rounds
    limits = {"max_depth": max_depth, "max_rank": max_rank, "max_children": max_children,
              "engine": None if engine is None else engine.value}
    provenance.update({key: value for key, value in limits.items() if value is not None})
    if holdout is not None:
        provenance["split"] = {"part": "train", "holdout_fraction": holdout, "seed": seed}
    tree = result.tree
    shortfall = budget_shortfall(result, None if engine is None else engine.value)
    if shortfall is not None:
        typer.echo(shortfall, err=True)
    if curve is not None:
        rows = [{"num_tokens": n, "expected_accept_length": value}
                for n, value in enumerate(result.curve, start=1)]
        write_curve(curve, rows, provenance)
    if output is None:
        sys.stdout.write(dumps(TreeDocument(tree, result.expected_accept_length, provenance)))
    else:
        write_tree(output, tree, result.expected_accept_length, provenance)
    where = f"wrote {output}: " if output is not None else ""
    score = ("tokens per decoding step (replayed)" if result.weighting == "steps"
             else "expected accept length")
    typer.echo(
        f"{where}{len(tree)} nodes ({tree.num_tokens} tokens/step incl. root), depth "
        f"{tree.depth}, {score} {result.expected_accept_length:.4f} "
        f"({model_of_acceptance.value}, weighted by {result.weighting}, profile {profile})",
        err=True,
    )


def evaluate_trees(
    trees: list[str], profile_name: str, models: list[str] | None,
    holdout: float | None = None, seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per tree (and per oracle with --holdout) and model of acceptance."""
    from treeopt.files.profile_file import load_profile
    from treeopt.files.tree_file import load_tree
    from treeopt.optimize.acceptance_models import AcceptanceModel, expected_accept_length
    from treeopt.optimize.build import build_tree
    from treeopt.optimize.replay import tokens_per_step

    full = load_profile(profile_name)
    _, heldout = _split(full, holdout, seed)
    scored = full if heldout is None else heldout
    if models is None:
        models = ["independent"] + (["joint"] if scored.has_joint else [])
        if scored.has_joint and scored.groups is not None and len(scored.groups) >= 2:
            models.append("blend")  # its weight is cross-validated over prompts
    loaded = [(name, load_tree(name)) for name in trees]
    beyond = {name: sum(1 for path in tree.paths if max(path) >= scored.top_k)
              for name, tree in loaded}
    replayed: dict[str, float] = {}
    if scored.sequences is not None:
        replayed = {name: tokens_per_step(tree, scored.sequences) for name, tree in loaded}
    rows: list[dict[str, Any]] = []
    for model in models:
        weight = AcceptanceModel(scored, model).blend_weight  # choose the blend weight once
        for name, tree in loaded:
            rows.append({
                "tree": name, "nodes": len(tree), "num_tokens": tree.num_tokens,
                "acceptance_model": model,
                "expected_accept_length": expected_accept_length(tree, scored, model, weight),
                "nodes_beyond_top_k": beyond[name],
            })
            if replayed:
                rows[-1]["tokens_per_step_replayed"] = replayed[name]
        if heldout is not None:
            for size in sorted({tree.num_tokens for _, tree in loaded if len(tree) > 0}):
                oracle = build_tree(heldout, size, model, blend_weight=weight,
                                    weighting="positions")
                rows.append({
                    "tree": f"oracle-{size}", "nodes": size - 1, "num_tokens": size,
                    "acceptance_model": model,
                    "expected_accept_length": oracle.expected_accept_length,
                    "nodes_beyond_top_k": 0,
                })
                if replayed:
                    rows[-1]["tokens_per_step_replayed"] = tokens_per_step(
                        oracle.tree, scored.sequences)
    for row in rows:
        row["profile"] = profile_name
        if holdout is not None:
            row["split"] = {"part": "heldout", "holdout_fraction": holdout, "seed": seed}
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Trees down, models of acceptance across (expected accept length, 4 decimals).

    A last column gives replayed tokens per decoding step when the profile has its
    rank vectors.
    """
    models = list(dict.fromkeys(row["acceptance_model"] for row in rows))
    trees = list(dict.fromkeys(row["tree"] for row in rows))
    by_key = {(row["tree"], row["acceptance_model"]): row for row in rows}
    replayed = any("tokens_per_step_replayed" in row for row in rows)
    header = ["tree", "nodes", "tokens/step"] + [f"E[accept] {model}" for model in models]
    header += ["replayed per step"] if replayed else []
    body = []
    for tree in trees:
        first = next(row for row in rows if row["tree"] == tree)
        body.append([tree, str(first["nodes"]), str(first["num_tokens"])] + [
            f"{by_key[(tree, model)]['expected_accept_length']:.4f}" for model in models
        ] + ([f"{first['tokens_per_step_replayed']:.4f}"] if replayed else []))
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                       for i, (cell, width) in enumerate(zip(line, widths, strict=True)))
             for line in [header, *body]]
    return "\n".join(lines)


def eval_trees(
    trees: Annotated[
        list[str],
        typer.Argument(help="Tree JSON files or shipped tree names (e.g. mc_sim_7b_63)."),
    ],
    profile: ProfileOption = DEFAULT_PROFILE,
    model_of_acceptance: Annotated[
        list[AcceptanceChoice] | None,
        typer.Option(
            "--acceptance-model", "-a", "--model-of-acceptance",
            help="Model(s) of acceptance to score with (repeatable; default: every model the "
            "profile supports: independent, plus joint and blend for measured profiles).",
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print a JSON list of {tree, nodes, num_tokens, "
                     "acceptance_model, expected_accept_length, nodes_beyond_top_k, profile}."),
    ] = False,
    holdout: HoldoutOption = None,
    seed: SeedOption = 0,
) -> None:
    """Expected accept length of trees under a profile.

    Expected accept length = tokens gained per decoding step, counting the base
    model's own token (the root): 1 + the sum over nodes of the probability that
    the step accepts the node. Plain decoding scores 1.0. Ranks beyond the
    profile's top-k count as never accepted. For a measured profile with its rank
    vectors (PROFILE.ranks.npz) a last column replays greedy decoding over the
    calibration text: tokens per verification step as the runtime measures it,
    which the position average overstates when acceptance swings along the text.

    With --holdout F --seed S the trees are scored on the held-out prompts, and an
    "oracle-N" row adds the tree built on those very prompts (the ceiling for any
    static tree of N tokens). Build the contender on the other part with
    treeopt build --holdout F --seed S.

    \b
    Examples:
      treeopt eval mc_sim_7b_63 tree.json
      treeopt eval mc_sim_7b_63 tree.json -p my.json -a joint --json
    """
    models = None if not model_of_acceptance else [m.value for m in model_of_acceptance]
    rows = evaluate_trees(trees, profile, models, holdout, seed)
    warned = set()
    for row in rows:
        if row["nodes_beyond_top_k"] and row["tree"] not in warned:
            warned.add(row["tree"])
            typer.echo(
                f"warning: {row['tree']}: {row['nodes_beyond_top_k']} of {row['nodes']} nodes use "
                f"a rank beyond the profile's top-k and score 0 (a fair comparison needs a "
                f"profile measured with a larger --top-k: treeopt profile --top-k 10)", err=True,
            )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        typer.echo(format_table(rows))


def read_accuracy_csv(path: Path, model: str) -> tuple[str, list[list[float]]]:
    """``(model name in the CSV, rows)`` of cumulative top-k accuracies for ``model``.

    The CSV has columns ``model, head, top1 .. topK``; ``model`` matches a model
    exactly or as a unique prefix (``vicuna-7b`` matches ``vicuna-7b-v1.3``).
    """
    extra = "\0extra"  # DictReader's key for cells beyond the header
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, restkey=extra)
            records = list(reader)
            columns = [str(name) for name in reader.fieldnames or []]
    except FileNotFoundError:
        raise TreeoptError(f"CSV file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TreeoptError(f"cannot read CSV file {path}: {exc}") from None
    top_columns = [c for c in columns if c.startswith("top") and c[3:].isdigit()]
    if "model" not in columns or "head" not in columns or not top_columns:
        raise TreeoptError(f"{path}: needs columns model, head, top1..topK; has {columns}")
    ragged = [index for index, record in enumerate(records, start=2) if extra in record]
    if ragged:
        raise TreeoptError(f"{path}: line {ragged[0]} has more cells than the header")
    top_columns.sort(key=lambda c: int(c[3:]))
    if [int(c[3:]) for c in top_columns] != list(range(1, len(top_columns) + 1)):
        raise TreeoptError(f"{path}: top-k columns must be top1..topK without gaps")
    names = list(dict.fromkeys(record["model"] for record in records))
    matches = [name for name in names if name == model] or [
        name for name in names if name.startswith(model)
    ]
    if len(matches) != 1:
        raise TreeoptError(
            f"{path}: --model {model!r} matches {len(matches)} models (has: {', '.join(names)})"
        )
    chosen = [record for record in records if record["model"] == matches[0]]
    try:
        chosen.sort(key=lambda record: int(record["head"]))
        heads = [int(record["head"]) for record in chosen]
        rows = [[float(record[c]) for c in top_columns] for record in chosen]
    except (TypeError, ValueError):
        raise TreeoptError(f"{path}: head and top-k cells must be numbers") from None
    if heads != list(range(1, len(heads) + 1)):
        raise TreeoptError(f"{path}: model {matches[0]} has heads {heads}, not 1..{len(heads)}")
    return matches[0], rows


def import_profile(
    csv_file: Annotated[
        Path,
        typer.Argument(help="CSV with columns model, head (1-based), top1..topK: cumulative "
                       "top-k accuracy of each head, e.g. Medusa's assets/medusa_acc.csv."),
    ],
    model: Annotated[
        str, typer.Option("--model", help="Model to import (exact or unique prefix of the "
                          "CSV's model column).")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", callback=output_file,
        help="treeopt.profile/1 to write.")],
    source: Annotated[
        str | None, typer.Option("--source", help="Citation stored in provenance.")
    ] = None,
    note: Annotated[
        str | None, typer.Option("--note", help="Caveat stored in provenance.")
    ] = None,
) -> None:
    """Make a marginal-only profile from published cumulative top-k head accuracies.

    marginal[k][i] = top(i+1) - top(i). Such a profile supports only the
    independent model of acceptance, and ranks beyond the CSV's top-k count as
    never accepted.

    \b
    Example:
      treeopt import-profile medusa_acc.csv --model vicuna-7b -o vicuna-7b.json
    """
    from treeopt.core.profile import Profile
    from treeopt.files.profile_file import write_profile

    name, rows = read_accuracy_csv(csv_file, model)
    provenance = {
        "model": name, "source": source or csv_file.name, "kind": "published cumulative top-k "
        "accuracy", "created": utc_now(), "treeopt_version": _version(),
    }
    if note:
        provenance["note"] = note
    try:
        profile = Profile.from_cumulative_accuracy(rows, provenance)
    except TreeoptError as exc:
        raise TreeoptError(f"{csv_file}: {exc}") from None
    write_profile(output, profile)
    typer.echo(
        f"wrote {output}: {profile.num_heads} heads x top-{profile.top_k} ({name})", err=True
    )


def register(app: typer.Typer) -> None:
    """Add build, eval and import-profile to the treeopt app."""
    app.command("build")(build)
    app.command("eval")(eval_trees)
    app.command("import-profile")(import_profile)
