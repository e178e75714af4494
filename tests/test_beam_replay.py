"""Engine-style dynamic trees dynamic:S,K,N: the beam, the expansion arrays and their replay."""

from __future__ import annotations

import numpy as np
import pytest

from treeopt.core.expansion import (
    BeamSetting,
    DraftExpansion,
    beam_tree,
    build_beam,
    expansion_from_children,
    parse_beam_setting,
)
from treeopt.core.ranks import RankSequences
from treeopt.errors import ParameterError, TreeoptError
from treeopt.optimize.beam_replay import all_beam_settings, beam_tokens_per_step

# One hand-made position: the root's children 0.6, 0.3; (0,)'s 0.5, 0.4; (1,)'s 0.9, 0.1.
HAND = {(): np.array([0.6, 0.3]), (0,): np.array([0.5, 0.4]), (1,): np.array([0.9, 0.1])}


def test_beam_order_breaks_ties_by_candidate_index() -> None:
    beam = build_beam(HAND, 2, 2)
    assert beam.paths == [(0,), (1,), (0, 0), (0, 1), (1, 0), (1, 1)]
    # float32(0.6) * 0.5 == float32(0.3): the tie goes to (1,), the lower index.
    assert beam.order() == [(0,), (1,), (0, 0), (1, 0), (0, 1), (1, 1)]
    assert beam.frontiers == [[(0,), (1,)], [(0, 0), (1, 0)]]
    assert beam.order(steps=1) == [(0,), (1,)]
    assert beam_tree(HAND, BeamSetting(2, 2, 4)).paths == ((0,), (1,), (0, 0))
    assert beam_tree(HAND, BeamSetting(2, 1, 3)).paths == ((0,), (0, 0))


def test_the_next_frontier_is_the_best_of_the_level_not_of_each_parent() -> None:
    children = {(): np.array([0.5, 0.4]), (0,): np.array([0.3, 0.2]),
                (1,): np.array([0.9, 0.05]), (1, 0): np.array([1.0, 0.0]),
                (0, 0): np.array([0.5, 0.5])}
    beam = build_beam(children, 2, 3)
    assert beam.frontiers[1] == [(1, 0), (0, 0)]  # 0.36 and 0.15 beat (0, 1)'s 0.10
    with pytest.raises(TreeoptError, match="no children recorded for node \\[0, 0\\]"):
        build_beam({k: v for k, v in children.items() if k != (0, 0)}, 2, 3)


def test_settings_parse_and_bounds() -> None:
    assert parse_beam_setting("dynamic:3,4,8") == BeamSetting(3, 4, 8)
    assert parse_beam_setting("dynamic:16") is None and parse_beam_setting("chain") is None
    assert BeamSetting.max_tokens(3, 4) == 37
    with pytest.raises(ParameterError, match=r"TOKENS must be in 2\.\.37"):
        BeamSetting(3, 4, 38)
    with pytest.raises(ParameterError, match="dynamic:STEPS,TOPK,TOKENS"):
        parse_beam_setting("dynamic:3,x,8")
    assert len(all_beam_settings(2, 2)) == 1 + 2 + 2 + 6  # N = 2..1 + K + (S - 1) K^2


def _sequences(truths: list[tuple[int, ...]], depth: int = 3) -> RankSequences:
    ranks = np.full((len(truths), depth), -1, dtype=np.int64)
    for row, truth in enumerate(truths):
        ranks[row, : len(truth)] = truth
    # One position per prompt: every prompt's walk is a single step there.
    return RankSequences(ranks, np.arange(len(truths)), np.zeros(len(truths), dtype=np.int64),
                         top_k=4)


