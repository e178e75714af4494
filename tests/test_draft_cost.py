"""Draft-model cost model and tuning: pass counts, roofline step cost, best gamma / tree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from treeopt.core.profile import Profile
from treeopt.core.tree import Tree
from treeopt.cost.arch import DRAFT_ARCH_NAMES, get_arch
from treeopt.cost.drafts import draft_pass_tokens, predict_draft_step
from treeopt.cost.gpus import get_gpu
from treeopt.errors import TreeoptError
from treeopt.optimize.draft_tune import chain_accept_length, tune_draft

ROOT = Path(__file__).resolve().parents[1]


def test_draft_passes_follow_the_runtime() -> None:
    assert draft_pass_tokens(Tree.chain(0)) == []
    assert draft_pass_tokens(Tree.chain(1)) == [3]
    assert draft_pass_tokens(Tree.chain(3)) == [5, 1, 1]
    # Depth 3: the first block of 5, then the depth-1 and depth-2 nodes with children.
    tree = Tree.from_paths([(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0)])
    assert draft_pass_tokens(tree) == [5, 2, 1]


def test_draft_shapes_and_step_cost() -> None:
    assert [get_arch(name).num_parameters() // 10**6 for name in DRAFT_ARCH_NAMES] == \
        [68, 162, 1100]
    target, draft, gpu = get_arch("llama-7b"), get_arch("llama-68m"), get_gpu("a100-80gb-sxm")
    plain = predict_draft_step(target, draft, Tree.chain(0), gpu)
    assert plain.draft_s == 0 and plain.step_s == plain.plain_s and plain.overhead == 1.0
    costs = [predict_draft_step(target, draft, Tree.chain(g), gpu).step_s for g in range(6)]
    assert costs == sorted(costs) and len(set(costs)) == 6
    # The draft's pass is a sliver of the target's step on the roofline; a fixed cost per
    # pass adds exactly gamma times itself.
    one = predict_draft_step(target, draft, Tree.chain(1), gpu)
    assert one.draft_s < 0.01 * one.plain_s
    slow = predict_draft_step(target, draft, Tree.chain(3), gpu, pass_overhead_s=1e-3)
    fast = predict_draft_step(target, draft, Tree.chain(3), gpu)
    assert slow.draft_s - fast.draft_s == pytest.approx(3e-3)


def test_chain_accept_length() -> None:
    assert chain_accept_length(0.5, 2) == 1.75
    assert chain_accept_length(1.0, 4) == 5.0 and chain_accept_length(0.0, 4) == 1.0
    with pytest.raises(TreeoptError, match="acceptance rate"):
        chain_accept_length(1.5, 2)


def test_tune_draft_picks_gamma_and_tree() -> None:
    # Every depth rank 0 with probability 0.8 (else rank 1), positions independent.
    rng = np.random.default_rng(0)
    ranks = (rng.random((4000, 6)) > 0.8).astype(np.int64)
    profile = Profile.from_rank_vectors(ranks, top_k=4)
    # A step: 1 (verification) + 0.15 a draft pass + 0.01 a verified token.
    def step(tree: Tree) -> float:
        return 1.0 + 0.15 * tree.depth + 0.01 * tree.num_tokens

    result = tune_draft(profile, step, plain_seconds=1.01, max_budget=12)
    speedups = [round(point.speedup, 3) for point in result.chains]
    assert speedups[0] == 1.0
    assert result.best_chain.draft_passes == max(range(7), key=lambda g: speedups[g])
    # Analytically (1 - 0.8^(g+1)) / 0.2 * 1.01 / (1.01 + 0.16 g) peaks at g = 5 (2.06x).
    assert result.best_chain.draft_passes == 5
    assert result.best_tree.num_tokens >= 2 and result.best.speedup >= result.best_chain.speedup
    with pytest.raises(TreeoptError, match=r"--max-gamma must be in 0\.\.6"):
        tune_draft(profile, step, 1.01, max_gamma=7)


def test_gamma_table_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "table.json"
    script = ROOT / "benchmarks" / "draft_gamma_table.py"
    assert "usage" in subprocess.run([sys.executable, str(script), "--help"], check=True,
                                     capture_output=True, text=True).stdout
    subprocess.run([sys.executable, str(script), "-o", str(out)], check=True,
                   capture_output=True, text=True)
    rows = json.loads(out.read_text())["rows"]
    paper = [row for row in rows if row["paper_gamma"] and row["kernel_overhead_us"] == 10.0
             and row["alpha"] == 0.5]
    assert {(r["target"], r["predicted_best_gamma"]) for r in paper} == {
        ("llama-7b", 4), ("llama-13b", 5), ("llama-33b", 3)}
