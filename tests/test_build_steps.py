"""The builder weighted by decoding steps (profiles with their rank vectors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from treeopt.cli import app
from treeopt.core.profile import Profile
from treeopt.core.ranks import RankSequences
from treeopt.core.tree import Tree
from treeopt.errors import TreeoptError
from treeopt.files.profile_file import load_profile, write_profile
from treeopt.optimize.build import MAX_STEP_WEIGHTING_ROUNDS, build_tree, product_tree
from treeopt.optimize.replay import tokens_per_step

TOP_K = 6


def regime_profile(seed: int = 0, prompts: int = 40, length: int = 200,
                   heads: int = 4) -> Profile:
    """Runs of easy text (every head rank 0) between hard text (rank 1 half the time).

    Easy text holds half the positions but, its steps being long, far fewer of
    decoding's steps: the position average over-rates the all-zero chain.
    """
    rng = np.random.default_rng(seed)
    ranks, groups = [], []
    for group in range(prompts):
        easy = np.repeat(rng.random(length // 8 + 1) < 0.5, 8)[:length]
        block = np.where(rng.random((length, heads)) < 0.5, 1,
                         rng.integers(-1, TOP_K, (length, heads)))
        block[easy] = 0
        ranks.append(block)
        groups.append(np.full(length, group))
    return Profile.from_rank_vectors(np.concatenate(ranks), TOP_K,
                                     groups=np.concatenate(groups),
                                     first_decode_index=np.zeros(prompts, dtype=int))


@pytest.fixture(scope="module")
def profile() -> Profile:
    return regime_profile()


@pytest.mark.parametrize("budget", [3, 5, 8, 16, 32])
def test_steps_weighting_replays_at_least_as_well(profile: Profile, budget: int) -> None:
    assert profile.sequences is not None
    by_positions = build_tree(profile, budget, "joint", weighting="positions")
    by_steps = build_tree(profile, budget, "joint")  # the default with rank vectors
    assert (by_positions.weighting, by_steps.weighting) == ("positions", "steps")
    assert 1 <= by_steps.rounds <= MAX_STEP_WEIGHTING_ROUNDS
    # The builder's own number is the replayed tokens per step of its tree...
    replayed = tokens_per_step(by_steps.tree, profile.sequences)
    assert by_steps.expected_accept_length == pytest.approx(replayed, abs=1e-12)
    # ...which is never below the position-average tree's (round 1 is that tree).
    assert replayed >= tokens_per_step(by_positions.tree, profile.sequences)
    # ...and below the position average, which overstates it on this text.
    assert replayed < by_positions.expected_accept_length
    for size in (1, budget // 2, budget):
        assert by_steps.curve[size - 1] == pytest.approx(
            tokens_per_step(by_steps.tree_at(size), profile.sequences), abs=1e-12)


def test_steps_weighting_picks_the_hard_texts_branch(profile: Profile) -> None:
    # Budget 3: by positions, the easy chain [0] -> [0, 0]; by steps, [0] and [1],
    # since the hard text, where head 1's rank is 1 half the time, gets most steps.
    assert build_tree(profile, 3, "joint", weighting="positions").tree.paths == ((0,), (0, 0))
    by_steps = build_tree(profile, 3, "joint")
    assert by_steps.tree.paths == ((0,), (1,))
    assert by_steps.expected_accept_length == pytest.approx(1.815, abs=5e-4)


def test_oscillation_keeps_the_best_tree() -> None:
    # Period of 10 rows: 6 easy ([0, 0]) then 4 hard ([1, 0]). With tree {[0]} the
    # walk steps on 3 easy rows and 4 hard ones (10 tokens / 7 steps), so rebuilding
    # on those picks {[1]}, which replays worse (6 + 2 steps for 10 tokens) and
    # whose walk picks {[0]} again: a repeat ends the rounds, and {[0]} is kept.
    ranks = np.array(([[0, 0]] * 6 + [[1, 0]] * 4) * 10)
    profile = Profile.from_rank_vectors(ranks, 2, groups=np.zeros(100, dtype=int),
                                        first_decode_index=[0])
    result = build_tree(profile, 2, "joint")
    assert result.tree.paths == ((0,),)
    assert result.expected_accept_length == pytest.approx(100 / 70)
    assert result.rounds == 3
    assert tokens_per_step(Tree.from_paths([[1]]), profile.sequences) == pytest.approx(100 / 80)


def test_product_trees_are_replayed_one_by_one(profile: Profile) -> None:
    result = build_tree(profile, 16, "joint", engine="vllm")
    assert result.weighting == "steps" and result.branching is not None
    for size in (4, 9, 16):
        tree = product_tree(result.branching[size - 1], profile.num_heads)
        assert result.curve[size - 1] == pytest.approx(tokens_per_step(tree, profile.sequences))


def test_steps_weighting_needs_rank_vectors() -> None:
    shipped = load_profile("vicuna-7b")
    assert build_tree(shipped, 8).weighting == "positions"
    with pytest.raises(TreeoptError, match="needs the profile's rank vectors"):
        build_tree(shipped, 8, weighting="steps")
    with pytest.raises(TreeoptError, match="unknown weighting"):
        build_tree(shipped, 8, weighting="visits")


def test_split_parts_build_by_steps(profile: Profile) -> None:
    train, heldout = profile.split(0.25, seed=0)
    result = build_tree(train, 8, "blend")
    assert result.weighting == "steps"
    assert isinstance(heldout.sequences, RankSequences)
    # Scored on held-out prompts it still beats the position tree built on the same part.
    positions_tree = build_tree(train, 8, "blend", weighting="positions").tree
    assert (tokens_per_step(result.tree, heldout.sequences)
            >= tokens_per_step(positions_tree, heldout.sequences))


def test_cli_build_and_eval_by_steps(profile: Profile, tmp_path: Path) -> None:
    write_profile(tmp_path / "p.json", profile)
    runner = CliRunner()
    result = runner.invoke(app, ["build", "-p", str(tmp_path / "p.json"), "-b", "5", "-a",
                                 "joint", "-o", str(tmp_path / "t.json")])
    assert result.exit_code == 0, result.output
    assert "tokens per decoding step (replayed)" in result.output
    assert "weighted by steps" in result.output
    document = json.loads((tmp_path / "t.json").read_text())
    assert document["provenance"]["weighting"] == "steps"
    result = runner.invoke(app, ["build", "-p", str(tmp_path / "p.json"), "-b", "5", "-a",
                                 "joint", "--weighting", "positions"])
    assert result.exit_code == 0, result.output
    assert '"weighting": "positions"' in result.stdout
    result = runner.invoke(app, ["eval", str(tmp_path / "t.json"), "-p", str(tmp_path / "p.json"),
                                 "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    for row in rows:
        assert row["tokens_per_step_replayed"] == pytest.approx(
            document["expected_accept_length"], abs=1e-4)
    result = runner.invoke(app, ["eval", str(tmp_path / "t.json"), "-p", str(tmp_path / "p.json")])
    assert "replayed per step" in result.output
    # Shipped profiles have no rank vectors: asking for steps is a one-line error.
    result = runner.invoke(app, ["build", "-b", "8", "--weighting", "steps"])
    assert result.exit_code == 2
    assert result.output.startswith("error: weighting by decoding steps needs")
