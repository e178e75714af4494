"""Verbs ``build``, ``eval`` and ``import-profile``: from head accuracies to trees.

No torch here: these verbs read profiles and trees only.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
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
from treeopt.errors import TreeoptError
from treeopt.files.shipped import DEFAULT_PROFILE


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


BudgetOption = Annotated[int, typer.Option(
    "--budget", "-b",
    help="Tokens verified per step, the root (base model's own token) included: "
    "--budget 64 builds 63 nodes, the size of mc_sim_7b_63. At least 2.")]
BuildAcceptanceOption = Annotated[AcceptanceChoice, typer.Option(
    "--acceptance-model", "-a", "--model-of-acceptance",
    help="independent: heads independent (product of per-head rank probabilities; "
    "works with any profile). joint: exact frequencies of rank prefixes on the "
    "calibration set. blend: joint shrunk toward independent, weight chosen by "
    "cross-validation over prompts (best for small calibration sets). joint and blend "
    "need a measured profile.")]
MaxDepthOption = Annotated[int | None, typer.Option(
    "--max-depth", help="Deepest level allowed (default: heads).")]
MaxRankOption = Annotated[str | None, typer.Option(
    "--max-rank",
    help="Largest 0-based rank allowed: one value (9 = ranks 0..9) or one per depth, "
    "e.g. 9,9,4 (the last repeats deeper).")]
MaxChildrenOption = Annotated[int | None, typer.Option(
    "--max-children", help="Most children of any node, root too.")]
EngineOption = Annotated[EngineChoice | None, typer.Option(
    "--engine",
    help="Fit a runtime: trtllm (<= 63 nodes, ranks < 16); vllm (every node at a level "
    "has the same number of children: the best full product tree, searched "
    "exhaustively; vLLM before PR #42121); vllm-medusa (the top-1 chain vLLM's Medusa "
    "drafts today). A shape that cannot hit --budget exactly says so on stderr.")]
TreeOutputOption = Annotated[Path | None, typer.Option(
    "-o", "--output", callback=output_file_or_stdout,
    help="treeopt.tree/1 file to write (default, or -: stdout).")]
BuildCurveOption = Annotated[Path | None, typer.Option(
    "--curve", callback=curve_file,
    help="Also write expected accept length for every budget 1..N (.json or .csv, "
    "treeopt.curve/1).")]
WeightingOption = Annotated[WeightingChoice | None, typer.Option(
    "--weighting",
    help="steps: weight calibration positions the way decoding visits them, so the "
    "score is tokens per decoding step, what the runtime measures (needs the rank "
    "vectors treeopt profile keeps beside the profile, PROFILE.ranks.npz). positions: "
    "every position counts once (the position average overstates tokens per step "
    "when acceptance swings along the text). Default: steps when the rank vectors "
    "are there, else positions (e.g. the shipped profiles).")]


def _value(choice: Enum | None) -> str | None:
    return None if choice is None else str(choice.value)


BuildQuietOption = Annotated[bool, typer.Option(
    "--quiet", "-q", help="No summary line on stderr (errors still show).")]


def build(
    budget: BudgetOption,
    profile: ProfileOption = DEFAULT_PROFILE,
    model_of_acceptance: BuildAcceptanceOption = AcceptanceChoice.independent,
    max_depth: MaxDepthOption = None,
    max_rank: MaxRankOption = None,
    max_children: MaxChildrenOption = None,
    engine: EngineOption = None,
    output: TreeOutputOption = None,
    curve: BuildCurveOption = None,
    weighting: WeightingOption = None,
    holdout: HoldoutOption = None,
    seed: SeedOption = 0,
    quiet: BuildQuietOption = False,
) -> None:
    """Build the tree with the highest expected accept length for a budget.

    Greedy by node value from the profile; optimal without --max-*/--engine limits
    (with them, valid but possibly suboptimal). One pass yields the best tree of
    every smaller budget too (see --curve). With a measured profile's rank vectors
    the score is tokens per decoding step, replayed over the calibration text
    (see --weighting).

    Example: treeopt build --budget 64 -o tree.json
    """
    from treeopt.workflows.trees import BuildSettings, build_to_files

    built = build_to_files(BuildSettings(
        budget=budget, profile=profile, acceptance_model=model_of_acceptance.value,
        max_depth=max_depth, max_rank=parse_max_rank(max_rank), max_children=max_children,
        engine=_value(engine), weighting=_value(weighting), holdout=holdout, seed=seed,
        output=output, curve=curve))
    result, tree = built.result, built.result.tree
    if built.note is not None and not quiet:
        typer.echo(built.note, err=True)
    if built.document is not None:
        sys.stdout.write(built.document)
    if quiet:
        return
    where = f"wrote {output}: " if output is not None else ""
    score = ("tokens per decoding step (replayed)" if result.weighting == "steps"
             else "expected accept length")
    typer.echo(
        f"{where}{len(tree)} nodes ({tree.num_tokens} tokens/step incl. root), depth "
        f"{tree.depth}, {score} {result.expected_accept_length:.4f} "
        f"({model_of_acceptance.value}, weighted by {result.weighting}, profile {profile})",
        err=True,
    )


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """Trees down, models of acceptance across (expected accept length, 4 decimals).

    A last column gives replayed tokens per decoding step when the profile has its
    rank vectors.
    """
    # A per-step (dynamic) policy has no expected accept length under a static model.
    models = list(dict.fromkeys(row["acceptance_model"] for row in rows
                                if row["expected_accept_length"] is not None))
    trees = list(dict.fromkeys(row["tree"] for row in rows))
    by_key = {(row["tree"], row["acceptance_model"]): row for row in rows}
    replayed = any("tokens_per_step_replayed" in row for row in rows)
    header = ["tree", "nodes", "tokens/step"] + [f"E[accept] {model}" for model in models]
    header += ["replayed per step"] if replayed else []
    body = []
    for tree in trees:
        first = next(row for row in rows if row["tree"] == tree)
        body.append([tree, str(first["nodes"]), str(first["num_tokens"])] + [
            _figure(by_key.get((tree, model), {}).get("expected_accept_length"))
            for model in models
        ] + ([_figure(first.get("tokens_per_step_replayed"))] if replayed else []))
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

    Output leads with one figure per tree: replayed tokens per step when the
    profile has rank vectors (what the runtime measures), else E[accept] under the
    most faithful model the profile supports (blend, joint, then independent).

    With --holdout F --seed S the trees are scored on the held-out prompts, and an
    "in-sample-N" row adds the tree built on those very prompts by position
    average: the ceiling of E[accept] for any N-token tree, not of replayed tokens
    per step. Build the contender on the other part with treeopt build --holdout F
    --seed S.

    \b
    Examples:
      treeopt eval mc_sim_7b_63 tree.json
      treeopt eval mc_sim_7b_63 tree.json -p my.json -a joint --json
    """
    from treeopt.optimize.evaluation import evaluate_trees, lead_figures

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
        what, figures = lead_figures(rows)
        width = max(len(name) for name in figures)
        typer.echo("\n".join([f"tokens per step: {what}",
                               *(f"{name.ljust(width)}  {value:.4f}"
                                 for name, value in figures.items()), ""]))
        typer.echo(format_table(rows))


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
    from treeopt.workflows.trees import import_published_profile

    name, profile = import_published_profile(csv_file, model, output, source, note)
    typer.echo(
        f"wrote {output}: {profile.num_heads} heads x top-{profile.top_k} ({name})", err=True
    )


def register(app: typer.Typer) -> None:
    """Add build, eval and import-profile to the treeopt app."""
    app.command("build")(build)
    app.command("eval")(eval_trees)
    app.command("import-profile")(import_profile)
