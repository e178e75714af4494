"""`treeopt study`: an optuna study on a tiny random Llama with random heads, resumable."""

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
    heads = MedusaHeads(MedusaConfig(3, 1, 32, 64)).eval().requires_grad_(False)
    return model, heads


def test_study_runs_resumes_and_returns_the_best_tree(tmp_path, tiny):
    from treeopt.core.profile import Profile
    from treeopt.model.study import StudyConfig, run_study

    model, heads = tiny
    profile = Profile.from_cumulative_accuracy(
        [[0.6, 0.7, 0.75], [0.4, 0.5, 0.55], [0.3, 0.38, 0.42]])
    prompts = [[1, 5, 9, 13], [2, 4, 6]]
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    config = StudyConfig(trials=2, seed=0, max_budget=8, max_new_tokens=6, storage=storage)
    first = run_study(model, heads, prompts, profile, config)
    assert first.num_trials == 2
    assert first.tokens_per_second > 0
    assert 2 <= first.params["budget"] <= 8
    assert first.tree.num_tokens == first.params["budget"]
    assert first.tree.depth <= first.params["max_depth"]
    resumed = run_study(model, heads, prompts, profile,
                        StudyConfig(trials=3, seed=0, max_budget=8, max_new_tokens=6,
                                    storage=storage))
    assert resumed.num_trials == 3 and resumed.own_trials == 1  # the stored study went on
    again = run_study(model, heads, prompts, profile,
                      StudyConfig(trials=3, seed=0, max_budget=8, max_new_tokens=6,
                                  storage=storage))
    assert again.num_trials == 3 and again.own_trials == 0  # --trials is the study's total
    assert again.writes_best
    assert resumed.tokens_per_second >= first.tokens_per_second


# Issue 16, item 1: infeasible trials pruned, never silently the vicuna-7b profile.
def test_study_prunes_infeasible_trials_instead_of_a_traceback(tiny):
    """Top-2 ranks of 2 heads leave 6 candidate nodes: budgets above 7 cannot be built."""
    from treeopt.core.profile import Profile
    from treeopt.model.study import StudyConfig, run_study

    model, heads = tiny
    profile = Profile.from_cumulative_accuracy([[0.6, 0.7], [0.4, 0.5]])  # 2 of the 3 heads
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
    result = CliRunner().invoke(app, ["study", "-m", str(tmp_path / "no-model"),
                                      "--heads", str(tmp_path), "--prompts", str(prompts),
                                      "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "error: --profile is needed: the study builds its trees from the profile" \
        in result.output
    assert "Traceback" not in result.output


def test_study_profile_of_a_registry_model_is_its_shipped_one_said_aloud(capsys):
    from treeopt.model.study import study_profile

    assert study_profile("mine.json", "vicuna-7b") == "mine.json"
    assert study_profile(None, "vicuna-7b") == "vicuna-7b"
    assert "profile: vicuna-7b (shipped" in capsys.readouterr().err
    with pytest.raises(TreeoptError, match="builds its trees from the profile of"):
        study_profile(None, "./m")


# README walk: a prompt too long for the context was an optuna traceback mid-study.
def test_study_drops_prompts_too_long_for_the_context_before_any_trial(tiny, capsys):
    from treeopt.core.profile import Profile
    from treeopt.model.study import StudyConfig, run_study

    model, heads = tiny  # 256 positions, 3 heads
    profile = Profile.from_cumulative_accuracy([[0.6, 0.7], [0.4, 0.5]])
    config = StudyConfig(trials=1, seed=0, max_budget=4, max_new_tokens=6)
    too_long = [1] * 250  # 250 + 6 new tokens + a 2-deep tree passes 256
    outcome = run_study(model, heads, [too_long, [1, 5, 9]], profile, config,
                        show_progress=False)
    assert outcome.num_trials == 1 and outcome.tokens_per_second > 0
    assert "dropped 1 of 2 prompts too long" in capsys.readouterr().err
    with pytest.raises(TreeoptError, match="leave no calibration prompt room"):
        run_study(model, heads, [too_long], profile, config, show_progress=False)
