"""The greedy builder: optimal against brute force, valid under constraints, golden trees."""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treeopt.core.profile import Profile
from treeopt.core.tree import Tree
from treeopt.errors import ParameterError, TreeoptError
from treeopt.files.engines import check_trtllm, export_text
from treeopt.files.profile_file import load_profile
from treeopt.files.tree_file import load_tree
from treeopt.optimize.acceptance_models import expected_accept_length, node_value
from treeopt.optimize.build import build_tree, product_tree

BRUTE_FORCE_MAX_NODES = 6


def all_subtrees(num_heads: int, top_k: int, max_nodes: int) -> dict[int, set[frozenset]]:
    """Every prefix-closed set of candidate paths, by size, up to ``max_nodes``."""
    by_size: dict[int, set[frozenset]] = {0: {frozenset()}}
    for size in range(1, max_nodes + 1):
        grown: set[frozenset] = set()
        for tree in by_size[size - 1]:
            frontier = [(rank,) for rank in range(top_k)] + [
                (*path, rank) for path in tree if len(path) < num_heads for rank in range(top_k)
            ]
            grown.update(tree | {path} for path in frontier if path not in tree)
        by_size[size] = grown
    return by_size


def random_profiles(seed: int, num_heads: int, top_k: int) -> list[tuple[Profile, str]]:
    """A marginal-only profile and a measured one with correlated heads."""
    rng = np.random.default_rng(seed)
    cumulative = np.sort(rng.uniform(0, 1, (num_heads, top_k)), axis=1)
    marginal_only = Profile.from_cumulative_accuracy(cumulative)
    first = rng.integers(-1, top_k + 1, 60)
    noise = rng.integers(-1, top_k + 1, (60, num_heads))
    ranks = np.where(rng.uniform(size=(60, num_heads)) < 0.5, first[:, None], noise)
    measured = Profile.from_rank_vectors(ranks, top_k, groups=np.arange(60) % 6)
    return [(marginal_only, "independent"), (measured, "independent"), (measured, "joint"),
            (measured, "blend")]


@pytest.mark.parametrize(("num_heads", "top_k", "seed"),
                         [(2, 2, 0), (2, 3, 1), (3, 2, 2), (3, 3, 3), (2, 3, 4)])
def test_greedy_is_optimal_against_brute_force(num_heads: int, top_k: int, seed: int) -> None:
    subtrees = all_subtrees(num_heads, top_k, BRUTE_FORCE_MAX_NODES)
    for profile, model in random_profiles(seed, num_heads, top_k):
        result = build_tree(profile, BRUTE_FORCE_MAX_NODES + 1, model)
        weight = result.blend_weight
        for size in range(1, BRUTE_FORCE_MAX_NODES + 1):
            best = max(
                expected_accept_length(Tree.from_paths(paths, num_heads), profile, model, weight)
                for paths in subtrees[size]
            )
            greedy = result.tree_at(size + 1)
            assert len(greedy) == size
            assert result.curve[size] == pytest.approx(best, abs=1e-12), (model, size)
            assert expected_accept_length(greedy, profile, model, weight) == pytest.approx(best)


def test_nested_trees_and_curve() -> None:
    profile = load_profile("vicuna-7b")
    result = build_tree(profile, 64)
    assert result.curve[0] == 1.0 and len(result.curve) == 64
    assert all(b >= a for a, b in zip(result.curve, result.curve[1:], strict=False))
    for n in (2, 10, 33, 64):
        tree = result.tree_at(n)
        assert set(result.tree_at(n - 1).paths) <= set(tree.paths)
        assert expected_accept_length(tree, profile) == pytest.approx(result.curve[n - 1])
    assert result.tree_at(1) == Tree.empty(5)
    assert result.tree.num_heads == 5 and result.tree.num_tokens == 64


def test_golden_vicuna_7b_budget_64() -> None:
    """The 63-node tree is the top 63 of all 3905 candidate values (5 heads x top-5)."""
    profile = load_profile("vicuna-7b")
    result = build_tree(profile, 64)
    values = sorted(
        (math.prod(profile.marginal[d][r] for d, r in enumerate(path))
         for depth in range(1, 6) for path in product(range(5), repeat=depth)),
        reverse=True,
    )
    assert result.expected_accept_length == pytest.approx(1 + sum(values[:63]), abs=1e-12)
    assert result.expected_accept_length == pytest.approx(2.384396586943, abs=1e-9)
    assert result.tree.width_per_depth() == [5, 22, 29, 7]
    assert result.tree.paths[:7] == ((0,), (1,), (2,), (3,), (4,), (0, 0), (0, 1))
    for name in ("mc_sim_7b_63", "vicuna_7b_stage1"):
        assert result.expected_accept_length > expected_accept_length(load_tree(name), profile)


