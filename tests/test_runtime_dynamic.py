"""Dynamic per-step trees in the runtime: lossless, the offline policy's choice, no graph break."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_lm import NUM_HEADS, VOCAB, greedy_reference, tiny_model
from torch import nn

from medusa_runtime.decode import generate
from medusa_runtime.dynamic import DynamicTree, DynamicTreeDecoder
from medusa_runtime.heads import MedusaConfig, MedusaHeads
from treeopt.core.tree import Tree
from treeopt.optimize.dynamic import (
    CALIBRATION_GRID,
    HeadCalibration,
    candidate_pool,
    choose_paths,
)

torch.set_num_threads(1)
# A monotone calibration that is not the identity: values differ from raw probabilities.
TABLE = np.sqrt(np.linspace(0.0, 1.0, CALIBRATION_GRID))[None].repeat(NUM_HEADS, axis=0)


def policy(size: int) -> DynamicTree:
    pool = Tree.from_paths(candidate_pool(size, NUM_HEADS), num_heads=NUM_HEADS)
    return DynamicTree(pool, size, torch.tensor(TABLE))


@pytest.fixture(scope="module")
def llama() -> nn.Module:
    return tiny_model()


def heads(seed: int) -> MedusaHeads:
    torch.manual_seed(seed)
    return MedusaHeads(MedusaConfig(NUM_HEADS, 1, 32, VOCAB)).eval()


class ChainOracle(nn.Module):
    """Heads that rank the base model's true future token first (confident) or second."""

    def __init__(self, model: nn.Module, sequence: list[int]) -> None:
        super().__init__()
        self.sequence = sequence
        self.num_heads = NUM_HEADS
        with torch.no_grad():
            self.reference = model.get_decoder()(torch.tensor([sequence])).last_hidden_state[0]

    def forward(self, hidden: torch.Tensor, num_heads: int | None = None) -> torch.Tensor:
        position = int((self.reference - hidden.reshape(-1, hidden.shape[-1])[0])
                       .norm(dim=-1).argmin())
        rows = []
        for k in range(num_heads or NUM_HEADS):
            logits = torch.linspace(0.0, -8.0, VOCAB)[torch.randperm(
                VOCAB, generator=torch.Generator().manual_seed(position * 7 + k))]
            target = position + 2 + k
            if target < len(self.sequence):
                second = (position + k) % 3 == 0  # sometimes the truth is not the top token
                logits[self.sequence[target]] = logits.max() + (-0.5 if second else 2.0)
            rows.append(logits)
        return torch.stack(rows)


SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(size=st.integers(2, 12), seed=st.integers(0, 50),
       prompts=st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=9),
                        min_size=1, max_size=2),
       max_new_tokens=st.integers(1, 20))
def test_random_heads_lossless(llama: nn.Module, size: int, seed: int,
                               prompts: list[list[int]], max_new_tokens: int) -> None:
    result = generate(llama, heads(seed), policy(size), prompts, max_new_tokens)
    rows = [result] if len(prompts) == 1 else result.sequences
    for prompt, row in zip(prompts, rows, strict=True):
        assert row.tokens == greedy_reference(llama, prompt, max_new_tokens)


@pytest.mark.parametrize("size", [4, 9])
def test_oracle_heads_accept_long_paths_and_stop_at_eos(llama: nn.Module, size: int) -> None:
    prompt = [3, 14, 15]
    full = greedy_reference(llama, prompt, 40)
    oracle = ChainOracle(llama, prompt + full)
    result = generate(llama, oracle, policy(size), prompt, 30)
    assert result.tokens == full[:30]
    assert result.tokens_per_verification_step > 2.0
    eos = full[11]
    stopped = generate(llama, oracle, policy(size), prompt, 30, eos_token_id=eos)
    assert stopped.tokens == full[: full.index(eos) + 1]


def test_runtime_chooses_what_the_offline_policy_chooses(llama: nn.Module) -> None:
    size, head_set = 7, heads(3)
    decoder = DynamicTreeDecoder(llama, head_set, policy(size), 64, batch_size=2)
    hidden = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        decoder._lay_out_next_tree(torch.tensor([1, 2]), hidden)
        probs = torch.softmax(head_set(hidden, num_heads=NUM_HEADS), dim=-1)  # [D, B, V]
        top = probs.topk(size - 1, dim=-1).values.transpose(0, 1).numpy()  # [B, D, k]
    pool = [(), *candidate_pool(size, NUM_HEADS)]
    calibration = HeadCalibration(TABLE)
    for row in range(2):
        expected = choose_paths(calibration.log_values(top[row]), size)
        chosen = {pool[i] for i in decoder.chosen_nodes[row].tolist()} - {()}
        assert chosen == set(expected.paths)


def test_step_traces_without_graph_breaks(llama: nn.Module) -> None:
    decoder = DynamicTreeDecoder(llama, heads(0), policy(8), 64, batch_size=2)
    with torch.inference_mode():
        decoder.prefill(torch.randint(0, VOCAB, (2, 5), generator=torch.Generator()
                                      .manual_seed(1)))
        explanation = torch._dynamo.explain(decoder._step)()
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_compiled_dynamic_step_is_lossless(llama: nn.Module) -> None:
    prompt = [7, 1, 2, 8]
    result = generate(llama, heads(1), policy(6), prompt, 12, compile_step=True)
    assert result.compiled and result.tokens == greedy_reference(llama, prompt, 12)