def test_replay_of_hand_made_positions_gives_known_rates() -> None:
    other = {(): np.array([0.9, 0.05]), (0,): np.array([0.8, 0.1]), (1,): np.array([0.5, 0.5])}
    expansion = expansion_from_children([HAND, other], k_max=2, d_max=2)
    sequences = _sequences([(1, 0), (0, 0)])
    settings = [BeamSetting(2, 2, n) for n in (2, 3, 4, 5)] + [BeamSetting(2, 1, 3),
                                                               BeamSetting(1, 2, 3)]
    rates = beam_tokens_per_step(expansion, sequences, settings)
    # HAND (truth (1, 0)): order (0), (1), (0,0), (1,0): accepts 1, 2, 2, 3 tokens at N = 2..5.
    # other (truth (0, 0)): order (0), (0,0) 0.72, ...: accepts 2, 3, 3, 3.
    expected = {2: (1 + 2) / 2, 3: (2 + 3) / 2, 4: (2 + 3) / 2, 5: (3 + 3) / 2}
    for n, value in expected.items():
        assert rates[BeamSetting(2, 2, n)] == pytest.approx(value)
    assert rates[BeamSetting(2, 1, 3)] == pytest.approx((1 + 3) / 2)
    assert rates[BeamSetting(1, 2, 3)] == pytest.approx((2 + 2) / 2)
    with pytest.raises(ParameterError, match="--expand 2,2"):
        beam_tokens_per_step(expansion, sequences, [BeamSetting(3, 2, 4)])


def _random_expansion(rng: np.random.Generator, positions: int, k_max: int, d_max: int
                      ) -> list[dict]:
    rows = []
    for _ in range(positions):
        row: dict = {}

        def grow(path: tuple[int, ...], row: dict = row) -> None:
            probs = np.sort(rng.dirichlet(np.ones(8)))[::-1][:k_max]
            row[path] = probs.astype(np.float32)
            if len(path) < d_max - 1:
                for rank in range(k_max):
                    grow((*path, rank))
        grow(())
        rows.append(row)
    return rows


def _brute_force(rows: list[dict], sequences: RankSequences, setting: BeamSetting) -> float:
    """Build each visited position's tree and walk the prompts, one step at a time."""
    starts, ends = sequences.bounds()
    emitted = steps = 0
    for start, end in zip(starts, ends, strict=True):
        position = int(start)
        while position < end:
            tree = beam_tree(rows[position], setting)
            accepted = 0
            while accepted < setting.steps and tuple(
                    sequences.ranks[position, : accepted + 1]) in tree:
                accepted += 1
            emitted += 1 + accepted
            steps += 1
            position += 1 + accepted
    return emitted / steps


def test_replay_equals_a_brute_force_walk_for_every_setting() -> None:
    rng = np.random.default_rng(7)
    k_max, d_max, positions = 3, 3, 60
    rows = _random_expansion(rng, positions, k_max, d_max)
    # A full tree of the children keeps every beam; packing drops nothing it needs.
    expansion = expansion_from_children(rows, k_max, d_max)
    ranks = rng.integers(0, 3, size=(positions, d_max))
    ranks[rng.random((positions, d_max)) < 0.2] = -1
    sequences = RankSequences(ranks, np.repeat(np.arange(3), 20), np.array([0, 2, 5]), top_k=4)
    settings = all_beam_settings(d_max, k_max)
    rates = beam_tokens_per_step(expansion, sequences, settings)
    for setting in settings:
        assert rates[setting] == pytest.approx(_brute_force(rows, sequences, setting)), setting


def test_expansion_arrays_are_checked() -> None:
    expansion = expansion_from_children([HAND], 2, 2)
    assert len(expansion) == 1 and expansion.num_nodes == 3
    assert {k: list(v) for k, v in expansion.children(0).items()} == {
        k: list(v.astype(np.float32)) for k, v in HAND.items()}
    with pytest.raises(TreeoptError, match="most likely first"):
        DraftExpansion(2, 2, expansion.node_offsets, expansion.parent, expansion.rank,
                       expansion.child_probs[:, ::-1].copy())
    with pytest.raises(TreeoptError, match="follow their parent"):
        DraftExpansion(2, 2, expansion.node_offsets, np.array([-1, 0, 2]), expansion.rank,
                       expansion.child_probs)
    kept = expansion_from_children([HAND, HAND], 2, 2).rows(np.array([False, True]))
    assert len(kept) == 1 and kept.digest() == expansion.digest()
