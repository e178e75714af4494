"""Draft-model speculative decoding in medusa_runtime: lossless greedy, chain and tree.

The draft is the target with slightly perturbed weights (it agrees often but not
always, so steps accept every length from the root alone to the whole path), a
different smaller model (accepts almost nothing), or the target itself (accepts
everything): each exercises how the draft cache follows what the target accepts.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_lm import VOCAB, greedy_reference, tiny_model, trees
from torch import nn

from medusa_runtime.decode import TreeDecoder, generate
from medusa_runtime.drafter import DraftModelDrafter
from medusa_runtime.heads import MedusaConfig, MedusaHeads
from treeopt.core.tree import Tree
from treeopt.errors import TreeoptError

torch.set_num_threads(1)

# Weight noise that makes the tiny target's copy agree with it on roughly half the tokens.
NOISE_STD = 0.005
TREE = Tree.from_paths([(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0)])


def noisy_copy(model: nn.Module, std: float = NOISE_STD, seed: int = 1) -> nn.Module:
    draft = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in draft.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * std)
    return draft


def small_draft() -> nn.Module:
    """A different, smaller one-layer Llama over the same vocabulary."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(7)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=256)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def target() -> nn.Module:
    return tiny_model()


@pytest.fixture(scope="module")
def noisy(target: nn.Module) -> DraftModelDrafter:
    return DraftModelDrafter(noisy_copy(target))


HYPOTHESIS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@HYPOTHESIS
@given(
    tree=st.one_of(trees(), st.integers(0, 5).map(Tree.chain)),
    prompt=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=10),
    max_new_tokens=st.integers(1, 30),
    eos_at=st.one_of(st.none(), st.integers(0, 29)),
)
def test_noisy_draft_lossless(target: nn.Module, noisy: DraftModelDrafter, tree: Tree,
                              prompt: list[int], max_new_tokens: int, eos_at: int | None) -> None:
    eos = greedy_reference(target, prompt, 30)[eos_at] if eos_at is not None else None
    result = generate(target, None, tree, prompt, max_new_tokens, eos_token_id=eos,
                      drafter=noisy)
    assert result.tokens == greedy_reference(target, prompt, max_new_tokens, eos)
    assert all(1 <= n <= tree.depth + 1 for n in result.accept_lengths)


def test_noisy_draft_accepts_every_length(target: nn.Module, noisy: DraftModelDrafter) -> None:
    prompt = [5, 9, 13, 2]
    full = greedy_reference(target, prompt, 40)
    chain = generate(target, None, Tree.chain(4), prompt, 40, drafter=noisy)
    assert chain.tokens == full
    assert set(chain.accept_lengths[1:-1]) == {1, 2, 3, 5}  # golden for this draft and prompt
    tree = generate(target, None, TREE, prompt, 40, drafter=noisy)
    assert tree.tokens == full
    # The tree's second-ranked guesses make it beat the chain of the same depth.
    assert tree.steps < generate(target, None, Tree.chain(3), prompt, 40, drafter=noisy).steps


def test_target_as_its_own_draft_accepts_whole_chains(target: nn.Module) -> None:
    prompt = [1, 2, 3]
    drafter = DraftModelDrafter(target)
    for gamma in (1, 3, 5):
        result = generate(target, None, Tree.chain(gamma), prompt, 25, drafter=drafter)
        assert result.tokens == greedy_reference(target, prompt, 25)
        # 24 tokens after the prefill's in full steps of gamma + 1, the last one cut.
        assert result.accept_lengths[1:-1] == [gamma + 1] * (len(result.accept_lengths) - 2)
        assert result.verification_steps == -(-24 // (gamma + 1))


def test_different_small_draft_and_root_only(target: nn.Module) -> None:
    prompt = [4, 8, 15, 16, 23, 42]
    full = greedy_reference(target, prompt, 20)
    drafter = DraftModelDrafter(small_draft())
    assert generate(target, None, TREE, prompt, 20, drafter=drafter).tokens == full
    plain = generate(target, None, Tree.chain(0), prompt, 20, drafter=drafter)
    assert plain.tokens == full and plain.accept_lengths == [1] * 20


def test_batch_rows_decode_as_if_alone(target: nn.Module, noisy: DraftModelDrafter) -> None:
    rows = [[5, 9, 13, 2], [1], [7, 7, 7, 7, 7, 7, 7], [30, 31]]
    eos = greedy_reference(target, rows[2], 30)[9]
    for tree in (Tree.chain(3), TREE):
        result = generate(target, None, tree, rows, 30, eos_token_id=eos, drafter=noisy)
        for row, tokens in zip(rows, result.tokens, strict=True):
            assert tokens == greedy_reference(target, row, 30, eos)
    single = generate(target, None, TREE, rows[0], 30, eos_token_id=eos, drafter=noisy)
    assert result.sequences[0].accept_lengths == single.accept_lengths


def test_step_with_draft_traces_without_graph_breaks(target: nn.Module,
                                                     noisy: DraftModelDrafter) -> None:
    decoder = TreeDecoder(target, None, TREE, 64, batch_size=2, drafter=noisy)
    with torch.inference_mode():
        decoder.prefill(torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(1)))
        explanation = torch._dynamo.explain(decoder._step)()
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_step_with_draft_is_lossless(target: nn.Module,
                                              noisy: DraftModelDrafter) -> None:
    # A small tree of two levels (two draft passes) keeps the compilation short.
    tree = Tree.from_paths([(0,), (1,), (0, 0)])
    prompt = [3, 17, 42, 8, 5]
    eager = generate(target, None, tree, prompt, 24, drafter=noisy)
    compiled = generate(target, None, tree, prompt, 24, compile_step=True, drafter=noisy)
    assert compiled.compiled
    assert compiled.tokens == eager.tokens == greedy_reference(target, prompt, 24)
    assert compiled.accept_lengths == eager.accept_lengths


