"""Timing helpers run on CPU and time the real decoding step."""

from __future__ import annotations

import pytest
import torch

from medusa_runtime.heads import MedusaConfig, MedusaHeads
from medusa_runtime.timing import random_weight_model, representative_tree, time_verification_step
from treeopt.errors import TreeoptError

torch.set_num_threads(1)

TINY = {
    "model_type": "llama", "vocab_size": 128, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
}


def test_representative_tree_shape() -> None:
    assert representative_tree(1, 4).num_tokens == 1
    tree = representative_tree(8, 3)
    assert tree.num_tokens == 8 and tree.depth == 3
    assert tree.as_lists() == [[0], [1], [2], [3], [4], [0, 0], [0, 0, 0]]
    assert representative_tree(3, 5).as_lists() == [[0], [0, 0]]
    with pytest.raises(TreeoptError, match="needs Medusa heads"):
        representative_tree(4, 0)


def test_random_weight_model_and_step_timing() -> None:
    torch.manual_seed(0)
    model = random_weight_model(TINY, dtype=torch.float32, device="cpu")
    assert next(model.parameters()).dtype == torch.float32
    assert model.config.hidden_size == 32
    heads = MedusaHeads(MedusaConfig(3, 1, 32, 128))
    for q in (1, 16):
        result = time_verification_step(model, heads, q, context=40, warmup=1, repeats=3)
        assert result["num_tokens"] == q and len(result["samples_s"]) == 3
        assert 0 < result["min_s"] <= result["median_s"] <= result["max_s"]
        assert result["cuda_graph"] is False
    batched = time_verification_step(model, heads, 4, batch=2, context=8, warmup=0, repeats=2)
    assert batched["batch"] == 2 and len(batched["samples_s"]) == 2
    with pytest.raises(TreeoptError):
        time_verification_step(model, heads, 4, context=8, repeats=0)
