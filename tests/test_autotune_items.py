"""Issue 16's new-user findings that autotune's pipeline depends on, one test each.

Item 1: ``tune --measure`` prunes infeasible trials and never silently uses vicuna-7b.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from treeopt.cli import app
from treeopt.errors import TreeoptError

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    from medusa_runtime.heads import MedusaConfig, MedusaHeads

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, vocab_size=64,
                         max_position_embeddings=256)
    model = LlamaForCausalLM(config).eval().requires_grad_(False)
    heads = MedusaHeads(MedusaConfig(2, 1, 32, 64)).eval().requires_grad_(False)
    return model, heads


# ------------------------------------------------------------------ item 1
def test_study_prunes_infeasible_trials_instead_of_a_traceback(tiny):
    """Top-2 ranks of 2 heads leave 6 candidate nodes: budgets above 7 cannot be built."""
    from treeopt.core.profile import Profile
    from treeopt.model.study import StudyConfig, run_study

    model, heads = tiny
    profile = Profile.from_cumulative_accuracy([[0.6, 0.7], [0.4, 0.5]])
    config = StudyConfig(trials=6, seed=0, max_budget=64, max_new_tokens=3)
    outcome = run_study(model, heads, [[1, 5, 9]], profile, config, show_progress=False)
    assert outcome.num_trials == 6
    assert 0 < outcome.pruned_trials < 6
    assert outcome.tree.num_tokens == outcome.params["budget"] <= 7


def test_study_with_no_feasible_trial_is_one_line(tiny, monkeypatch):
    from treeopt.core.profile import Profile
    from treeopt.model import study
    from treeopt.model.study import StudyConfig, run_study

    model, heads = tiny
    profile = Profile.from_cumulative_accuracy([[0.6], [0.4]])  # top-1: 2 nodes at most
    monkeypatch.setattr(study, "MIN_BUDGET", 8)  # every budget searched is above that
    with pytest.raises(TreeoptError, match="all 2 trials were infeasible"):
        run_study(model, heads, [[1, 5, 9]], profile,
                  StudyConfig(trials=2, seed=0, max_budget=16, max_new_tokens=3),
                  show_progress=False)


def test_measure_without_a_profile_for_an_unregistered_model_fails_before_loading(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    result = CliRunner().invoke(app, ["tune", "--measure", "-m", str(tmp_path / "no-model"),
                                      "--heads", str(tmp_path), "--prompts", str(prompts),
                                      "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "--measure builds its trees from --profile" in result.output
    assert "Traceback" not in result.output


def test_study_profile_of_a_registry_model_is_its_shipped_one_said_aloud(capsys):
    from treeopt.model.study import study_profile

    assert study_profile("mine.json", "vicuna-7b") == "mine.json"
    assert study_profile(None, "vicuna-7b") == "vicuna-7b"
    assert "profile: vicuna-7b (shipped" in capsys.readouterr().err
    with pytest.raises(TreeoptError, match="give the profile of"):
        study_profile(None, "./m")


# ----------------------------------------------------------------- item 12
def test_eval_holdout_leads_with_one_figure_and_names_the_in_sample_row(tmp_path):
    import numpy as np

    from treeopt.core.profile import Profile
    from treeopt.files.profile_file import write_profile

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 25)
    first = rng.integers(-1, 4, len(groups))
    ranks = np.where(rng.uniform(size=(len(groups), 3)) < 0.6, first[:, None],
                     rng.integers(-1, 4, (len(groups), 3)))
    profile = tmp_path / "measured.json"
    write_profile(profile, Profile.from_rank_vectors(ranks, 4, groups, {"model": "synthetic"}))
    runner = CliRunner()
    built = runner.invoke(app, ["build", "-p", str(profile), "-b", "16", "--holdout", "0.25",
                                "-o", str(tmp_path / "t.json")])
    assert built.exit_code == 0, built.output
    result = runner.invoke(app, ["eval", str(tmp_path / "t.json"), "-p", str(profile),
                                 "--holdout", "0.25"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    # No rank vectors in this profile: the most faithful model's E[accept] leads.
    assert lines[0] == "tokens per step: E[accept], blend model of acceptance"
    assert lines[1].split()[0] == str(tmp_path / "t.json")
    assert lines[2].split()[0] == "in-sample-16"
    assert "oracle" not in result.stdout
