"""``treeopt tune --draft-arch``: a draft profile -> the best gamma or draft tree, written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from treeopt.cli import app
from treeopt.core.profile import Profile
from treeopt.core.tree import Tree
from treeopt.cost.arch import get_arch
from treeopt.cost.drafts import predict_draft_step
from treeopt.cost.gpus import get_gpu
from treeopt.cost.roofline import DeviceProfile
from treeopt.files.profile_file import load_profile, write_profile
from treeopt.files.tree_file import load_tree_document
from treeopt.optimize.replay import tokens_per_step

STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"
GPU = "a100-80gb-sxm"
runner = CliRunner()


def draft_profile(path: Path, drafter: str | None = "draft_model") -> Path:
    """Every depth at rank 0 with probability 0.5, else rank 1; 8 depths, positions
    independent; 10 texts of 300 positions, with rank vectors (replayed, as measured)."""
    rng = np.random.default_rng(0)
    ranks = (rng.random((3000, 8)) > 0.5).astype(np.int64)
    provenance = {"drafter": drafter, "draft_model": "synthetic"} if drafter else {}
    write_profile(path, Profile.from_rank_vectors(
        ranks, top_k=4, groups=np.repeat(np.arange(10), 300),
        first_decode_index=np.zeros(10, dtype=np.int64), provenance=provenance))
    return path


def tune(*extra: str) -> object:
    return runner.invoke(app, ["tune", "--draft-arch", "llama-68m", "--arch", "llama-7b",
                               "--gpu", GPU, *extra])


def test_chains_only_picks_the_papers_gamma(tmp_path: Path) -> None:
    profile, output = draft_profile(tmp_path / "draft.json"), tmp_path / "chain.json"
    # alpha 0.5 and 10 us per operator: the gamma table's (and the paper's) gamma 4 for 7B.
    result = tune("-p", str(profile), "--max-budget", "1", "--kernel-overhead-us", "10",
                  "-o", str(output))
    assert result.exit_code == 0, result.output
    assert "best: chain gamma = 4, predicted 1.926 tokens/step, step 9.801 ms, predicted " \
           "speedup 1.768x" in " ".join(result.stdout.split())
    assert "gamma 8" in result.stdout and "best tree" not in result.stdout
    assert "all predicted" in result.stdout and "warning" not in result.stderr
    document = load_tree_document(output)
    assert document.tree == Tree.chain(4)
    facts = document.provenance
    assert (facts["kind"], facts["gamma"], facts["draft_passes"], facts["budget"]) == \
        ("chain", 4, 4, 5)
    assert (facts["draft_arch"], facts["target_arch"], facts["gpu"], facts["batch"],
            facts["context"]) == ("llama-68m", "llama-7b", GPU, 1, 1024)
    assert facts["cost"] == f"predicted: {GPU} datasheet roofline + 10 us/operator"
    assert facts["drafter"] == "draft_model"
    # The figures are the replay's and the roofline's, recomputed here.
    loaded = load_profile(profile)
    assert facts["predicted_tokens_per_step"] == round(tokens_per_step(Tree.chain(4), loaded), 4)
    gpu = get_gpu(GPU)
    device = DeviceProfile("x", gpu.peak_tflops, gpu.bandwidth_gbs, 10.0)
    step = predict_draft_step(get_arch("llama-7b"), get_arch("llama-68m"), Tree.chain(4), gpu,
                              device_profile=device)
    assert facts["predicted_step_ms"] == round(step.step_s * 1e3, 4) == 9.8006
    assert facts["predicted_speedup"] == 1.7681


def test_a_branching_tree_wins_with_room(tmp_path: Path) -> None:
    profile, output = draft_profile(tmp_path / "draft.json"), tmp_path / "tree.json"
    result = tune("-p", str(profile), "--batch", "1", "--context", "1024", "-o", str(output))
    assert result.exit_code == 0, result.output
    assert "best: tree of 16 tokens, depth 4" in " ".join(result.stdout.split())
    document = load_tree_document(output)
    assert document.tree.num_tokens == 16 and document.tree.depth == 4
    assert document.tree != Tree.chain(4)
    facts = document.provenance
    assert facts["kind"] == "tree" and "gamma" not in facts
    assert (facts["predicted_speedup"], facts["predicted_step_ms"]) == (3.9249, 7.001)
    assert facts["cost"] == f"predicted: {GPU} datasheet roofline"
    assert f"use: treeopt generate --draft-model D --tree {output}" in result.stderr


def test_heads_profile_is_warned_about(tmp_path: Path) -> None:
    profile = draft_profile(tmp_path / "heads.json", drafter=None)
    result = tune("-p", str(profile), "--max-budget", "1")
    assert result.exit_code == 0, result.output
    assert "was not made by `treeopt profile --draft-model`" in result.stderr


@pytest.mark.parametrize(("extra", "message"), [
    (["--latency", "lat.json"], "--latency does not apply when tuning a draft model"),
    (["--measure"], "tune --measure is now its own verb: treeopt study"),
    (["--engine", "vllm-medusa"], "--engine does not apply when tuning a draft model"),
    (["--max-gamma", "9"], r"--max-gamma must be in 0..8 (the profile's depth), not 9"),
    (["--max-budget", "-1"], "--max-budget must be >= 0"),
    (["--batch", "0"], "--batch must be positive, not 0"),
    (["--draft-arch", "llama-99m"], "unknown arch 'llama-99m'"),
    (["--gpu", "gtx-480"], "unknown GPU 'gtx-480'"),
])
def test_bad_draft_settings_are_one_line_errors(tmp_path: Path, extra: list[str],
                                                message: str) -> None:
    profile = draft_profile(tmp_path / "draft.json")
    result = tune("-p", str(profile), *extra, "-o", str(tmp_path / "t.json"))
    assert result.exit_code == 2 and f"error: {message}" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "t.json").exists()


def test_draft_options_need_each_other(tmp_path: Path) -> None:
    profile = str(draft_profile(tmp_path / "draft.json"))
    for args, message in (
            (["--draft-arch", "llama-68m", "--arch", "llama-7b", "--gpu", GPU],
             "--profile is needed: the draft model's profile"),
            (["-p", profile, "--draft-arch", "llama-68m", "--arch", "llama-7b"],
             "--gpu is needed to tune a draft model"),
            (["-p", profile, "--arch", "llama-7b", "--max-gamma", "2"],
             "--arch does not apply when tuning Medusa trees by a latency table")):
        result = runner.invoke(app, ["tune", *args])
        assert result.exit_code == 2 and f"error: {message}" in result.stderr, result.output


@pytest.mark.skipif(not STORIES.is_dir(), reason="needs ../shared/models/stories260K")
def test_profile_tune_generate_end_to_end(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Once upon a time\nThe cat sat\n", encoding="utf-8")
    profile, tree = tmp_path / "self.json", tmp_path / "tree.json"
    # The model as its own draft: every depth at rank 0.
    profiled = runner.invoke(app, ["profile", "-m", str(STORIES), "--draft-model", str(STORIES),
                                   "-d", str(prompts), "-o", str(profile), "--max-new-tokens",
                                   "30", "--top-k", "3", "--depth", "3", "-q"])
    assert profiled.exit_code == 0, profiled.output
    tune_args = ["tune", "-p", str(profile), "--draft-arch", str(STORIES), "--gpu", GPU,
                 "--context", "128", "-o", str(tree)]
    # A draft of the target's own size costs a target step per pass: nothing pays.
    alike = runner.invoke(app, [*tune_args, "--arch", str(STORIES)])
    assert alike.exit_code == 2 and "no draft chain or tree beats plain decoding" in \
        alike.stderr and not tree.exists()
    # Its acceptance priced as a 260K-parameter draft for a 7B target: the full chain wins.
    tuned = runner.invoke(app, [*tune_args, "--arch", "llama-7b"])
    assert tuned.exit_code == 0, tuned.output
    document = load_tree_document(tree)
    assert document.tree == Tree.chain(3) and document.provenance["gamma"] == 3
    assert json.loads(tree.read_text())["provenance"]["draft_model"] == str(STORIES)
    common = ["generate", "--model", str(STORIES), "--prompt", "Once upon a time",
              "--max-new-tokens", "21"]
    plain = runner.invoke(app, common)
    drafted = runner.invoke(app, [*common, "--draft-model", str(STORIES), "--tree", str(tree)])
    assert drafted.exit_code == 0, drafted.output
    assert drafted.stdout == plain.stdout
    assert "21 tokens, 6 steps" in drafted.stderr
