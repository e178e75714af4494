"""Batched medusa_runtime decoding: every row equals plain greedy decoding of that row alone.

Rows of a batch accept paths of different lengths, so the shared cache gets holes
and rows have different true lengths; prompts of different lengths are
left-padded. None of that may change a single token.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_lm import NUM_HEADS, VOCAB, BatchOracleHeads, full_tree, greedy_reference, trees
from torch import nn

from medusa_runtime.decode import BatchGenerationResult, GenerationResult, generate, generate_batch
from medusa_runtime.heads import MedusaConfig, MedusaHeads
from medusa_runtime.timing import time_verification_step
from treeopt.core.tree import Tree

SHARED = Path(__file__).resolve().parents[2] / "shared"
STORIES = SHARED / "models" / "stories260K"

torch.set_num_threads(1)


def tiny_llama(seed: int = 0) -> nn.Module:
    """A 2-layer random float32 Llama with GQA."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def llama() -> nn.Module:
    return tiny_llama()


BATCH_MAX_NODES = 10  # smaller than the single-row tests: each example decodes a batch


PROMPTS = st.lists(
    st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=10), min_size=2, max_size=4
)
HYPOTHESIS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@HYPOTHESIS
@given(tree=trees(max_nodes=BATCH_MAX_NODES), prompts=PROMPTS, max_new_tokens=st.integers(1, 16))
def test_random_heads_batch_lossless(
    llama: nn.Module, tree: Tree, prompts: list[list[int]], max_new_tokens: int
) -> None:
    torch.manual_seed(len(prompts))
    heads = MedusaHeads(MedusaConfig(NUM_HEADS, 1, 32, VOCAB))
    result = generate(llama, heads, tree, prompts, max_new_tokens)
    assert isinstance(result, BatchGenerationResult)
    assert result.tokens == [greedy_reference(llama, p, max_new_tokens) for p in prompts]


@HYPOTHESIS
@given(tree=trees(max_nodes=BATCH_MAX_NODES), prompts=PROMPTS, max_new_tokens=st.integers(1, 20),
       eos_at=st.integers(0, 19))
def test_oracle_heads_batch_lossless_with_eos(
    llama: nn.Module, tree: Tree, prompts: list[list[int]], max_new_tokens: int, eos_at: int
) -> None:
    fulls = [greedy_reference(llama, p, 30) for p in prompts]
    eos = fulls[0][eos_at]  # row 0 surely stops (if it gets there); others maybe
    heads = BatchOracleHeads(llama, [p + f for p, f in zip(prompts, fulls, strict=True)],
                             NUM_HEADS)
    result = generate_batch(llama, heads, tree, prompts, max_new_tokens, eos_token_id=eos)
    assert result.tokens == [greedy_reference(llama, p, max_new_tokens, eos) for p in prompts]


def test_eos_in_one_row_holes_and_input_forms(llama: nn.Module) -> None:
    # Chosen so that row 0 emits a token at index 6 that the other rows never emit.
    prompts = [[49, 53, 5], [33, 62, 51, 38, 61, 45, 27, 17], [36]]
    max_new = 24
    fulls = [greedy_reference(llama, p, max_new) for p in prompts]
    heads = BatchOracleHeads(llama, [p + f for p, f in zip(prompts, fulls, strict=True)],
                             NUM_HEADS)
    assert generate_batch(llama, heads, full_tree(), prompts, max_new).tokens == fulls
    # Rank-2 branches pruned: rows miss at different levels.
    tree = Tree.from_paths(
        [[0], [1], [2], [0, 0], [0, 1], [1, 0], [2, 0], [0, 0, 0], [1, 0, 0]], num_heads=NUM_HEADS
    )
    plain = generate_batch(llama, heads, tree, prompts, max_new)
    assert plain.tokens == fulls
    # Rows accepted different lengths in the same step: the cache had holes.
    per_step = zip(*(row.accept_lengths for row in plain.sequences), strict=False)
    assert any(len(set(lengths)) > 1 for lengths in per_step)
    assert max(plain.sequences[0].accept_lengths) > 2

    # An EOS deep in row 0's output that the other rows never emit: row 0 stops
    # mid-path, the others run to max_new_tokens.
    others = set(fulls[1] + fulls[2])
    eos = next(t for t in fulls[0][4:] if t not in others)
    assert fulls[0].index(eos) >= 4
    stopped = generate_batch(llama, heads, tree, prompts, max_new, eos_token_id=eos)
    assert stopped.tokens[0] == fulls[0][: fulls[0].index(eos) + 1]
    assert stopped.tokens[1:] == fulls[1:]

    # A padded 2-D tensor with its attention mask (right padding here) is the same batch.
    width = max(map(len, prompts))
    ids = torch.tensor([p + [0] * (width - len(p)) for p in prompts])
    mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in prompts])
    tensor_result = generate(llama, heads, tree, ids, max_new, attention_mask=mask)
    assert isinstance(tensor_result, BatchGenerationResult)
    assert tensor_result.tokens == fulls
    # One sequence keeps the single-sequence result type.
    single = generate(llama, heads, tree, prompts[1], max_new)
    assert isinstance(single, GenerationResult) and single.tokens == fulls[1]


def test_time_verification_step_batch(llama: nn.Module) -> None:
    heads = MedusaHeads(MedusaConfig(NUM_HEADS, 1, 32, VOCAB))
    for batch in (1, 4):
        timing = time_verification_step(llama, heads, 8, batch=batch, context=32, repeats=2)
        assert timing["batch"] == batch and timing["median_s"] > 0


@pytest.mark.skipif(not STORIES.is_dir(), reason="needs ../shared/models/stories260K")
def test_stories260k_batch_lossless() -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(STORIES).eval()
    eos = model.config.eos_token_id
    prompts = [[1, 403, 261, 389, 266, 400], [1, 403], [1, 261, 389, 266, 400, 403, 261, 389]]
    max_new = 40
    fulls = [greedy_reference(model, p, max_new, eos) for p in prompts]
    tree = Tree.from_paths(
        [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0, 0]], num_heads=4
    )
    heads = BatchOracleHeads(model, [p + f for p, f in zip(prompts, fulls, strict=True)], 4)
    result = generate_batch(model, heads, tree, prompts, max_new, eos_token_id=eos)
    assert result.tokens == fulls
    assert all(row.acceleration_rate > 1.5 for row in result.sequences)
    torch.manual_seed(0)
    random_heads = MedusaHeads(MedusaConfig(4, 1, 64, 512))
    assert generate_batch(model, random_heads, tree, prompts, max_new, eos_token_id=eos).tokens \
        == fulls
