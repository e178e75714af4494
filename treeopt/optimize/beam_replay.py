"""Engine-style dynamic trees ``dynamic:S,K,N`` replayed over a drafter's recorded expansion.

At each calibration position the tree ``dynamic:S,K,N`` verifies is the first
``N - 1`` candidates of the beam of width ``K`` over ``S`` levels, best first
(:mod:`treeopt.core.expansion`), built from the drafter's recorded child
probabilities. Greedy verification accepts the longest prefix of the target's
greedy continuation (the position's rank vector) that lies in it, exactly as for
a static tree; so the walk of :mod:`treeopt.optimize.replay` gives the tokens per
step the runtime measures with ``--tree dynamic:S,K,N`` on the profiled prompts.

One beam per position and ``K`` serves every ``S`` (the frontier of a level does
not depend on ``S``; the candidates of ``S`` levels keep their relative order) and
every ``N`` (the trees are nested: :func:`nested_tokens_per_step_of_chain`). Pure
numpy; no torch.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from treeopt.core.expansion import BeamSetting, DraftExpansion, build_beam
from treeopt.core.ranks import RankSequences
from treeopt.errors import ParameterError, TreeoptError
from treeopt.optimize.replay import UNMATCHED, nested_tokens_per_step_of_chain


def _check(expansion: DraftExpansion, sequences: RankSequences, steps: int, topk: int,
           name: str) -> None:
    if len(expansion) != len(sequences):
        raise TreeoptError(f"the expansion has {len(expansion)} positions, the rank vectors "
                           f"{len(sequences)}: they must come from one profile")
    if steps > expansion.d_max or topk > expansion.k_max:
        raise ParameterError("trees", f"entry {name} needs STEPS <= {expansion.d_max} and TOPK <= "
                             f"{expansion.k_max}: the expansion profile was recorded with "
                             f"--expand {expansion.k_max},{expansion.d_max}")
    if steps > sequences.num_heads:
        raise TreeoptError(f"STEPS {steps} is deeper than the rank vectors' "
                           f"{sequences.num_heads} levels")


def beam_chains(expansion: DraftExpansion, sequences: RankSequences, topk: int,
                max_steps: int) -> np.ndarray:
    """``(max_steps, P, max_steps)``: ``[S - 1, t, j]`` is where the true depth-``j + 1``
    node stands in the best-first candidate order of ``dynamic:S,topk,*`` at position
    ``t`` (``UNMATCHED``: not a candidate)."""
    _check(expansion, sequences, max_steps, topk, f"dynamic:{max_steps},{topk},N")
    num_positions = len(sequences)
    chains = np.full((max_steps, num_positions, max_steps), UNMATCHED, dtype=np.int64)
    ranks = sequences.ranks
    for position in range(num_positions):
        beam = build_beam(expansion.children(position), topk, max_steps)
        truth = tuple(int(r) for r in ranks[position, :max_steps])
        index = {path: i for i, path in enumerate(beam.paths)}
        best_first = sorted(range(len(beam.paths)),
                            key=lambda i: (-float(beam.scores[i]), i))
        levels = np.fromiter((len(beam.paths[i]) for i in best_first), dtype=np.int64,
                             count=len(best_first))
        place = np.empty(len(best_first), dtype=np.int64)
        place[np.asarray(best_first, dtype=np.int64)] = np.arange(len(best_first))
        for depth in range(1, max_steps + 1):
            candidate = index.get(truth[:depth]) if truth[depth - 1] >= 0 else None
            if candidate is None:
                break
            # Among the candidates of levels <= S, this one's place is the count of
            # those of levels <= S before it.
            before = levels[: place[candidate]]
            for steps in range(depth, max_steps + 1):
                chains[steps - 1, position, depth - 1] = int(np.sum(before <= steps))
    return chains


def beam_tokens_per_step(expansion: DraftExpansion, sequences: RankSequences,
                         settings: Iterable[BeamSetting]) -> dict[BeamSetting, float]:
    """Replayed tokens per verification step of each ``dynamic:S,K,N`` in ``settings``."""
    wanted = list(settings)
    out: dict[BeamSetting, float] = {}
    for topk in sorted({s.topk for s in wanted}):
        same_k = [s for s in wanted if s.topk == topk]
        max_steps = max(s.steps for s in same_k)
        chains = beam_chains(expansion, sequences, topk, max_steps)
        for steps in sorted({s.steps for s in same_k}):
            these = [s for s in same_k if s.steps == steps]
            num_trees = max(s.num_tokens for s in these)
            rates = nested_tokens_per_step_of_chain(chains[steps - 1, :, :steps], sequences,
                                                    num_trees)
            for setting in these:
                out[setting] = float(rates[setting.num_tokens - 1])
    return {setting: out[setting] for setting in wanted}


def all_beam_settings(max_steps: int, max_topk: int, max_tokens: int | None = None
                      ) -> list[BeamSetting]:
    """Every ``dynamic:S,K,N`` with ``S <= max_steps``, ``K <= max_topk`` (and ``N <=
    max_tokens``), each ``N`` from 2 up to all candidates."""
    out = []
    for steps in range(1, max_steps + 1):
        for topk in range(1, max_topk + 1):
            top = BeamSetting.max_tokens(steps, topk)
            for tokens in range(2, min(top, max_tokens or top) + 1):
                out.append(BeamSetting(steps, topk, tokens))
    return out
