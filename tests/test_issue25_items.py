"""Issue 25 items 4-7 (report, latency spread and statistic, overhead contexts, eval
--holdout); the autotune folder items (1-3) and Ctrl-C (11) are in test_autotune_folder.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from treeopt.cli import app

SHARED = Path(__file__).resolve().parents[2] / "shared"
STORIES = SHARED / "models" / "stories260K"
runner = CliRunner()


# ------------------------------------------------------------------ item 7
def test_eval_holdout_in_sample_row_and_lead_figure_are_one_number(tmp_path: Path) -> None:
    """The lead said in-sample-64 = 3.6837 while the table's row said 3.6493: the row
    mixed the trees built under three models. One in-sample tree per size now."""
    from test_dynamic_cli import measured_profile

    profile = measured_profile(tmp_path / "p.json", heads=4, top_k=6, prompts=8, rows=800)
    args = ["eval", "mc_sim_7b_63", "-p", str(profile), "--holdout", "0.5"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tokens per step: replayed tokens per step")
    lead = {line.split()[0]: line.split()[1] for line in lines[1:3]}
    table = {line.split()[0]: line.split()[-1] for line in lines[4:] if line.strip()}
    assert lead["in-sample-64"] == table["in-sample-64"]
    rows = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    in_sample = [row for row in rows if row["tree"] == "in-sample-64"]
    assert len({row["tokens_per_step_replayed"] for row in in_sample}) == 1
    assert {row["built_with"] for row in in_sample} == {"blend"}
