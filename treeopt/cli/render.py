"""``treeopt render``: pictures of trees, tree comparisons and build/tune curves.

Everything heavy (graphviz, matplotlib, numpy via profiles) is imported inside
the verb, so registering it costs nothing at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from treeopt.cli.options import AcceptanceChoice, picture_file
from treeopt.errors import TreeoptError
from treeopt.pictures.render import DEFAULT_MAX_NODES

if TYPE_CHECKING:
    from treeopt.core.profile import Profile
    from treeopt.core.tree import Path as RankPath
    from treeopt.core.tree import Tree

# Exit status when a picture was asked for but graphviz's `dot` is missing: the
# .dot file was written, the picture was not. Distinct from 2 (bad input) so
# scripts can tell "install graphviz" from "fix your arguments".
EXIT_NO_GRAPHVIZ = 3
DEFAULT_SUFFIX = ".svg"  # scales without blurring and GitHub shows it inline
MAX_TITLE_FACTS = 4  # provenance entries in a curve plot's title before it overflows
DEFAULT_ACCEPTANCE_MODEL = "independent"  # what build, tune and evaluate default to

RENDER_HELP = (
    "Draw a tree (or two, or a build/tune curve) as a picture.\n\n"
    "\b\n"
    "  treeopt render mc_sim_7b_63                    -> mc_sim_7b_63.svg\n"
    "  treeopt render tree.json --profile vicuna-7b -o tree.png\n"
    "  treeopt render mc_sim_7b_63 --compare tree.json -o diff.svg\n"
    "  treeopt render --curve curve.json -o curve.png\n\n"
    "The root is at the left; each node is labelled 'h<head> r<rank>' (head = depth, rank "
    "0-based) and its children are stacked by rank, rank 0 on top, so the likely branches "
    "lean up. With --profile, nodes are coloured and sized by the probability that their "
    "path is accepted (colour key at the top) and the title gives the tree's expected "
    "accept length (tokens/step, root included).\n\n"
    "--compare draws the union of two trees: grey nodes are in both, orange only in TREE, "
    "blue only in OTHER_TREE; the legend counts each.\n\n"
    "Trees bigger than --max-nodes keep their most probable nodes (the first in canonical "
    "order without a profile) and fold the rest into '+k hidden' boxes; what was hidden is "
    "reported on stderr.\n\n"
    "The format follows -o's extension: .svg, .png, .pdf (need graphviz's `dot`) or .dot "
    "(DOT text). Default: TREE's name + .svg in the current folder (TREE_vs_OTHER.svg with "
    "--compare, CURVE's name + .svg with --curve). Without `dot`, the DOT text is written "
    "next to the requested file with a .dot extension, a one-line install hint is printed "
    f"and the exit status is {EXIT_NO_GRAPHVIZ}."
)


def _stem(name_or_path: str) -> str:
    """A file-name stem for a tree argument: a shipped name or a file's stem."""
    return Path(name_or_path).stem


def default_output(tree: str | None, compare: str | None, curve: Path | None) -> Path:
    """Where a picture goes when -o is not given (see RENDER_HELP)."""
    if curve is not None:
        return Path(curve.stem + DEFAULT_SUFFIX)
    assert tree is not None
    if compare is not None:
        return Path(f"{_stem(tree)}_vs_{_stem(compare)}{DEFAULT_SUFFIX}")
    return Path(_stem(tree) + DEFAULT_SUFFIX)


def acceptance_probabilities(
    profile: Profile, paths: Sequence[RankPath], acceptance_model: str
) -> Mapping[RankPath, float]:
    """P(path accepted) per path under the profile, as the builder values nodes."""
    from treeopt.core.tree import Tree
    from treeopt.optimize.acceptance_models import node_values

    return node_values(Tree.from_paths(paths), profile, acceptance_model)


def _expected_accept_length(tree: Tree, profile: Profile, acceptance_model: str) -> float:
    from treeopt.optimize.acceptance_models import expected_accept_length

    return expected_accept_length(tree, profile, acceptance_model=acceptance_model)


def _tree_title(name: str, tree: Tree, accept: float | None, source: str) -> str:
    title = f"{name}: {len(tree)} nodes, {tree.num_tokens} tokens/step, depth {tree.depth}"
    if accept is not None:
        title += f", expected accept length {accept:.3f} ({source})"
    return title


def _report(outcome_written: Path, fell_back: bool, requested: Path) -> None:
    """Say what was written; with no `dot`, one install line and exit 3."""
    if fell_back:
        from treeopt.pictures.render import INSTALL_HINT

        typer.echo(
            f"graphviz's `dot` not found: wrote {outcome_written} instead of {requested}; "
            f"{INSTALL_HINT}",
            err=True,
        )
        raise typer.Exit(EXIT_NO_GRAPHVIZ)
    typer.echo(f"wrote {outcome_written}", err=True)


