"""``treeopt merge``: profiles made separately (other machines, other days) into one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from treeopt.cli.options import output_file


def merge(
    profiles: Annotated[list[str], typer.Argument(
        metavar="PROFILE",
        help="Profile JSON files written by treeopt profile (their .ranks.npz beside them), "
             "in the order their prompts go in.")],
    output: Annotated[Path, typer.Option("-o", "--output", callback=output_file,
                                         help="Merged profile JSON to write.")],
) -> None:
    """Merge profiles of the same model, heads, tokenizer and top-k into one.

    The result equals profiling all their prompts at once (inputs in the order
    given): counts, rank vectors (OUTPUT.ranks.npz) and greedy targets
    (OUTPUT.targets.json) are put together exactly. Profiles of another model,
    heads, tokenizer (compared by the content digests treeopt profile records),
    top-k or settings are refused. Draft-model profiles merge the same way.

    \b
    Examples:
      treeopt merge node0.json node1.json -o all.json
      treeopt merge monday.json tuesday.json -o week.json
    """
    from treeopt.workflows.merge import merge_profile_files

    merged = merge_profile_files(profiles, output)
    typer.echo(f"wrote {output}: {merged.num_positions} positions from {len(profiles)} "
               f"profiles ({merged.provenance.get('prompts', '?')} prompts), "
               f"{merged.num_heads} heads, top-{merged.top_k}", err=True)


def register(app: typer.Typer) -> None:
    """Add ``merge`` to the treeopt CLI."""
    app.command("merge")(merge)