def test_snapshot_restores_the_draft_state(target: nn.Module, noisy: DraftModelDrafter) -> None:
    decoder = TreeDecoder(target, None, TREE, 64, drafter=noisy)
    with torch.inference_mode():
        decoder.prefill(torch.tensor([[5, 9, 13, 2]]))
        saved = decoder.snapshot()
        decoder.step()
        first = decoder.emitted.clone(), decoder.accept_length.clone()
        decoder.restore(saved)
        decoder.step()
    assert torch.equal(decoder.emitted, first[0])
    assert torch.equal(decoder.accept_length, first[1])


def test_bad_drafts_are_one_line_errors(target: nn.Module) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    other_vocab = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=VOCAB + 1, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(TreeoptError, match=r"vocabulary \(65 tokens\) differs from the target's"):
        generate(target, None, TREE, [1, 2], 5, drafter=DraftModelDrafter(other_vocab))
    heads = MedusaHeads(MedusaConfig(3, 1, 32, VOCAB))
    with pytest.raises(TreeoptError, match="heads or a drafter, not both"):
        generate(target, heads, TREE, [1, 2], 5, drafter=DraftModelDrafter(target))
    with pytest.raises(TreeoptError, match="rank 64"):
        generate(target, None, Tree.from_paths([[64]]), [1, 2], 5,
                 drafter=DraftModelDrafter(target))


def test_chain_tree() -> None:
    assert Tree.chain(3).as_lists() == [[0], [0, 0], [0, 0, 0]]
    assert Tree.chain(0).num_tokens == 1 and Tree.chain(2).depth == 2
    with pytest.raises(TreeoptError, match="chain length -1"):
        Tree.chain(-1)


STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"


@pytest.mark.skipif(not STORIES.is_dir(), reason="needs ../shared/models/stories260K")
def test_generate_cli_with_draft_model() -> None:
    from typer.testing import CliRunner

    from treeopt.cli import app

    runner = CliRunner()
    common = ["generate", "--model", str(STORIES), "--prompt", "Once upon a time",
              "--max-new-tokens", "21"]
    plain = runner.invoke(app, common)
    assert plain.exit_code == 0, plain.output
    # The model as its own draft accepts every chain: 20 tokens after the prefill's in 5 steps.
    chain = runner.invoke(app, [*common, "--draft-model", str(STORIES), "--gamma", "3"])
    assert chain.exit_code == 0, chain.output
    assert chain.stdout == plain.stdout
    assert "21 tokens, 6 steps" in chain.stderr and "draft tree 4 tokens/step" in chain.stderr
    tree = runner.invoke(app, [*common, "--draft-model", str(STORIES), "--tree", "mc_sim_7b_63"])
    assert tree.exit_code == 0, tree.output
    assert tree.stdout == plain.stdout
    for extra, message in ((["--gamma", "2"], "--gamma needs --draft-model"),
                           (["--draft-model", str(STORIES), "--gamma", "2", "--tree",
                             "mc_sim_7b_63"], "give --gamma (a chain) or --tree, not both"),
                           (["--draft-model", str(STORIES), "--random-heads"],
                            "--draft-model drafts instead of Medusa heads")):
        refused = runner.invoke(app, [*common, *extra])
        assert refused.exit_code == 2 and f"error: {message}" in refused.stderr


def test_timing_a_draft_step(target: nn.Module, noisy: DraftModelDrafter) -> None:
    from medusa_runtime.timing import time_verification_step

    for tree in (Tree.chain(0), TREE):
        timed = time_verification_step(target, None, tree.num_tokens, context=16, warmup=0,
                                       repeats=2, tree=tree, drafter=noisy)
        assert timed["tree_paths"] == tree.as_lists() and len(timed["samples_s"]) == 2
    with pytest.raises(TreeoptError, match="tree of 8 tokens timed as 3"):
        time_verification_step(target, None, 3, context=16, tree=TREE, drafter=noisy)
