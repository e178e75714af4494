"""The ``treeopt`` command line (typer).

Each area keeps its verbs in its own ``treeopt/cli/<area>.py`` with a
``register(app)`` function; a verb parses its options, calls one function of
``treeopt.workflows`` and prints. This module owns the app, error handling (a
library's ``ParameterError`` is shown with the verb's own flag) and the
tree-file verbs. Verbs that need torch import it inside the function body, so
``treeopt build`` and friends start fast.
"""

from __future__ import annotations

import importlib
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from treeopt.cli.options import STAGE_KEY, output_file, output_file_or_stdout
from treeopt.errors import ParameterError, TreeoptError
from treeopt.files.engines import FORMATS, TRTLLM_DEFAULT_MAX_DRAFT_LEN

# Modules that add verbs; each must import cheaply (no torch at module level).
COMMAND_MODULES = (
    "treeopt.cli.build",
    "treeopt.cli.runtime",
    "treeopt.cli.profile",
    "treeopt.cli.merge",
    "treeopt.cli.tune",
    "treeopt.cli.study",
    "treeopt.cli.roofline",
    "treeopt.cli.render",
    "treeopt.cli.autotune",
)


VERB_KEY = "treeopt.verb"
ARGV_KEY = "treeopt.argv"  # the verb and its arguments as typed (ctx.meta)
# Library parameters whose option is spelled otherwise (tried after the parameter's own).
OPTION_OF_PARAMETER = {"holdout_fraction": "holdout", "batches": "batch", "contexts": "context",
                       "decode_rounds": "rounds", "prompts": "data",
                       "trees": "tree"}


def option_for(command: Any, parameter: str) -> str | None:
    """The verb's option for a library parameter: ``max_depth`` -> ``--max-depth``.

    Matched by the option's Python name or by its spelling; None when the verb has
    no such option (the message then keeps the parameter's name).
    """
    for name in dict.fromkeys((parameter, OPTION_OF_PARAMETER.get(parameter, parameter))):
        spelled = "--" + name.replace("_", "-")
        for option in getattr(command, "params", ()):
            names = [flag for flag in option.opts if flag.startswith("--")]
            if (option.name == name and names) or spelled in names:
                return spelled if spelled in names else names[0]
    return None


def one_line(message: str) -> str:
    """click's multi-line usage messages on one line.

    A missing choice option lists its choices one per line ("Choose from:\n\tmedusa,
    \n\ttrtllm"), a library's message may quote a multi-line one; every ``error:`` is
    one line, so the lines are joined with spaces.
    """
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


