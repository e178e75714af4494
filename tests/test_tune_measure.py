"""`tune --measure`: an optuna study on a tiny random Llama with random heads, resumable."""

from __future__ import annotations

import pytest

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
                        StudyConfig(trials=1, seed=0, max_budget=8, max_new_tokens=6,
                                    storage=storage))
    assert resumed.num_trials == 3  # the stored study went on
    assert resumed.tokens_per_second >= first.tokens_per_second
