"""Profiling on ``ShiftLM``, whose greedy text and head ranks are known exactly.

Heads 1, 2, 3 rank the true token 2, 3, 4 (see ``shift_lm``): 4 is a miss at top_k 4.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from shift_lm import CONTEXT, NUM_HEADS, ShiftLM, shift_heads

from treeopt.core.ranks import RankSequences
from treeopt.core.tree import Tree
from treeopt.errors import TreeoptError
from treeopt.files.profile_file import load_profile
from treeopt.files.ranks_file import load_rank_sequences, ranks_path
from treeopt.model.profiling import (
    ProfileSettings,
    Sequence_,
    decode_positions,
    future_targets,
    greedy_continuations,
    measure_ranks,
    new_token_limit,
    partial_path,
    profile_model,
    ranks_in_top_k,
    targets_path,
)
from treeopt.optimize.replay import tokens_per_step

torch.set_num_threads(1)
SHARED = Path(__file__).resolve().parents[2] / "shared"
STORIES = SHARED / "models" / "stories260K"
TOP_K = 4
EOS = 6
TOKENIZER = SimpleNamespace(eos_token_id=EOS, pad_token_id=None)
SETTINGS = ProfileSettings(top_k=TOP_K, max_new_tokens=5, batch_size=2)
# prompt [1, 3] -> 5 7 1 3 5 (5 new tokens); prompt [0] -> 2 4 6 (stops at EOS 6)
EXPECTED = {
    (1, 3): [[2, 3, -1], [2, 3, -1], [2, 3, -1], [2, -1, -1], [-1, -1, -1]],
    (0,): [[2, 3, -1], [2, -1, -1], [-1, -1, -1]],
}


def test_positions_and_future_targets() -> None:
    assert list(decode_positions(3, 6, include_prompt=False)) == [2, 3, 4]
    assert list(decode_positions(3, 6, include_prompt=True)) == [0, 1, 2, 3, 4]
    ids = [10, 11, 12, 13, 14]
    np.testing.assert_array_equal(
        future_targets(ids, range(1, 4), 2), [[13, 14], [14, -1], [-1, -1]]
    )


def test_ranks_in_top_k() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.4, 0.3, 0.2, 0.1]])
    ranks = ranks_in_top_k(logits, torch.tensor([2, 3]), top_k=3)
    assert ranks.tolist() == [1, -1]
    assert ranks_in_top_k(logits, torch.tensor([1, -1]), top_k=3).tolist() == [0, -1]


def test_new_token_limit_clips_to_context() -> None:
    model = ShiftLM()
    assert new_token_limit(model, 10, 5) == 5
    assert new_token_limit(model, CONTEXT - 2, 5) == 2
    assert new_token_limit(model, CONTEXT, 5) == 0


def test_profile_model_exact_ranks_targets_and_files(tmp_path: Path) -> None:
    model = ShiftLM()
    output = tmp_path / "p.json"
    prompts = [[1, 3], [0]]
    profile = profile_model(model, TOKENIZER, shift_heads(), prompts, output, SETTINGS,
                            model_id="shift", heads_id="shift-heads", progress=False)
    saved = load_rank_sequences(ranks_path(output))
    ranks, groups = saved.ranks, saved.groups
    np.testing.assert_array_equal(ranks[groups == 0], EXPECTED[(1, 3)])
    np.testing.assert_array_equal(ranks[groups == 1], EXPECTED[(0,)])
    assert saved.first_decode_index.tolist() == [0, 0] and saved.top_k == TOP_K
    # Head probabilities beside the ranks: ShiftLM's heads score rank r as -r, so every
    # position's top-k probabilities are softmax(0, -1, ..., -(V-1))[:top_k].
    expected_probs = np.exp(-np.arange(8.0))[:TOP_K] / np.exp(-np.arange(8.0)).sum()
    assert saved.probs is not None and saved.probs.shape == (8, NUM_HEADS, TOP_K)
    np.testing.assert_allclose(saved.probs, np.broadcast_to(expected_probs, saved.probs.shape),
                               rtol=2e-3)
    # load_profile attaches the same rank vectors
    loaded = load_profile(output)
    assert loaded.sequences is not None
    np.testing.assert_array_equal(loaded.sequences.ranks, ranks)
    assert profile.num_positions == 8 and profile.num_heads == NUM_HEADS
    assert profile.top_k == TOP_K
    assert profile.provenance["greedy_mismatches"] == 0
    # P(r_1 = 2) = 6/8, P(r_2 = 3) = 4/8
    assert profile.marginal[0].tolist() == [0, 0, 0.75, 0]
    assert profile.marginal[1].tolist() == [0, 0, 0, 0.5]
    cached = json.loads(targets_path(output).read_text())["continuations"]
    assert sorted(cached.values()) == [[2, 4, 6], [5, 7, 1, 3, 5]]
    assert not partial_path(output).exists()
    # The targets are generated once: a second profile reuses the cache.
    calls = model.generate_calls
    profile_model(model, TOKENIZER, shift_heads(), prompts, tmp_path / "p.json", SETTINGS,
                  model_id="shift", heads_id="shift-heads", progress=False)
    assert model.generate_calls == calls


def test_include_prompt_measures_prompt_positions(tmp_path: Path) -> None:
    settings = ProfileSettings(top_k=TOP_K, max_new_tokens=1, include_prompt=True)
    profile_model(ShiftLM(), TOKENIZER, shift_heads(), [[1, 3, 5]], tmp_path / "p.json",
                  settings, model_id="shift", heads_id="h", progress=False)
    saved = load_rank_sequences(ranks_path(tmp_path / "p.json"))
    # sequence 1 3 5 7: positions 0, 1, 2; decoding starts at the last prompt token
    np.testing.assert_array_equal(saved.ranks, [[2, 3, -1], [2, -1, -1], [-1, -1, -1]])
    assert saved.first_decode_index.tolist() == [2]


def test_interrupted_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    model, heads = ShiftLM(), shift_heads()
    sequences = [Sequence_([1, 3], [5, 7, 1, 3, 5]), Sequence_([0], [2, 4, 6]),
                 Sequence_([5], [7, 1])]
    settings = ProfileSettings(top_k=TOP_K, batch_size=1)
    checkpoint = tmp_path / "x.partial.npz"
    full = measure_ranks(model, heads, sequences, settings, None, "fp", progress=False)

    def interrupt(results: object) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        measure_ranks(model, heads, sequences, settings, checkpoint, "fp", progress=False,
                      on_batch=interrupt)
    assert checkpoint.exists()
    with pytest.raises(TreeoptError, match="pass --resume"):
        measure_ranks(model, heads, sequences, settings, checkpoint, "fp", progress=False)
    with pytest.raises(TreeoptError, match="other settings"):
        measure_ranks(model, heads, sequences, settings, checkpoint, "other", resume=True,
                      progress=False)
    resumed = measure_ranks(model, heads, sequences, settings, checkpoint, "fp", resume=True,
                            progress=False)
    for got, want in zip(resumed.stacked(NUM_HEADS), full.stacked(NUM_HEADS), strict=True):
        np.testing.assert_array_equal(got, want)
    assert resumed.done == 3


def test_replay_walks_the_positions_decoding_visits() -> None:
    ranks = np.array(EXPECTED[(1, 3)] + EXPECTED[(0,)])
    groups = np.array([0] * 5 + [1] * 3)
    sequences = RankSequences(ranks, groups, np.array([0, 0]), TOP_K)
    tree = Tree.from_paths([[2], [2, 3]])
    # prompt 0: position 0 gains 3 -> position 3 gains 2 -> end (5 tokens, 2 steps);
    # prompt 1: position 0 gains 3 -> end (3 tokens, 1 step)
    assert tokens_per_step(tree, sequences) == pytest.approx(8 / 3)
    assert tokens_per_step(Tree.from_paths([[0]]), sequences) == 1.0


def test_empty_everything_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TreeoptError, match="fills the model's context"):
        profile_model(ShiftLM(), TOKENIZER, shift_heads(), [[1] * CONTEXT], tmp_path / "p.json",
                      SETTINGS, model_id="s", heads_id="h", progress=False)


@pytest.mark.skipif(not STORIES.is_dir(), reason="needs ../shared/models/stories260K")
def test_batched_greedy_targets_equal_unbatched_generate() -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(STORIES)).eval()
    prompts = [[1, 403, 407, 261, 378], [1, 300], [1, 403, 407, 261, 378, 300, 301, 302]]
    got = greedy_continuations(model, prompts, 24, 2, None, "stories", batch_size=3,
                               progress=False)
    for prompt, tokens in zip(prompts, got, strict=True):
        reference = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False,
                                   eos_token_id=2, pad_token_id=0)[0, len(prompt):].tolist()
        if 2 in reference:
            reference = reference[: reference.index(2) + 1]
        assert tokens == reference
