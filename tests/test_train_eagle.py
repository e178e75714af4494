"""EAGLE drafter training (train-heads --eagle-version): vocabulary, layout, resume, learning.

End-to-end runs use ../shared/models/stories260K with tiny settings (seconds each).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from treeopt.cli import app
from treeopt.model.profiling import Sequence_

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[2] / "shared"
STORIES = SHARED / "models" / "stories260K"
PROMPTS = Path(__file__).resolve().parent / "data" / "story_prompts.txt"
needs_stories = pytest.mark.skipif(not STORIES.is_dir(),
                                   reason="needs ../shared/models/stories260K")
EAGLE1_KEYS = {
    "fc.weight", "fc.bias", "layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight",
    "layers.0.self_attn.v_proj.weight", "layers.0.self_attn.o_proj.weight",
    "layers.0.mlp.gate_proj.weight", "layers.0.mlp.up_proj.weight",
    "layers.0.mlp.down_proj.weight", "layers.0.post_attention_layernorm.weight",
}
EAGLE3_KEYS = {
    "fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d",
    "midlayer.hidden_norm.weight", "midlayer.input_layernorm.weight",
    "midlayer.self_attn.q_proj.weight", "midlayer.self_attn.k_proj.weight",
    "midlayer.self_attn.v_proj.weight", "midlayer.self_attn.o_proj.weight",
    "midlayer.mlp.gate_proj.weight", "midlayer.mlp.up_proj.weight",
    "midlayer.mlp.down_proj.weight", "midlayer.post_attention_layernorm.weight",
}


def test_draft_vocabulary_is_the_most_frequent_tokens_with_eagle3_offsets() -> None:
    from treeopt.model.train_eagle import draft_vocabulary

    sequences = [Sequence_([0], [7, 7, 7, 3, 3, 9]), Sequence_([1], [9, 5])]
    d2t, t2d = draft_vocabulary(sequences, vocab_size=10, draft_size=3)
    # counts: 7 x3, 3 x2, 9 x2, 5 x1 -> {7, 3, 9}; sorted [3, 7, 9]; d2t[i] = used[i] - i
    assert d2t.tolist() == [3, 6, 7]
    assert t2d.nonzero().flatten().tolist() == [3, 7, 9]
    d2t, t2d = draft_vocabulary(sequences, vocab_size=10, draft_size=6)  # 4 seen + ids 0, 1
    assert (torch.arange(6) + d2t).tolist() == [0, 1, 3, 5, 7, 9]
    assert int(t2d.sum()) == 6


def test_eagle3_feature_layers_follow_eagle_and_vllm() -> None:
    from treeopt.model.train_eagle import aux_layer_ids

    assert aux_layer_ids(32) == [2, 16, 29]  # Llama-3.1-8B
    assert aux_layer_ids(5) == [2, 2, 2]  # stories260K


def test_near_chance_warning() -> None:
    from treeopt.model.train_eagle import near_chance_warning

    assert near_chance_warning({"top1": [0.3], "baseline_top1": 0.1}) is None
    warning = near_chance_warning({"top1": [0.05], "baseline_top1": 0.1})
    assert warning is not None and "learned nearly nothing" in warning


def _train(output: Path, version: int, epochs: int, resume: bool = False) -> dict:
    from treeopt.model.train_eagle import EagleSettings, train_eagle_from

    settings = EagleSettings(eagle_version=version, epochs=epochs, max_new_tokens=16,
                             batch_size=8, held_out_fraction=0.2, ttt_steps=2,
                             draft_vocab_size=200 if version == 3 else None)
    return train_eagle_from(str(STORIES), str(PROMPTS), output, settings, max_prompts=40,
                            chat_template=False, progress=False, resume=resume,
                            targets_cache=output.parent / "cache")


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@needs_stories
def test_eagle1_learns_writes_the_eagle_layout_and_resumes(tmp_path: Path, monkeypatch) -> None:
    import treeopt.model.train_eagle as train_eagle

    report = _train(tmp_path / "full", 1, epochs=4)
    weights = _weights(tmp_path / "full")
    assert set(weights) == EAGLE1_KEYS  # cnets1.py names; embed_tokens comes from the target
    assert weights["fc.weight"].shape == (64, 128)
    config = json.loads((tmp_path / "full" / "config.json").read_text())
    assert (config["eagle_version"], config["num_hidden_layers"], config["bias"]) == (1, 1, True)
    losses = report["epoch_losses"]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0]
    accuracy = report["held_out_accuracy"]
    assert accuracy["top1"][0] > accuracy["baseline_top1"] and report["warning"] is None

    # Interrupted after the first epoch's state is saved, then resumed: same weights.
    real_write = train_eagle.write_drafter

    def interrupt(*args):
        real_write(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_eagle, "write_drafter", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "cut", 1, epochs=4)
    monkeypatch.setattr(train_eagle, "write_drafter", real_write)
    state = json.loads((tmp_path / "cut" / "training_state.json").read_text())
    assert state["epoch"] == 1
    with pytest.raises(Exception, match="--resume"):
        _train(tmp_path / "cut", 1, epochs=4)
    resumed = _train(tmp_path / "cut", 1, epochs=4, resume=True)
    assert resumed["started_at_epoch"] == 1 and len(resumed["epoch_losses"]) == 3
    for name, value in _weights(tmp_path / "cut").items():
        torch.testing.assert_close(value, weights[name], rtol=1e-4, atol=1e-5)


@needs_stories
def test_eagle3_draft_vocabulary_ttt_and_layout(tmp_path: Path) -> None:
    report = _train(tmp_path / "e3", 3, epochs=3)
    weights = _weights(tmp_path / "e3")
    assert set(weights) == EAGLE3_KEYS  # cnets.py names
    assert weights["fc.weight"].shape == (64, 3 * 64)
    assert weights["midlayer.self_attn.q_proj.weight"].shape == (64, 2 * 64)
    assert weights["lm_head.weight"].shape == (200, 64)
    d2t, t2d = weights["d2t"], weights["t2d"]
    assert t2d.shape == (512,) and int(t2d.sum()) == 200
    assert (torch.arange(200) + d2t).tolist() == t2d.nonzero().flatten().tolist()
    config = json.loads((tmp_path / "e3" / "config.json").read_text())
    assert config["draft_vocab_size"] == 200
    assert config["eagle_aux_hidden_state_layer_ids"] == [2, 2, 2]
    assert report["epoch_losses"][-1] < report["epoch_losses"][0]
    top1 = report["held_out_accuracy"]["top1"]
    assert len(top1) == 2 and top1[0] > report["held_out_accuracy"]["baseline_top1"]


def test_cli_refuses_bad_eagle_options_in_one_line(tmp_path: Path) -> None:
    common = ["train-heads", "-m", str(STORIES), "-d", str(PROMPTS), "-o", str(tmp_path / "x")]
    for extra in (["--eagle-version", "2"], ["--eagle-version", "1", "--joint"],
                  ["--eagle-version", "3", "--num-heads", "3"]):
        result = CliRunner().invoke(app, [*common, *extra])
        assert result.exit_code == 2, result.output
        assert result.output.count("error:") == 1 and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


@needs_stories
@pytest.mark.parametrize("version", [1, 3])
def test_trained_drafter_decodes_the_exact_greedy_text(tmp_path: Path, version: int) -> None:
    pytest.importorskip("medusa_runtime.eagle")  # the runtime's EAGLE drafter (eagle branch)
    out = tmp_path / f"e{version}"
    _train(out, version, epochs=2)
    common = ["generate", "-m", str(STORIES), "--prompt", "Once upon a time, Sam found a boy.",
              "--max-new-tokens", "40"]
    plain = CliRunner().invoke(app, [*common, "--tree", "root"])
    assert plain.exit_code == 0, plain.output
    for tree in ("mc_sim_7b_63", "dynamic:3,4,8"):
        drafted = CliRunner().invoke(app, [*common, "--eagle", str(out), "--tree", tree])
        assert drafted.exit_code == 0, drafted.output
        assert drafted.stdout == plain.stdout
