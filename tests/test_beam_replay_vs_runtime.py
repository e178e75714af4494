"""Replay vs runtime: the expansion profile's dynamic:S,K,N tokens/step equal decoding's.

Issue 27 asks for replay vs runtime within 0.5 % on every setting. On stories260K
with a noisy copy of itself as the draft model, ``profile --expand`` records the
drafter's beam; :func:`beam_tokens_per_step` replays it; the runtime decodes the
same prompts greedily with ``--tree dynamic:S,K,N`` (and a static chain) and its
tokens kept per verification step must agree. (Both follow the shared spec, notes/beam.md;
in practice they agree exactly, the 0.5 % is the issue's bound.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_draft_runtime import noisy_copy

from medusa_runtime.beam import BeamTree
from medusa_runtime.decode import generate
from medusa_runtime.drafter import DraftModelDrafter
from treeopt.core.expansion import BeamSetting
from treeopt.core.tree import Tree
from treeopt.files.expansion_file import load_expansion
from treeopt.files.profile_file import load_profile
from treeopt.model.draft_profiling import profile_draft_model
from treeopt.model.profiling import ProfileSettings
from treeopt.optimize.beam_replay import beam_tokens_per_step
from treeopt.optimize.replay import tokens_per_step

torch.set_num_threads(1)
STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"
PROMPTS = [[1, 365, 208, 279], [1, 311, 246], [1, 450, 112, 471, 298], [1, 403, 250, 263, 93]]
NEW_TOKENS = 32
SETTINGS = [BeamSetting(1, 1, 2), BeamSetting(3, 1, 4), BeamSetting(2, 2, 4),
            BeamSetting(3, 2, 6), BeamSetting(2, 3, 6), BeamSetting(1, 3, 4),
            BeamSetting(3, 3, 10), BeamSetting(3, 3, 22)]
AGREEMENT = 0.005  # issue 27: replay vs runtime tokens/step within 0.5 %


@pytest.fixture(scope="module")
def stories_and_draft(tmp_path_factory: pytest.TempPathFactory):
    if not STORIES.is_dir():
        pytest.skip("needs ../shared/models/stories260K")
    from transformers import AutoModelForCausalLM

    target = AutoModelForCausalLM.from_pretrained(STORIES).eval()
    draft = noisy_copy(target, std=0.02)  # agrees on roughly half the tokens
    output = tmp_path_factory.mktemp("replay") / "draft.json"
    settings = ProfileSettings(top_k=4, max_new_tokens=NEW_TOKENS, batch_size=4)
    profile_draft_model(target, None, draft, PROMPTS, output, settings, model_id="stories",
                        draft_id="noisy", depth=3, progress=False, expand=(3, 3))
    profile = load_profile(output)
    return target, draft, profile, load_expansion(output, profile)


def _measured(target, draft, tree) -> tuple[float, list[list[int]]]:
    """Tokens kept per verification step over all prompts, and the tokens."""
    runs = [generate(target, None, tree, prompt, NEW_TOKENS + 1,
                     drafter=DraftModelDrafter(draft)) for prompt in PROMPTS]
    rate = sum(len(r.tokens) - 1 for r in runs) / sum(r.verification_steps for r in runs)
    return rate, [r.tokens for r in runs]


def test_replayed_beam_equals_runtime_decoding(stories_and_draft) -> None:
    target, draft, profile, expansion = stories_and_draft
    replayed = beam_tokens_per_step(expansion, profile.sequences, SETTINGS)
    _, plain = _measured(target, draft, Tree.chain(1))
    rates = []
    for setting in SETTINGS:
        tree = BeamTree(setting.steps, setting.topk, setting.num_tokens)
        measured, tokens = _measured(target, draft, tree)
        assert tokens == plain  # lossless: the same greedy text whatever the tree
        assert measured == pytest.approx(replayed[setting], rel=AGREEMENT), setting
        rates.append(measured)
    assert len(set(rates)) >= 5  # the settings really differ (the test can fail)
    assert max(rates) > 2.0 > min(rates)


def test_replayed_static_tree_equals_runtime_decoding(stories_and_draft) -> None:
    target, draft, profile, _ = stories_and_draft
    for tree in (Tree.chain(3), Tree.from_paths([(0,), (1,), (0, 0), (0, 1), (0, 0, 0)])):
        measured, _ = _measured(target, draft, tree)
        assert measured == pytest.approx(tokens_per_step(tree, profile), rel=AGREEMENT)


def test_a_dynamic_step_is_timed_with_its_drafter(stories_and_draft) -> None:
    from medusa_runtime.timing import time_verification_step

    target, draft, _, _ = stories_and_draft
    timed = time_verification_step(target, None, 6, batch=2, context=16, warmup=0, repeats=2,
                                   tree=BeamTree(3, 2, 6), drafter=DraftModelDrafter(draft))
    assert timed["tree_paths"] == "dynamic:3,2,6" and len(timed["samples_s"]) == 2
