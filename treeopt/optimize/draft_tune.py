"""Draft-model tuning: the chain length gamma, or the draft tree, of best predicted speedup.

A draft-model step runs the draft's passes (one per tree level with children:
``gamma`` for the chain ``Tree.chain(gamma)``, ``depth`` for a tree) and then the
target's verification of the tree. So, unlike Medusa heads, its cost depends on the
tree's shape, not only its size: the caller gives ``step_seconds(tree)`` (measured,
or the roofline's :func:`treeopt.cost.drafts.predict_draft_step`). Then

    speedup(tree) = E[accept](tree) * plain_seconds / step_seconds(tree)

with E[accept] the tokens per step (root included) the profile predicts: replayed
over its rank vectors when it has them (what the runtime measures), else the
acceptance model's expectation. Pure functions; no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from treeopt.core.profile import Profile
from treeopt.core.tree import Tree
from treeopt.errors import TreeoptError
from treeopt.optimize.acceptance_models import expected_accept_length
from treeopt.optimize.build import MIN_BUDGET, build_tree
from treeopt.optimize.replay import tokens_per_step

# Depths a draft profile records by default: deeper than any draft chain or tree worth
# verifying (the Medusa paper's best gamma is 3-4; trees rarely pass depth 6 at useful
# budgets), and a draft profile costs one teacher-forced pass whatever the depth.
DEFAULT_DRAFT_DEPTH = 8
# Largest draft tree (tokens per step, root included) `tune` builds by default: over three
# times the paper's best chain (gamma 4, 5 tokens), room for top-k branches on its levels,
# while a 7B target's verification of it stays memory-bound at batch 1 on a GPU.
DEFAULT_DRAFT_BUDGET = 16


@dataclass(frozen=True)
class DraftPoint:
    """One draft chain or tree: its predicted tokens per step, step time and speedup."""

    tree: Tree
    expected_accept_length: float
    step_seconds: float
    speedup: float

    @property
    def num_tokens(self) -> int:
        return self.tree.num_tokens

    @property
    def draft_passes(self) -> int:
        """Draft forward passes a step runs: the tree's depth (``gamma`` for a chain)."""
        return self.tree.depth


@dataclass(frozen=True)
class DraftTuneResult:
    """Speedup of every chain ``gamma = 0..max_gamma`` and every built tree size."""

    chains: list[DraftPoint]
    trees: list[DraftPoint]
    plain_seconds: float

    @property
    def best_chain(self) -> DraftPoint:
        return best_draft_point(self.chains)

    @property
    def best_tree(self) -> DraftPoint:
        return best_draft_point(self.trees or self.chains[:1])

    @property
    def best(self) -> DraftPoint:
        return best_draft_point([self.best_chain, self.best_tree])


def best_draft_point(points: list[DraftPoint]) -> DraftPoint:
    """Highest speedup; among ties the fewest tokens, then the fewest draft passes."""
    if not points:
        raise TreeoptError("no draft settings to choose from")
    return max(points, key=lambda p: (p.speedup, -p.num_tokens, -p.draft_passes))


def chain_accept_length(alpha: float, gamma: int) -> float:
    """Tokens per step of a ``gamma`` chain when each draft token is accepted with ``alpha``.

    ``(1 - alpha^(gamma+1)) / (1 - alpha)`` (Leviathan et al. 2023), independent tokens.
    """
    if not 0.0 <= alpha <= 1.0:
        raise TreeoptError(f"acceptance rate must be in [0, 1], not {alpha}")
    if gamma < 0:
        raise TreeoptError(f"gamma must be >= 0, not {gamma}")
    if alpha == 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def profile_accept_length(profile: Profile, acceptance_model: str = "independent"
                          ) -> Callable[[Tree], float]:
    """E[accept](tree) from ``profile``: replayed if it has rank vectors, else modelled."""
    if profile.sequences is not None:
        return lambda tree: tokens_per_step(tree, profile)
    return lambda tree: expected_accept_length(tree, profile, acceptance_model)


def draft_point(tree: Tree, accept_length: float, step_seconds: float,
                plain_seconds: float) -> DraftPoint:
    if step_seconds <= 0 or plain_seconds <= 0:
        raise TreeoptError("step times must be positive")
    return DraftPoint(tree, accept_length, step_seconds,
                      accept_length * plain_seconds / step_seconds)


def tune_draft(
    profile: Profile,
    step_seconds: Callable[[Tree], float],
    plain_seconds: float,
    max_gamma: int | None = None,
    max_budget: int = 0,
    acceptance_model: str = "independent",
) -> DraftTuneResult:
    """Score every chain up to ``max_gamma`` (default: the profile's depth) and the trees
    ``build`` grows for ``profile`` up to ``max_budget`` tokens (0: chains only).

    ``step_seconds(tree)``: seconds of one draft + verification step with ``tree``
    (``Tree.chain(0)``, plain decoding, should cost ``plain_seconds``).
    """
    max_gamma = profile.num_heads if max_gamma is None else max_gamma
    if not 0 <= max_gamma <= profile.num_heads:
        raise TreeoptError(f"--max-gamma must be in 0..{profile.num_heads} (the profile's "
                           f"depth), not {max_gamma}")
    accept = profile_accept_length(profile, acceptance_model)
    chains = [draft_point(Tree.chain(g), accept(Tree.chain(g)), step_seconds(Tree.chain(g)),
                          plain_seconds) for g in range(max_gamma + 1)]
    trees = []
    if max_budget >= MIN_BUDGET:
        built = build_tree(profile, max_budget, acceptance_model=acceptance_model)
        for size in range(MIN_BUDGET, built.budget + 1):
            tree = built.tree_at(size)
            trees.append(draft_point(tree, accept(tree), step_seconds(tree), plain_seconds))
    return DraftTuneResult(chains, trees, plain_seconds)