def render(
    tree: Annotated[
        str | None,
        typer.Argument(
            metavar="TREE",
            help="Tree JSON file or shipped tree name (e.g. mc_sim_7b_63). Not with --curve.",
            show_default=False,
        ),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile", "-p",
            help="Profile file or shipped name (e.g. vicuna-7b): colour nodes by "
            "acceptance probability and title the picture with the expected accept length.",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o", "--output", callback=picture_file,
            help="Picture to write: .svg, .png, .pdf or .dot. Default: TREE's name + .svg "
            "here.",
        ),
    ] = None,
    max_nodes: Annotated[
        int,
        typer.Option(
            "--max-nodes", min=0,
            help="Draw at most N nodes (root not counted); the rest fold into '+k hidden' "
            "boxes.",
        ),
    ] = DEFAULT_MAX_NODES,
    acceptance_model: Annotated[
        AcceptanceChoice,
        typer.Option(
            "--acceptance-model", "-a", "--model-of-acceptance",
            help="With --profile: independent, joint or blend, as in `treeopt build` "
            "(joint and blend need a measured profile).",
        ),
    ] = AcceptanceChoice(DEFAULT_ACCEPTANCE_MODEL),
    compare: Annotated[
        str | None,
        typer.Option(
            "--compare", metavar="OTHER_TREE",
            help="Second tree: draw both, coloured by in both / only TREE / only OTHER.",
        ),
    ] = None,
    curve: Annotated[
        Path | None,
        typer.Option(
            "--curve",
            help="Plot a treeopt.curve/1 file (from build/tune --curve) instead of a tree.",
        ),
    ] = None,
) -> None:
    from treeopt.pictures import render as pictures

    if curve is not None:
        if tree is not None or compare is not None or profile is not None:
            raise TreeoptError("--curve draws a curve file alone: drop TREE, --compare, --profile")
        _render_curve(curve, output or default_output(None, None, curve))
        return
    if tree is None:
        raise TreeoptError("nothing to draw: give a TREE (file or shipped name) or --curve FILE")
    target = output or default_output(tree, compare, None)
    pictures.output_format(target)  # refuse a bad extension before any work

    from treeopt.files.tree_file import load_tree_document

    first = load_tree_document(tree)
    loaded_profile = None
    if profile is not None:
        from treeopt.files.profile_file import load_profile

        loaded_profile = load_profile(profile)

    model = acceptance_model.value
    if loaded_profile is None and model != DEFAULT_ACCEPTANCE_MODEL:
        raise TreeoptError(f"-a {model} needs --profile: it colours nodes by a profile")
    if compare is None:
        probabilities, accept, source = None, first.expected_accept_length, "from the tree file"
        if loaded_profile is not None:
            probabilities = acceptance_probabilities(loaded_profile, first.tree.paths, model)
            accept = _expected_accept_length(first.tree, loaded_profile, model)
            source = f"{profile}, {model}"
        title = _tree_title(_stem(tree), first.tree, accept, source)
        picture = pictures.tree_to_dot(first.tree, probabilities, title, max_nodes)
    else:
        second = load_tree_document(compare)
        names = (_stem(tree), _stem(compare))
        title = f"{names[0]} ({len(first.tree)} nodes) vs {names[1]} ({len(second.tree)} nodes)"
        probabilities = None
        if loaded_profile is not None:
            union = sorted(set(first.tree.paths) | set(second.tree.paths))
            probabilities = acceptance_probabilities(loaded_profile, union, model)
            accepts = [_expected_accept_length(t.tree, loaded_profile, model)
                       for t in (first, second)]
            title += (
                f"; expected accept length {accepts[0]:.3f} vs {accepts[1]:.3f} "
                f"({profile}, {model})"
            )
        picture = pictures.comparison_to_dot(
            first.tree, second.tree, names, probabilities, title, max_nodes
        )
    note = picture.hidden_note()
    if note:
        typer.echo(note, err=True)
    outcome = pictures.render_dot(picture.source, target)
    _report(outcome.written, outcome.fell_back, target)


def curve_title(name: str, provenance: Mapping[str, object]) -> str:
    """A plot title: the curve's name and its scalar provenance (profile, GPU, ...)."""
    facts = [
        f"{key}={value}" for key, value in provenance.items()
        if isinstance(value, (str, int, float)) and not isinstance(value, bool)
    ][:MAX_TITLE_FACTS]
    return f"{name} ({', '.join(facts)})" if facts else name


def _render_curve(curve: Path, target: Path) -> None:
    from treeopt.files.curve_file import read_curve
    from treeopt.pictures.plots import plot_curve

    loaded = read_curve(curve)
    written = plot_curve(loaded.rows, target, title=curve_title(curve.stem, loaded.provenance))
    typer.echo(f"wrote {written}", err=True)


render.__doc__ = RENDER_HELP


def register(app: typer.Typer) -> None:
    """Add ``treeopt render`` to the CLI."""
    app.command("render")(render)