class TreeoptGroup(TyperGroup):
    """Turns a TreeoptError anywhere in a verb, or a usage error, into one ``error: ...`` line.

    Exit code 2 for both, as click uses for usage errors.
    """

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as exc:  # bad option, value, verb or missing argument
            context = getattr(exc, "ctx", None)
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `treeopt`: its message is the help
                typer.echo(exc.format_message(), err=True)
            else:
                where = f" (see '{context.command_path} --help')" if context is not None else ""
                typer.echo(f"error: {one_line(exc.format_message())}{where}", err=True)
            sys.exit(getattr(exc, "exit_code", 2))
        except (typer.Abort, KeyboardInterrupt):  # outside a verb (invoke says more inside)
            typer.echo("interrupted: nothing was saved", err=True)
            sys.exit(130)
        # Without standalone mode click returns the exit code of --help and typer.Exit.
        sys.exit(result if isinstance(result, int) else 0)

    def resolve_command(self, ctx: typer.Context, args: list[str]) -> Any:
        name, command, rest = super().resolve_command(ctx, args)
        ctx.meta[VERB_KEY] = command  # so an error can name the verb's own options
        ctx.meta[ARGV_KEY] = list(args)  # so Ctrl-C can say the command that resumes
        return name, command, rest

    def invoke(self, ctx: typer.Context) -> object:
        try:
            return super().invoke(ctx)
        except ParameterError as exc:
            flag = option_for(ctx.meta.get(VERB_KEY), exc.parameter)
            typer.echo(f"error: {flag or exc.parameter} {one_line(exc.reason)}", err=True)
            raise typer.Exit(2) from None
        except TreeoptError as exc:
            if not getattr(exc, "quiet", False):  # quiet: another rank of the run reports it
                typer.echo(f"error: {one_line(str(exc))}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            # Here, before typer turns it into a silent exit 130: say what was saved.
            from treeopt.cli.interrupted import interrupted_message

            typer.echo(interrupted_message(ctx.meta.get(ARGV_KEY, []), ctx.meta.get(STAGE_KEY)),
                       err=True)
            raise typer.Exit(130) from None

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return list(self.commands)  # registration order, not alphabetical


app = typer.Typer(
    cls=TreeoptGroup,
    name="treeopt",
    help=(
        "Find, tune and export the best Medusa token tree for your model and GPU.\n\n"
        "Budget = tokens verified per step, the root (base model's own token) included: "
        "--budget 64 is 63 paths + the root, the size of mc_sim_7b_63. Path ranks are "
        "0-based: [0, 2] is head 1's top token, then head 2's third.\n\n"
        "Start with: treeopt build --budget 64 -o tree.json"
    ),
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        from treeopt._version import __version__

        typer.echo(f"treeopt {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option(
        "--version", callback=_show_version, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    """Find, tune and export the best Medusa token tree for your model and GPU."""

TreeArg = Annotated[
    str, typer.Argument(help="Tree JSON file, or the name of a shipped tree (e.g. mc_sim_7b_63).")
]


ExportTarget = Enum("ExportTarget", {name: name for name in FORMATS}, type=str)  # typer choices


@app.command()
def validate(tree: TreeArg) -> None:
    """Check a tree file; print 'ok' and a one-line summary, or the first problem (exit 2).

    \b
    Examples:
      treeopt validate tree.json
      treeopt validate mc_sim_7b_63        (a shipped tree)
    """
    from treeopt.files.tree_file import load_tree

    loaded = load_tree(tree)
    typer.echo(
        f"ok: {tree}: {len(loaded)} nodes ({loaded.num_tokens} tokens/step incl. root), "
        f"depth {loaded.depth}, {loaded.num_heads} heads"
    )


@app.command()
def info(
    tree: TreeArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object.")] = False,
) -> None:
    """Nodes, depth, per-depth width and max rank per depth of a tree.

    \b
    Examples:
      treeopt info mc_sim_7b_63
      treeopt info tree.json --json
    """
    from treeopt.files.tree_file import load_tree_document

    document = load_tree_document(tree)
    summary = document.tree.summary()
    summary["expected_accept_length"] = document.expected_accept_length
    summary["provenance"] = document.provenance
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        if key == "provenance":
            value = ", ".join(f"{k}={v}" for k, v in document.provenance.items()) or "-"
        typer.echo(f"{key:>24}: {value if value is not None else '-'}")


@app.command("export")
def export_tree(
    tree: TreeArg,
    to: Annotated[ExportTarget, typer.Option("--to", help="Target runtime's format.")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", callback=output_file_or_stdout,
            help="Write here (default, or -: stdout).")
    ] = None,
    max_draft_len: Annotated[
        int, typer.Option(help="TensorRT-LLM engine's max_draft_len (nodes, root excluded).")
    ] = TRTLLM_DEFAULT_MAX_DRAFT_LEN,
    allow_nonuniform: Annotated[
        bool,
        typer.Option(
            help="vllm: export even if nodes at a level have different numbers of children "
            "(vLLM will then verify a different tree than this one)."
        ),
    ] = False,
) -> None:
    """Write a tree in another runtime's format.

    medusa: Medusa's medusa_choices (Python list literal). trtllm: TensorRT-LLM
    medusa_choices JSON (LLM API, TensorRT-engine backend; checked against its
    limits). trtllm-triton: the same in the Triton backend's config.pbtxt brace
    form ({0}, {0, 0}, ...). vllm: vLLM's old speculative_token_tree (removed
    upstream; refused unless every node at a level has the same number of
    children). vllm-medusa: vLLM's --speculative-config for a top-1 chain. eagle:
    EAGLE-1 tree_choices. When the target's current release no longer takes a
    static tree, a one-line warning goes to stderr (docs/trees.md: "Engines as
    they are today").

    \b
    Examples:
      treeopt export tree.json --to trtllm -o medusa_choices.json
      treeopt export tree.json --to trtllm-triton   # for config.pbtxt
      treeopt export chain.json --to vllm-medusa    # chain from build --engine
    """
    from treeopt.core.atomic import atomic_write_text
    from treeopt.files.engines import export_text, nonuniform_levels, static_tree_warning
    from treeopt.files.tree_file import load_tree

    loaded = load_tree(tree)
    text = export_text(loaded, to.value, max_draft_len, allow_nonuniform=allow_nonuniform)
    outdated = static_tree_warning(to.value)
    if outdated is not None:
        typer.echo(f"warning: {outdated}", err=True)
    if to is ExportTarget.vllm and allow_nonuniform and nonuniform_levels(loaded):
        typer.echo(
            "warning: nodes at some level have different numbers of children; vLLM drafts "
            "the same number under every node of a level, so it will not verify this tree",
            err=True,
        )
    if output is None:
        typer.echo(text)
    else:
        atomic_write_text(output, text + "\n")
        typer.echo(f"wrote {output} ({to.value})", err=True)


@app.command("import")
def import_tree(
    file: Annotated[Path, typer.Argument(help="File in another runtime's tree format.")],
    from_: Annotated[ExportTarget, typer.Option("--from", help="Format of FILE.")],
    output: Annotated[Path, typer.Option("-o", "--output", callback=output_file,
        help="treeopt.tree/1 file to write.")],
    num_heads: Annotated[
        int | None,
        typer.Option(min=1, help="Medusa heads the tree is for (default: its depth)."),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", help="The list to read from a file of several named lists "
                     "(Medusa's medusa_choices.py), e.g. mc_sim_7b_63."),
    ] = None,
) -> None:
    """Read a tree from another runtime's format and write it as treeopt.tree/1 JSON.

    \b
    Examples:
      treeopt import medusa_choices.py --from medusa --name mc_sim_7b_63 \\
          -o tree.json
      treeopt import choices.json --from trtllm --num-heads 5 -o tree.json
    """
    from treeopt.files.engines import import_text
    from treeopt.files.jsondoc import read_text
    from treeopt.files.tree_file import write_tree

    text = read_text(file, from_.value)
    try:
        tree = import_text(text, from_.value, num_heads=num_heads, name=name)
    except TreeoptError as exc:
        raise TreeoptError(f"{file}: {exc}") from None
    provenance = {"imported_from": str(file), "format": from_.value}
    if name is not None:
        provenance["name"] = name
    write_tree(output, tree, provenance=provenance)
    typer.echo(f"wrote {output}: {len(tree)} nodes, depth {tree.depth}", err=True)


for _module_name in COMMAND_MODULES:
    importlib.import_module(_module_name).register(app)


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
