"""Replay of decoding over recorded rank vectors, checked against a plain reference walk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from treeopt.core.profile import Profile
from treeopt.core.ranks import RankSequences
from treeopt.core.tree import Tree
from treeopt.errors import TreeoptError
from treeopt.files.profile_file import load_profile, write_profile
from treeopt.files.ranks_file import load_rank_sequences, ranks_path, save_rank_sequences
from treeopt.optimize.build import build_tree
from treeopt.optimize.replay import accept_lengths, nested_tokens_per_step, replay, tokens_per_step

TOP_K = 4


def reference_accept(tree: Tree, ranks: np.ndarray, top_k: int) -> int:
    """1 + the deepest tree path that is a prefix of ``ranks`` (misses end it)."""
    depth = 0
    while (depth < len(ranks) and 0 <= ranks[depth] < top_k
           and tuple(int(r) for r in ranks[: depth + 1]) in tree):
        depth += 1
    return 1 + depth


def reference_walk(tree: Tree, sequences: RankSequences) -> tuple[float, list[int]]:
    """Tokens per step and visited rows, one prompt and one step at a time."""
    emitted = steps = 0
    visited: list[int] = []
    offset = 0
    for group in dict.fromkeys(sequences.groups.tolist()):
        rows = sequences.ranks[sequences.groups == group]
        position = int(sequences.first_decode_index[group])
        while position < len(rows):
            gained = reference_accept(tree, rows[position], sequences.top_k)
            visited.append(offset + position)
            emitted, steps = emitted + gained, steps + 1
            position += gained
        offset += len(rows)
    return emitted / steps, visited


def random_sequences(rng: np.random.Generator, prompts: int = 5, heads: int = 3,
                     top_k: int = TOP_K) -> RankSequences:
    """Rank vectors with runs of easy text (all rank 0) between random ones; -1 = miss."""
    lengths = rng.integers(1, 40, size=prompts)
    ranks, groups = [], []
    for group, length in enumerate(lengths):
        easy = np.repeat(rng.random(length // 4 + 1) < 0.5, 4)[:length]
        block = rng.integers(-1, top_k + 1, size=(length, heads))  # top_k itself: a miss too
        block[easy] = 0
        ranks.append(block)
        groups.append(np.full(length, group))
    first = np.array([rng.integers(0, n) for n in lengths])
    return RankSequences(np.concatenate(ranks), np.concatenate(groups), first, top_k)


def random_tree(rng: np.random.Generator, heads: int, size: int) -> Tree:
    paths: set[tuple[int, ...]] = set()
    while len(paths) < size:
        parent = () if not paths or rng.random() < 0.3 else sorted(paths)[rng.integers(len(paths))]
        if len(parent) < heads:
            paths.add((*parent, int(rng.integers(0, TOP_K + 1))))
    return Tree.from_paths(sorted(paths))


@pytest.mark.parametrize("seed", range(20))
def test_vectorized_replay_equals_the_reference_walk(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sequences = random_sequences(rng)
    tree = random_tree(rng, sequences.num_heads, int(rng.integers(1, 12)))
    expected = [reference_accept(tree, row, TOP_K) for row in sequences.ranks]
    assert accept_lengths(tree, sequences).tolist() == expected
    rate, visited = reference_walk(tree, sequences)
    assert tokens_per_step(tree, sequences) == pytest.approx(rate, abs=1e-12)
    assert np.flatnonzero(replay(tree, sequences)[1]).tolist() == sorted(visited)


@pytest.mark.parametrize(("seed", "blocks"), [(0, False), (1, False), (2, True), (3, True)])
def test_nested_replay_scores_every_prefix_tree(seed: int, blocks: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    if blocks:  # tabulate a few trees at a time
        monkeypatch.setattr("treeopt.optimize.replay.NESTED_TABLE_ENTRIES", 150)
    rng = np.random.default_rng(100 + seed)
    sequences = random_sequences(rng)
    profile = Profile.from_rank_vectors(sequences.ranks, TOP_K, groups=sequences.groups)
    order = build_tree(profile, 20, "joint").order
    curve = nested_tokens_per_step(order, sequences)
    assert curve[0] == 1.0 and len(curve) == 20
    for size in range(1, 20):
        tree = Tree.from_paths(order[:size])
        assert curve[size] == pytest.approx(tokens_per_step(tree, sequences), abs=1e-12)


def test_hand_worked_walk() -> None:
    # One prompt; decoding starts at row 1. Row 1 accepts [0, 1] (3 tokens) -> row 4
    # accepts nothing (1 token) -> row 5 accepts [0] (2 tokens) -> past the end.
    ranks = np.array([[0, 0], [0, 1], [3, 3], [0, 0], [2, 0], [0, 3]])
    sequences = RankSequences(ranks, np.zeros(6, dtype=int), np.array([1]), TOP_K)
    tree = Tree.from_paths([[0], [0, 1]])
    assert accept_lengths(tree, sequences).tolist() == [2, 3, 1, 2, 1, 2]
    assert replay(tree, sequences)[1].tolist() == [False, True, False, False, True, True]
    assert tokens_per_step(tree, sequences) == pytest.approx(6 / 3)
    # The position average over the visited rows equals the replay; over all rows it is
    # higher (11/6): the walk skipped rows 2 and 3.
    assert accept_lengths(tree, sequences).mean() == pytest.approx(11 / 6)


def test_deeper_tree_than_heads_is_an_error() -> None:
    sequences = RankSequences(np.zeros((3, 2), dtype=int), np.zeros(3, dtype=int),
                              np.array([0]), TOP_K)
    with pytest.raises(TreeoptError, match="3 deep but the rank vectors have 2 heads"):
        tokens_per_step(Tree.from_paths([[0], [0, 0], [0, 0, 0]]), sequences)


def test_prompts_must_be_contiguous() -> None:
    with pytest.raises(TreeoptError, match="contiguous"):
        RankSequences(np.zeros((3, 1), dtype=int), np.array([0, 1, 0]), np.array([0, 0]), 2)


def test_rank_sequences_round_trip(tmp_path: Path) -> None:
    sequences = random_sequences(np.random.default_rng(0))
    save_rank_sequences(tmp_path / "r.npz", sequences)
    loaded = load_rank_sequences(tmp_path / "r.npz")
    assert loaded.ranks.dtype == np.int16 and loaded.top_k == TOP_K
    np.testing.assert_array_equal(loaded.ranks, sequences.ranks)
    np.testing.assert_array_equal(loaded.groups, sequences.groups)
    np.testing.assert_array_equal(loaded.first_decode_index, sequences.first_decode_index)
    with pytest.raises(TreeoptError, match="cannot read rank vectors"):
        load_rank_sequences(tmp_path / "missing.npz")


def measured_profile(sequences: RankSequences) -> Profile:
    return Profile.from_rank_vectors(sequences.ranks, sequences.top_k, groups=sequences.groups,
                                     first_decode_index=sequences.first_decode_index)


def test_profile_files_keep_their_rank_vectors(tmp_path: Path) -> None:
    sequences = random_sequences(np.random.default_rng(1))
    profile = measured_profile(sequences)
    write_profile(tmp_path / "p.json", profile)
    assert ranks_path(tmp_path / "p.json").is_file()
    loaded = load_profile(tmp_path / "p.json")
    assert loaded.sequences is not None
    np.testing.assert_array_equal(loaded.sequences.ranks, sequences.ranks)
    # A profile without rank vectors written over it removes the stale file.
    write_profile(tmp_path / "p.json", Profile.from_rank_vectors(sequences.ranks, TOP_K))
    assert not ranks_path(tmp_path / "p.json").exists()
    assert load_profile(tmp_path / "p.json").sequences is None


def test_stale_rank_vectors_are_a_one_line_error(tmp_path: Path) -> None:
    sequences = random_sequences(np.random.default_rng(2))
    write_profile(tmp_path / "p.json", measured_profile(sequences))
    other = random_sequences(np.random.default_rng(3))
    save_rank_sequences(ranks_path(tmp_path / "p.json"), other)
    with pytest.raises(TreeoptError, match=r"p\.json\.ranks\.npz: the rank vectors do not match"):
        load_profile(tmp_path / "p.json")


def test_split_keeps_each_parts_rank_vectors() -> None:
    sequences = random_sequences(np.random.default_rng(4), prompts=8)
    train, heldout = measured_profile(sequences).split(0.25, seed=0)
    for part in (train, heldout):
        assert part.sequences is not None
        assert len(part.sequences) == part.num_positions
        # The part's rank vectors summarize to the part's own counts.
        assert part.with_sequences(part.sequences) is not part
    kept = set(heldout.sequences.groups.tolist()) | set(train.sequences.groups.tolist())
    assert kept == set(range(8))
    assert not set(heldout.sequences.groups.tolist()) & set(train.sequences.groups.tolist())


def test_tokens_per_step_needs_rank_vectors() -> None:
    from treeopt.errors import TreeoptError
    from treeopt.files.profile_file import load_profile
    from treeopt.files.tree_file import load_tree

    with pytest.raises(TreeoptError, match="needs the rank vectors"):
        tokens_per_step(load_tree("mc_sim_7b_63"), load_profile("vicuna-7b"))
