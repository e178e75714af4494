"""Draft-model profiles: rank vectors whose replay is exactly what the runtime decodes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_draft_runtime import noisy_copy
from tiny_lm import greedy_reference, tiny_model

from medusa_runtime.decode import generate
from medusa_runtime.drafter import DraftModelDrafter
from treeopt.core.tree import Tree
from treeopt.errors import TreeoptError
from treeopt.model.draft_profiling import profile_draft_model
from treeopt.model.profiling import ProfileSettings
from treeopt.optimize.build import build_tree
from treeopt.optimize.replay import accept_lengths, tokens_per_step

torch.set_num_threads(1)
PROMPTS = [[5, 9, 13, 2], [1, 2, 3], [40, 41, 7, 7, 12, 60], [33]]
NEW_TOKENS = 24


def test_replayed_draft_profile_equals_runtime_decoding(tmp_path: Path) -> None:
    target = tiny_model()
    draft = noisy_copy(target)
    settings = ProfileSettings(top_k=4, max_new_tokens=NEW_TOKENS, batch_size=3)
    profile = profile_draft_model(target, None, draft, PROMPTS, tmp_path / "draft.json",
                                  settings, model_id="tiny", draft_id="noisy", depth=5,
                                  progress=False)
    assert profile.num_heads == 5 and profile.provenance["drafter"] == "draft_model"
    assert profile.provenance["greedy_mismatches"] == 0
    assert (tmp_path / "draft.json.ranks.npz").is_file()
    drafter = DraftModelDrafter(draft)
    built = build_tree(profile, 8)
    for tree in (Tree.chain(1), Tree.chain(3), Tree.chain(5), built.tree):
        runs = [generate(target, None, tree, prompt, NEW_TOKENS + 1, drafter=drafter)
                for prompt in PROMPTS]
        for prompt, run in zip(PROMPTS, runs, strict=True):
            assert run.tokens == greedy_reference(target, prompt, NEW_TOKENS + 1)
        # The replay walks the profiled continuation (24 tokens after the prefill's) step by
        # step; decoding takes the same steps, only the last may accept past the text's end.
        lengths = accept_lengths(tree, profile.sequences)
        starts, ends = profile.sequences.bounds()
        for run, start, end in zip(runs, starts, ends, strict=True):
            replayed, position = [], int(start)
            while position < end:
                replayed.append(int(lengths[position]))
                position += replayed[-1]
            decoded = run.accept_lengths[1:]
            assert decoded[:-1] == replayed[:-1]
            assert decoded[-1] >= replayed[-1]
        assert tokens_per_step(tree, profile) <= sum(
            sum(run.accept_lengths[1:]) for run in runs) / sum(
            run.verification_steps for run in runs)

def test_draft_of_another_vocabulary_is_refused(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    other = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=70, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(TreeoptError, match=r"vocabulary \(70 tokens\) differs"):
        profile_draft_model(tiny_model(), None, other, PROMPTS, tmp_path / "x.json",
                            ProfileSettings(top_k=4, max_new_tokens=4), "tiny", "other")
    with pytest.raises(TreeoptError, match="--depth must be a positive integer"):
        profile_draft_model(tiny_model(), None, other, PROMPTS, tmp_path / "x.json",
                            ProfileSettings(top_k=4, max_new_tokens=4), "tiny", "other", depth=0)


STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"


@pytest.mark.skipif(not STORIES.is_dir(), reason="needs ../shared/models/stories260K")
def test_profile_cli_with_draft_model_feeds_build(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from treeopt.cli import app

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Once upon a time\nThe cat sat\n", encoding="utf-8")
    output = tmp_path / "self.json"
    runner = CliRunner()
    # The model as its own draft: every depth at rank 0, so build grows the full chain; it
    # accepts all 4 tokens a step but where the profiled text ends (30 tokens each).
    result = runner.invoke(app, ["profile", "-m", str(STORIES), "--draft-model", str(STORIES),
                                 "-d", str(prompts), "-o", str(output), "--max-new-tokens",
                                 "30", "--top-k", "3", "--depth", "3", "-q"])
    assert result.exit_code == 0, result.output
    assert "draft depth 3, top-3" in result.stderr
    built = runner.invoke(app, ["build", "-p", str(output), "--budget", "4"])
    assert built.exit_code == 0, built.output
    assert "3 nodes (4 tokens/step incl. root), depth 3, tokens per decoding step (replayed) " \
           "3.7500" in built.stderr
    refused = runner.invoke(app, ["profile", "-m", str(STORIES), "--draft-model", str(STORIES),
                                  "--heads", "x", "-d", str(prompts), "-o", str(output)])
    assert refused.exit_code == 2
    assert "error: --heads cannot be used with a draft model" in refused.stderr
