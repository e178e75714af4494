"""``treeopt render``: pictures of trees, tree comparisons and build/tune curves.

Everything heavy (graphviz, matplotlib, numpy via profiles) is imported inside
the verb, so registering it costs nothing at start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from treeopt.cli.options import AcceptanceChoice, picture_file
from treeopt.pictures.render import DEFAULT_MAX_NODES
from treeopt.workflows.pictures import DEFAULT_ACCEPTANCE_MODEL

if TYPE_CHECKING:
    from treeopt.workflows.pictures import PictureOutcome

# Exit status when a picture was asked for but graphviz's `dot` is missing: the
# .dot file was written, the picture was not. Distinct from 2 (bad input) so
# scripts can tell "install graphviz" from "fix your arguments".
EXIT_NO_GRAPHVIZ = 3

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


def _report(outcome: PictureOutcome) -> None:
    """Say what was written; with no `dot`, one install line and exit 3."""
    if outcome.fell_back:
        from treeopt.pictures.render import INSTALL_HINT

        typer.echo(
            f"graphviz's `dot` not found: wrote {outcome.written} instead of "
            f"{outcome.requested}; {INSTALL_HINT}",
            err=True,
        )
        raise typer.Exit(EXIT_NO_GRAPHVIZ)
    typer.echo(f"wrote {outcome.written}", err=True)


TreeToDrawArgument = Annotated[str | None, typer.Argument(
    metavar="TREE",
    help="Tree JSON file or shipped tree name (e.g. mc_sim_7b_63). Not with --curve.",
    show_default=False)]
ColourProfileOption = Annotated[str | None, typer.Option(
    "--profile", "-p",
    help="Profile file or shipped name (e.g. vicuna-7b): colour nodes by "
    "acceptance probability and title the picture with the expected accept length.")]
PictureOutputOption = Annotated[Path | None, typer.Option(
    "-o", "--output", callback=picture_file,
    help="Picture to write: .svg, .png, .pdf or .dot. Default: TREE's name + .svg here.")]
MaxNodesOption = Annotated[int, typer.Option(
    "--max-nodes", min=0,
    help="Draw at most N nodes (root not counted); the rest fold into '+k hidden' boxes.")]
ColourAcceptanceOption = Annotated[AcceptanceChoice, typer.Option(
    "--acceptance-model", "-a", "--model-of-acceptance",
    help="With --profile: independent, joint or blend, as in `treeopt build` "
    "(joint and blend need a measured profile).")]
CompareOption = Annotated[str | None, typer.Option(
    "--compare", metavar="OTHER_TREE",
    help="Second tree: draw both, coloured by in both / only TREE / only OTHER.")]
CurveToDrawOption = Annotated[Path | None, typer.Option(
    "--curve", help="Plot a treeopt.curve/1 file (from build/tune --curve) instead of a tree.")]


def render(
    tree: TreeToDrawArgument = None,
    profile: ColourProfileOption = None,
    output: PictureOutputOption = None,
    max_nodes: MaxNodesOption = DEFAULT_MAX_NODES,
    acceptance_model: ColourAcceptanceOption = AcceptanceChoice(DEFAULT_ACCEPTANCE_MODEL),
    compare: CompareOption = None,
    curve: CurveToDrawOption = None,
) -> None:
    from treeopt.workflows.pictures import RenderSettings, render_picture

    outcome = render_picture(RenderSettings(
        tree=tree, profile=profile, output=output, max_nodes=max_nodes,
        acceptance_model=acceptance_model.value, compare=compare, curve=curve))
    if outcome.hidden_note:
        typer.echo(outcome.hidden_note, err=True)
    _report(outcome)


render.__doc__ = RENDER_HELP


def register(app: typer.Typer) -> None:
    """Add ``treeopt render`` to the CLI."""
    app.command("render")(render)
