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
