"""profile --draft-model --expand: the recorded expansion is the drafter's own beam, replayable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_draft_runtime import noisy_copy
from tiny_lm import tiny_model

from treeopt.core.expansion import BeamSetting, beam_tree, build_beam
from treeopt.errors import TreeoptError
from treeopt.files.expansion_file import expansion_path, load_expansion
from treeopt.files.profile_file import load_profile
from treeopt.model.draft_profiling import profile_draft_model
from treeopt.model.profiling import ProfileSettings, _target_key
from treeopt.optimize.beam_replay import beam_tokens_per_step
from treeopt.optimize.evaluation import evaluate_trees
from treeopt.optimize.replay import tokens_per_step

torch.set_num_threads(1)
PROMPTS = [[5, 9, 13, 2], [1, 2, 3], [40, 41, 7, 7, 12, 60]]
NEW_TOKENS = 12


def _children_by_full_forward(draft: torch.nn.Module, context: list[int], k: int):
    """The spec's drafter, with no cache or mask: a node's children from one plain forward
    of the context and its branch's tokens."""
    def children(path: tuple[int, ...]) -> np.ndarray:
        tokens = list(context)
        for depth in range(len(path)):
            with torch.no_grad():
                logits = draft(torch.tensor([tokens])).logits[0, -1]
            tokens.append(int(logits.topk(k).indices[path[depth]]))
        with torch.no_grad():
            logits = draft(torch.tensor([tokens])).logits[0, -1]
        return torch.softmax(logits.float(), -1).topk(k).values.numpy()
    return children


@pytest.fixture(scope="module")
def expanded(tmp_path_factory: pytest.TempPathFactory):
    target = tiny_model()
    draft = noisy_copy(target, std=0.05)
    output = tmp_path_factory.mktemp("expand") / "draft.json"
    settings = ProfileSettings(top_k=4, max_new_tokens=NEW_TOKENS, batch_size=2)
    profile_draft_model(target, None, draft, PROMPTS, output, settings, model_id="tiny",
                        draft_id="noisy", depth=4, progress=False, expand=(3, 3))
    return target, draft, output


def test_expansion_is_the_drafters_own_beam(expanded) -> None:
    _target, draft, output = expanded
    profile = load_profile(output)
    expansion = load_expansion(output, profile)
    record = profile.provenance["expansion"]
    assert (record["k_max"], record["d_max"], record["positions"]) == (3, 3, len(expansion))
    assert len(expansion) == len(profile.sequences) == profile.num_positions
    # At most 1 + (d_max - 1) * k_max (k_max + 1) / 2 nodes a position.
    assert np.diff(expansion.node_offsets).max() <= 1 + 2 * 6
    # Position 0 of prompt 0 (root = the last prompt token's successor, x_{t+1}):
    continuations = json.loads(Path(f"{output}.targets.json").read_text())["continuations"]
    sequence = PROMPTS[0] + continuations[_target_key("tiny", NEW_TOKENS, None, PROMPTS[0])]
    for row, t in ((0, len(PROMPTS[0]) - 1), (3, len(PROMPTS[0]) + 2)):
        reference = _children_by_full_forward(draft, sequence[: t + 2], 3)
        recorded = expansion.children(row)
        for topk in (1, 2, 3):
            ours, theirs = build_beam(recorded, topk, 3), build_beam(reference, topk, 3)
            assert ours.paths == theirs.paths and ours.frontiers == theirs.frontiers
            np.testing.assert_allclose(ours.scores, theirs.scores, rtol=1e-5)
            assert beam_tree(recorded, BeamSetting(3, topk, 1 + topk + 2 * topk * topk)) == \
                beam_tree(reference, BeamSetting(3, topk, 1 + topk + 2 * topk * topk))


def test_eval_scores_engine_style_trees_from_the_expansion(expanded) -> None:
    _, _, output = expanded
    profile = load_profile(output)
    rows = evaluate_trees(["dynamic:3,1,4", "dynamic:2,3,6"], str(output),
                          models=["independent"])
    by_tree = {row["tree"]: row for row in rows}
    expansion = load_expansion(output, profile)
    assert by_tree["dynamic:2,3,6"]["tokens_per_step_replayed"] == pytest.approx(
        beam_tokens_per_step(expansion, profile.sequences, [BeamSetting(2, 3, 6)])[
            BeamSetting(2, 3, 6)])
    # K = 1 with N = S + 1 is the top-1 chain of S tokens: the static chain's replay.
    from treeopt.core.tree import Tree
    assert by_tree["dynamic:3,1,4"]["tokens_per_step_replayed"] == pytest.approx(
        tokens_per_step(Tree.chain(3), profile))
    with pytest.raises(TreeoptError, match="--expand 3,3"):
        evaluate_trees(["dynamic:4,2,5"], str(output), models=["independent"])


def test_a_stale_expansion_is_refused(expanded, tmp_path: Path) -> None:
    _, _, output = expanded
    profile = load_profile(output)
    stale = tmp_path / "copy.json"
    stale.write_text(Path(output).read_text())
    Path(f"{stale}.ranks.npz").write_bytes(Path(f"{output}.ranks.npz").read_bytes())
    with pytest.raises(TreeoptError, match="has no drafter expansion"):
        load_expansion(tmp_path / "none.json", profile.with_sequences(None))
    data = np.load(expansion_path(output))
    arrays = {name: data[name] for name in data.files}
    arrays["child_probs"] = arrays["child_probs"] * 0.5
    with open(expansion_path(stale), "wb") as handle:
        np.savez(handle, **arrays)
    with pytest.raises(TreeoptError, match="not the expansion"):
        load_expansion(stale, load_profile(stale))


def test_tune_writes_each_engines_config_and_the_table(expanded, tmp_path: Path) -> None:
    import yaml

    from treeopt.files.engines import check_knob_config
    from treeopt.workflows.engine_knobs import EngineKnobSettings, tune_engine_knobs

    _, _, output = expanded
    for engine, name in (("sglang", "s.yaml"), ("vllm-spec", "v.json"),
                         ("trtllm-pytorch", "t.yaml")):
        outcome = tune_engine_knobs(EngineKnobSettings(
            engine, str(output), "llama-68m", "llama-7b", "a100-80gb-sxm", (1, 4, 16),
            output=tmp_path / name, plot=tmp_path / f"{engine}.png", draft_model="./d"))
        assert [row["batch"] for row in outcome.table] == [1, 4, 16]
        for file_name, config in outcome.configs.items():
            text = (tmp_path / file_name).read_text()
            assert (json.loads(text) if name.endswith(".json") else yaml.safe_load(text)) \
                == config
            check_knob_config(engine, config)
        assert (tmp_path / f"{engine}.png").stat().st_size > 0
        table = json.loads((tmp_path / f"{name}.table.json").read_text())
        assert table["engine"] == engine and len(table["batches"]) == 3
        for choice in outcome.choices:  # the chosen point is the grid's best
            assert choice.best_point.tokens_per_second == max(
                p.tokens_per_second for p in choice.points)
