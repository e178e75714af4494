"""`treeopt generate` end to end on stories260K (skipped without ../shared)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from treeopt.cli import app

STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"
pytestmark = pytest.mark.skipif(not STORIES.is_dir(), reason="needs ../shared/models/stories260K")


def test_generate_plain_and_random_heads_agree() -> None:
    runner = CliRunner()
    common = ["generate", "--model", str(STORIES), "--prompt", "Once upon a time",
              "--max-new-tokens", "20"]
    plain = runner.invoke(app, [*common, "--tree", "root"])
    assert plain.exit_code == 0, plain.output
    assert plain.stdout.startswith("Once upon a time")
    assert "20 tokens, 20 steps, acceleration rate 1.00" in plain.stderr
    medusa = runner.invoke(app, [*common, "--tree", "mc_sim_7b_63", "--random-heads"])
    assert medusa.exit_code == 0, medusa.output
    assert medusa.stdout == plain.stdout  # greedy is lossless whatever the heads


def test_generate_tree_without_heads_is_one_line_error() -> None:
    result = CliRunner().invoke(
        app, ["generate", "--model", str(STORIES), "--prompt", "x", "--tree", "mc_sim_7b_63"]
    )
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith("error: --tree mc_sim_7b_63 needs Medusa heads")
    assert "Traceback" not in result.stderr


def test_generate_keeps_the_space_before_the_first_new_word() -> None:
    """README walk: `--prompt "Once"` printed "Onceupon a time": the new tokens were
    decoded alone, which drops a SentencePiece word's leading space."""
    result = CliRunner().invoke(app, ["generate", "--model", str(STORIES), "--prompt", "Once",
                                      "--tree", "root", "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Once upon a")