def check_limits(tree: Tree, max_depth: int, caps: list[int], max_children: int) -> None:
    assert tree.depth <= max_depth
    for path in tree.paths:
        for depth, rank in enumerate(path):
            assert rank <= caps[min(depth, len(caps) - 1)]
    for path in ((), *tree.paths):
        assert len(tree.children(path)) <= max_children


def test_constraints_give_valid_trees() -> None:
    profile = load_profile("vicuna-7b")
    result = build_tree(profile, 25, max_depth=3, max_rank=[3, 2, 1], max_children=3)
    check_limits(result.tree, 3, [3, 2, 1], 3)
    assert len(result.tree) == 24
    assert expected_accept_length(result.tree, profile) == pytest.approx(result.curve[-1])
    unconstrained = build_tree(profile, 25)
    assert result.expected_accept_length <= unconstrained.expected_accept_length
    # Only 3 + 3*3 + 3*3*2 = 30 candidates: 30 nodes at most.
    with pytest.raises(TreeoptError, match="only 30 candidate nodes"):
        build_tree(profile, 32, max_depth=3, max_rank=[3, 2, 1], max_children=3)


def test_trtllm_engine() -> None:
    profile = load_profile("vicuna-7b")
    result = build_tree(profile, 64, engine="trtllm")
    check_trtllm(result.tree)
    with pytest.raises(TreeoptError, match="max_draft_len=63"):
        build_tree(profile, 65, engine="trtllm")


def test_vllm_engine_is_the_best_product_tree() -> None:
    profile = load_profile("vicuna-7b")
    result = build_tree(profile, 64, engine="vllm")
    export_text(result.tree, "vllm")  # refuses non-uniform levels
    best = 0.0
    for depth in range(1, 6):
        for branching in product(range(1, 6), repeat=depth):
            sizes = np.cumprod(branching)
            if sizes.sum() <= 63:
                value = expected_accept_length(product_tree(branching, 5), profile)
                best = max(best, value)
    assert result.expected_accept_length == pytest.approx(best, abs=1e-12)
    assert result.branching is not None and result.branching[-1] == (5, 5, 1)
    assert result.tree == product_tree((5, 5, 1), 5)
    assert result.tree_at(4) == product_tree((1, 2), 5)  # [0], [0,0], [0,1]
    measured = Profile.from_rank_vectors(np.array([[0, 0], [0, 1], [1, 0], [1, 1], [0, -1]]), 2)
    joint = build_tree(measured, 7, "joint", engine="vllm")
    assert joint.tree == product_tree((2, 2), 2)
    assert joint.expected_accept_length == pytest.approx(2.8)


def test_joint_models_need_joint_counts_and_budget_rules() -> None:
    profile = load_profile("vicuna-7b")
    with pytest.raises(TreeoptError, match="joint counts"):
        build_tree(profile, 10, "joint")
    with pytest.raises(TreeoptError, match="budget 1 is plain decoding"):
        build_tree(profile, 1)
    with pytest.raises(TreeoptError, match="unknown engine"):
        build_tree(profile, 10, engine="sglang")
    with pytest.raises(ParameterError, match=r"^max_rank must be a non-negative integer, not -1$"):
        build_tree(profile, 10, max_rank=[-1])


def test_node_value_monotone_along_paths() -> None:
    (profile, _), (measured, _), *_ = random_profiles(7, 3, 3)
    for source, model in ((profile, "independent"), (measured, "joint"), (measured, "blend")):
        for path in product(range(3), repeat=3):
            assert node_value(source, path, model, 5.0) <= node_value(source, path[:2], model, 5.0)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    num_heads=st.integers(1, 4),
    top_k=st.integers(1, 6),
    size=st.integers(1, 30),
)
def test_greedy_beats_random_trees(seed: int, num_heads: int, top_k: int, size: int) -> None:
    """No randomly grown tree of the same size scores above the greedy one."""
    rng = np.random.default_rng(seed)
    ranks = rng.integers(-1, top_k, (50, num_heads))
    profile = Profile.from_rank_vectors(ranks, top_k, groups=np.arange(50) % 5)
    capacity = sum(top_k**depth for depth in range(1, num_heads + 1))
    size = min(size, capacity)
    paths: set[tuple[int, ...]] = set()
    while len(paths) < size:
        frontier = [(r,) for r in range(top_k)] + [
            (*p, r) for p in paths if len(p) < num_heads for r in range(top_k)
        ]
        frontier = [p for p in frontier if p not in paths]
        paths.add(frontier[rng.integers(len(frontier))])
    tree = Tree.from_paths(paths, num_heads)
    for model in ("independent", "joint"):
        greedy = build_tree(profile, size + 1, model)
        assert greedy.expected_accept_length >= expected_accept_length(tree, profile, model) - 1e-12
