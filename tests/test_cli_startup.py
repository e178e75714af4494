"""The everyday verbs stay light: importing the CLI must not import torch or friends."""

import subprocess
import sys

HEAVY = ("torch", "transformers", "matplotlib", "optuna", "graphviz", "scipy")


def test_cli_import_pulls_no_heavy_modules():
    code = (
        "import sys, treeopt.cli; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "", f"treeopt.cli imported {loaded} at start-up"


def test_help_lists_every_verb():
    from typer.testing import CliRunner

    from treeopt.cli import app

    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for verb in ("validate", "info", "export", "import"):
        assert verb in result.output


# Rich keeps a docstring's own line breaks and wraps again at the terminal's width, so
# a hard-wrapped line longer than an 80-column help box leaves an orphan word on a line.
HELP_TEXT_WIDTH = 78  # an 80-column terminal less rich's margin


def test_every_verb_help_reads_at_80_columns():
    import inspect

    import typer.main

    from treeopt.cli import app

    for name, command in typer.main.get_command(app).commands.items():
        doc = inspect.cleandoc(command.callback.__doc__ or "")
        summary, *paragraphs = doc.split("\n\n")
        assert "\n" not in summary, f"{name}: the summary in the verb list must be one line"
        for paragraph in paragraphs:
            lines = paragraph.split("\n")
            if len(lines) == 1:  # one long line: rich wraps it cleanly
                continue
            for line in lines:
                assert len(line) <= HELP_TEXT_WIDTH, f"{name}: {line!r}"
            commands = paragraph.replace("\\\n", " ").split("\n")  # continuations joined
            examples = [line for line in commands if line.lstrip().startswith("treeopt ")]
            assert len(examples) == len(set(examples)), f"{name}: an example is repeated"
