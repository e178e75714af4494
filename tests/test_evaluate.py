"""Expected accept length under each model of acceptance: hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from treeopt.core.profile import Profile
from treeopt.core.tree import Tree
from treeopt.errors import TreeoptError
from treeopt.files.profile_file import load_profile
from treeopt.files.tree_file import load_tree
from treeopt.optimize.acceptance_models import (
    blend_weight_grid,
    choose_blend_weight,
    expected_accept_length,
    heldout_log_likelihood,
    node_value,
    node_values,
)

# Eight positions, two heads, top-2 (-1 = miss). Head 1: rank 0 at 4, rank 1 at 2;
# head 2: rank 0 at 4, rank 1 at 2 (marginals 1/2, 1/4 for both heads).
RANKS = [[0, 0], [0, 1], [0, -1], [1, 0], [-1, 0], [0, 0], [1, 1], [-1, -1]]
GROUPS = [0, 0, 1, 1, 2, 2, 3, 3]
TREE = Tree.from_paths([[0], [1], [0, 0], [1, 1]], num_heads=2)


@pytest.fixture
def tiny() -> Profile:
    return Profile.from_rank_vectors(np.array(RANKS), top_k=2, groups=GROUPS)


def test_independent_by_hand() -> None:
    profile = Profile.from_cumulative_accuracy([[0.5, 0.75], [0.4, 0.5]])
    tree = Tree.from_paths([[0], [1], [0, 0], [0, 1]], num_heads=2)
    # 1 + 0.5 + 0.25 + 0.5 * 0.4 + 0.5 * 0.1
    assert expected_accept_length(tree, profile) == pytest.approx(2.0, abs=1e-12)
    assert node_value(profile, (0, 1)) == pytest.approx(0.05, abs=1e-12)


def test_tiny_profile_all_models(tiny: Profile) -> None:
    # independent: 1 + 1/2 + 1/4 + (1/2)(1/2) + (1/4)(1/4)
    assert expected_accept_length(TREE, tiny, "independent") == pytest.approx(2.0625)
    # joint: positions through [0]: 4, [1]: 2, [0,0]: 2, [1,1]: 1, out of 8
    assert expected_accept_length(TREE, tiny, "joint") == pytest.approx(1 + 9 / 8)
    # blend with w = 8: [0] (4+8/2)/16, [1] (2+8/4)/16, [0,0] 1/2 * (2+8/2)/(4+8),
    # [1,1] 1/4 * (1+8/4)/(2+8)
    assert expected_accept_length(TREE, tiny, "blend", blend_weight=8) == pytest.approx(2.075)
    # w = 0 is the joint model, w = inf the independent one.
    assert expected_accept_length(TREE, tiny, "blend", blend_weight=0) == pytest.approx(2.125)
    assert expected_accept_length(TREE, tiny, "blend", blend_weight=math.inf) == pytest.approx(
        2.0625
    )


def test_joint_matches_per_position_acceptance(tiny: Profile) -> None:
    """The joint model = mean over positions of the longest tree path matching the ranks."""
    accepted = []
    for ranks in RANKS:
        length = 0
        while length < len(ranks) and tuple(ranks[: length + 1]) in TREE:
            length += 1
        accepted.append(1 + length)
    assert expected_accept_length(TREE, tiny, "joint") == pytest.approx(np.mean(accepted))


def test_node_values_and_out_of_profile_ranks(tiny: Profile) -> None:
    tree = Tree.from_paths([[0], [5], [0, 3]], num_heads=2)
    values = node_values(tree, tiny, "joint")
    assert values == {(): 1.0, (0,): 0.5, (5,): 0.0, (0, 3): 0.0}
    assert node_value(tiny, (1, 1), "joint") == pytest.approx(1 / 8)


def test_root_only_tree_scores_one(tiny: Profile) -> None:
    assert expected_accept_length(Tree.empty(2), tiny, "joint") == 1.0


def test_errors(tiny: Profile) -> None:
    marginal_only = Profile.from_cumulative_accuracy([[0.5, 0.75]])
    with pytest.raises(TreeoptError, match="joint counts"):
        expected_accept_length(Tree.from_paths([[0]]), marginal_only, "joint")
    with pytest.raises(TreeoptError, match="unknown model"):
        expected_accept_length(TREE, tiny, "oracle")
    with pytest.raises(TreeoptError, match="3 deep but the profile has 2 heads"):
        expected_accept_length(Tree.from_paths([[0], [0, 0], [0, 0, 0]]), tiny)


def test_published_trees_under_vicuna_7b() -> None:
    """Regression + an independent computation: product of marginals, ranks >= 5 score 0."""
    profile = load_profile("vicuna-7b")
    for name, expected in (("mc_sim_7b_63", 2.339945989828), ("vicuna_7b_stage1", 2.343729310637)):
        tree = load_tree(name)
        by_hand = 1.0 + sum(
            math.prod(profile.marginal[d][r] if r < 5 else 0.0 for d, r in enumerate(path))
            for path in tree.paths
        )
        assert expected_accept_length(tree, profile) == pytest.approx(by_hand, abs=1e-12)
        assert by_hand == pytest.approx(expected, abs=1e-9)


def test_blend_weight_follows_the_data() -> None:
    """Dependent heads pick a small weight (trust joint); independent heads a large one."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), 100)
    first = rng.integers(0, 3, len(groups))
    dependent = np.stack([first, first], axis=1)  # head 2 always repeats head 1's rank
    independent = rng.integers(0, 3, (len(groups), 2))
    weight_dependent = choose_blend_weight(Profile.from_rank_vectors(dependent, 3, groups))
    weight_independent = choose_blend_weight(Profile.from_rank_vectors(independent, 3, groups))
    assert weight_dependent <= 1.0
    assert weight_independent >= 100.0


def test_heldout_likelihood_by_hand(tiny: Profile) -> None:
    """Train on groups 0-1, score group 2's two positions ([-1, 0] and [0, 0])."""
    train, heldout = tiny.subset([0, 1]), tiny.subset([2])
    # train: [0,0] [0,1] [0,-1] [1,0]; marginal head 1 = (3/4, 1/4), head 2 = (1/2, 1/4)
    weights = np.array([0.0, 4.0, math.inf])
    scores = heldout_log_likelihood(train, heldout, weights)
    # [-1, 0] stops at (): miss of head 1: (0 + w * 0) / (4 + w) -> prior 0: left out.
    # [0, 0]: P(r1=0) = (3 + w 3/4)/(4 + w), P(r2=0 | 0) = (1 + w/2)/(3 + w)
    expected = [
        math.log(3 / 4) + math.log(1 / 3),
        math.log(6 / 8) + math.log(3 / 7),
        math.log(3 / 4) + math.log(1 / 2),
    ]
    assert scores == pytest.approx(expected)


def test_weight_grid_spans_zero_to_infinity() -> None:
    grid = blend_weight_grid(10_000)
    assert grid[0] == 0 and math.isinf(grid[-1])
    assert grid[1] == pytest.approx(1.0) and grid[-2] == pytest.approx(10_000)
    assert np.all(np.diff(grid) > 0)
