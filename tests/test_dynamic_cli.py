"""``treeopt eval dynamic:N`` and ``treeopt generate --tree dynamic:N``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from treeopt.cli import app
from treeopt.core.profile import Profile
from treeopt.files.profile_file import write_profile

STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"
runner = CliRunner()


def measured_profile(path: Path, heads: int = 5, top_k: int = 8, prompts: int = 8,
                     rows: int = 400) -> Path:
    """A profile with rank vectors and head probabilities where a confident head is right."""
    rng = np.random.default_rng(0)
    probs = -np.sort(-rng.dirichlet(np.full(top_k + 1, 0.3), size=(rows, heads))[..., :top_k])
    ranks = (rng.random((rows, heads, 1)) > np.cumsum(probs, axis=-1)).sum(axis=-1)
    ranks[ranks >= top_k] = -1
    groups = np.repeat(np.arange(prompts), rows // prompts)
    profile = Profile.from_rank_vectors(ranks, top_k, groups=groups,
                                        first_decode_index=np.zeros(prompts, dtype=np.int64),
                                        probs=probs.astype(np.float32))
    write_profile(path, profile)
    return path


def test_eval_scores_a_dynamic_policy_beside_static_trees(tmp_path: Path) -> None:
    profile = measured_profile(tmp_path / "p.json")
    result = runner.invoke(app, ["eval", "dynamic:4", "mc_sim_7b_63", "-p", str(profile),
                                 "--holdout", "0.5", "--json"])
    assert result.exit_code == 0, result.output
    import json

    rows = json.loads(result.stdout)
    dynamic = [row for row in rows if row["tree"] == "dynamic:4"]
    assert len(dynamic) == 1 and dynamic[0]["expected_accept_length"] is None
    assert 1.0 < dynamic[0]["tokens_per_step_replayed"] < 4.0
    table = runner.invoke(app, ["eval", "dynamic:4", "-p", str(profile)])
    assert table.exit_code == 0 and "dynamic:4" in table.stdout


def test_eval_refuses_bad_dynamic_sizes_and_profiles_without_probabilities(
        tmp_path: Path) -> None:
    profile = measured_profile(tmp_path / "p.json")
    bad = runner.invoke(app, ["eval", "dynamic:1", "-p", str(profile)])
    assert bad.exit_code == 2 and "dynamic:N" in bad.output
    shipped = runner.invoke(app, ["eval", "dynamic:8"])  # the shipped profile has no vectors
    assert shipped.exit_code == 2 and shipped.output.count("\n") == 1


@pytest.mark.skipif(not STORIES.is_dir(), reason="needs ../shared/models/stories260K")
def test_generate_with_a_dynamic_tree_writes_the_plain_text(tmp_path: Path) -> None:
    profile = measured_profile(tmp_path / "p.json")
    common = ["generate", "--model", str(STORIES), "--prompt", "Once upon a time",
              "--max-new-tokens", "24"]
    plain = runner.invoke(app, [*common, "--tree", "root"])
    dynamic = runner.invoke(app, [*common, "--tree", "dynamic:6", "-p", str(profile),
                                  "--random-heads"])
    assert plain.exit_code == 0 and dynamic.exit_code == 0, dynamic.output
    assert dynamic.stdout.splitlines()[0] == plain.stdout.splitlines()[0]
    alone = runner.invoke(app, [*common, "--tree", "dynamic:6", "--random-heads"])
    assert alone.exit_code == 2 and "--profile" in alone.output


def test_eval_holdout_adds_the_in_sample_tree_of_a_dynamic_size(tmp_path: Path) -> None:
    """README walk: `eval dynamic:16 mc_sim_7b_63 --holdout` showed in-sample-64 only,
    so the policy had no static tree of its own size built on the held-out prompts."""
    import json

    profile = measured_profile(tmp_path / "p.json")
    result = runner.invoke(app, ["eval", "dynamic:4", "mc_sim_7b_63", "-p", str(profile),
                                 "--holdout", "0.5", "--json"])
    assert result.exit_code == 0, result.output
    names = {row["tree"] for row in json.loads(result.stdout)}
    assert {"in-sample-4", "in-sample-64"} <= names
