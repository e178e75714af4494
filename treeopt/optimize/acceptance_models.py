"""Models of acceptance and a tree's expected accept length under a profile.

The value of a node is the probability that a step accepts that node's path, so a
tree's expected accept length (tokens gained per step, the base model's own token
included) is ``1 + sum of its node values``. Three models of acceptance:

- ``independent``: heads are independent; the value of ``(i_1, ..., i_d)`` is
  ``prod_j P(r_j == i_j)`` (needs only the marginal).
- ``joint``: the empirical frequency of positions whose rank vector starts with the
  path (exact on the calibration set; needs joint counts).
- ``blend``: the joint trie's conditionals shrunk toward the marginal,
  ``P(r_{d+1} = i | prefix p) = (count(p + i) + w * P(r_{d+1} = i)) / (count(p) + w)``,
  with the pseudo-count ``w`` chosen by cross-validated held-out likelihood over
  prompt groups (:func:`choose_blend_weight`): ``w = 0`` is the joint model and
  ``w = inf`` the independent one.

In every model a child's value is its parent's times a conditional probability
``<= 1``, so values never increase along a path: the property that makes the
greedy builder optimal (see :mod:`treeopt.optimize.build`).

A rank ``>= top_k`` of the profile has value 0 (nothing was measured there).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from treeopt.core.profile import Profile
from treeopt.core.tree import ROOT, Path, Tree, format_path
from treeopt.errors import ParameterError, TreeoptError

ACCEPTANCE_MODELS = ("independent", "joint", "blend")

# Cross-validation of the blend weight: prompt groups are dealt into this many
# folds (fewer if there are fewer groups), the usual bias/variance compromise.
BLEND_CV_FOLDS = 5
# Candidate pseudo-counts w: 0 (joint), a log grid from one pseudo-position to the
# training set's size (beyond it the prior dominates every node), and inf
# (independent). Four points per decade resolve the optimum to within ~1.8x.
BLEND_GRID_POINTS_PER_DECADE = 4


class AcceptanceModel:
    """Values of a node's children from the node's own value, for one profile.

    ``child_values(path, value)`` returns the ``top_k`` values of ``path + (i,)``
    for ``i < top_k`` given ``value``, the value of ``path``.
    """

    def __init__(
        self, profile: Profile, acceptance_model: str = "independent",
        blend_weight: float | None = None,
    ) -> None:
        if acceptance_model not in ACCEPTANCE_MODELS:
            raise TreeoptError(
                f"unknown model of acceptance {acceptance_model!r} "
                f"(choose from {', '.join(ACCEPTANCE_MODELS)})"
            )
        if acceptance_model != "independent" and not profile.has_joint:
            raise ParameterError(
                "acceptance_model", f"{acceptance_model} needs a profile with joint counts; "
                "this one has marginals only (use independent, or measure one with treeopt "
                "profile)"
            )
        self.profile = profile
        self.name = acceptance_model
        if acceptance_model == "blend" and blend_weight is None:
            blend_weight = choose_blend_weight(profile)
        self.blend_weight = blend_weight if acceptance_model == "blend" else None
        self._zeros = np.zeros(profile.top_k)

    def child_values(self, path: Path, value: float) -> np.ndarray:
        depth = len(path)
        profile = self.profile
        if depth >= profile.num_heads or value == 0.0:
            return self._zeros
        if self.name == "independent":
            return value * profile.marginal[depth]
        counts = profile.child_counts.get(path)
        if self.name == "joint":
            return self._zeros if counts is None else counts / profile.num_positions
        weight = self.blend_weight
        assert weight is not None
        if math.isinf(weight):
            return value * profile.marginal[depth]
        parent_mass = profile.prefix_mass.get(path, 0)
        if parent_mass + weight == 0:
            return self._zeros
        observed = self._zeros if counts is None else counts
        return value * (observed + weight * profile.marginal[depth]) / (parent_mass + weight)


def node_values(
    tree: Tree, profile: Profile, acceptance_model: str = "independent",
    blend_weight: float | None = None,
) -> dict[Path, float]:
    """Acceptance probability of every node of ``tree`` (root ``()`` = 1.0).

    Raises TreeoptError if the tree is deeper than the profile has heads.
    """
    if tree.depth > profile.num_heads:
        raise TreeoptError(
            f"tree is {tree.depth} deep but the profile has {profile.num_heads} heads"
        )
    model = AcceptanceModel(profile, acceptance_model, blend_weight)
    values: dict[Path, float] = {ROOT: 1.0}
    children: dict[Path, np.ndarray] = {}
    for path in tree.paths:  # canonical order: parents first
        parent = path[:-1]
        if parent not in children:
            children[parent] = model.child_values(parent, values[parent])
        rank = path[-1]
        values[path] = float(children[parent][rank]) if rank < profile.top_k else 0.0
    return values


def node_value(
    profile: Profile, path: Sequence[int], acceptance_model: str = "independent",
    blend_weight: float | None = None,
) -> float:
    """Probability that a step accepts ``path`` (given the tree contains it)."""
    path = tuple(path)
    if len(path) > profile.num_heads:
        raise TreeoptError(
            f"path {format_path(path)} is deeper than the profile's {profile.num_heads} heads"
        )
    model = AcceptanceModel(profile, acceptance_model, blend_weight)
    value = 1.0
    for depth, rank in enumerate(path):
        if rank >= profile.top_k:
            return 0.0
        value = float(model.child_values(path[:depth], value)[rank])
    return value


def expected_accept_length(
    tree: Tree, profile: Profile, acceptance_model: str = "independent",
    blend_weight: float | None = None,
) -> float:
    """Expected tokens gained per step, the root's 1 included: ``1 + sum of node values``."""
    values = node_values(tree, profile, acceptance_model, blend_weight)
    return 1.0 + sum(value for path, value in values.items() if path != ROOT)


# --------------------------------------------------------------- blend weight
def blend_weight_grid(num_positions: int) -> np.ndarray:
    """Candidate pseudo-counts: 0, a log grid over [1, num_positions], inf."""
    decades = math.log10(max(num_positions, 1))
    steps = max(1, math.ceil(decades * BLEND_GRID_POINTS_PER_DECADE))
    return np.concatenate(([0.0], np.logspace(0.0, decades, steps + 1), [math.inf]))


def heldout_log_likelihood(train: Profile, heldout: Profile, weights: np.ndarray) -> np.ndarray:
    """Log-likelihood of ``heldout``'s longest prefixes under the blend fit on ``train``.

    One entry per weight. A held-out position ending its prefix at ``q`` took
    ``len(q)`` accepted steps then missed (no miss factor after the last head).
    Positions that even the independence prior (fit on ``train``) gives zero
    probability are left out: no weight can explain them.
    """
    assert train.joint is not None and heldout.joint is not None
    return _log_likelihood(
        heldout.joint, train.prefix_mass.get, train.joint.get, train.marginal,
        train.num_heads, weights,
    )


def _log_likelihood(
    heldout_joint: dict[Path, int],
    train_mass: Callable[[Path, int], int],
    train_stops: Callable[[Path, int], int],
    train_marginal: np.ndarray,
    num_heads: int,
    weights: np.ndarray,
) -> np.ndarray:
    """:func:`heldout_log_likelihood` from lookups: ``train_mass(p, 0)`` = positions
    through ``p``, ``train_stops(p, 0)`` = positions whose longest prefix is ``p``."""
    observed, parent_mass, prior, multiplicity, position_of = [], [], [], [], []
    miss_prior = 1.0 - train_marginal.sum(axis=1)
    for index, (prefix, count) in enumerate(heldout_joint.items()):
        parent_count = train_mass((), 0)
        for depth, rank in enumerate(prefix):
            child = prefix[: depth + 1]
            child_count = train_mass(child, 0)
            observed.append(child_count)
            parent_mass.append(parent_count)
            prior.append(train_marginal[depth, rank])
            parent_count = child_count
        if len(prefix) < num_heads:  # the miss that ended the prefix
            observed.append(train_stops(prefix, 0))
            parent_mass.append(parent_count)
            prior.append(miss_prior[len(prefix)])
        steps = len(prefix) + (len(prefix) < num_heads)
        multiplicity.extend([count] * steps)
        position_of.extend([index] * steps)
    observed_arr = np.asarray(observed, dtype=float)[:, None]
    parent_arr = np.asarray(parent_mass, dtype=float)[:, None]
    prior_arr = np.maximum(np.asarray(prior, dtype=float), 0.0)[:, None]
    infinite = np.isinf(weights)[None, :]
    finite = np.where(infinite, 0.0, weights[None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        probability = (observed_arr + finite * prior_arr) / (parent_arr + finite)
        probability = np.where(infinite, prior_arr, np.nan_to_num(probability, nan=0.0))
        log_probability = np.log(probability)
    positions = np.asarray(position_of)
    explainable = np.ones(len(heldout_joint), dtype=bool)
    explainable[positions[prior_arr[:, 0] <= 0]] = False
    keep = explainable[positions]
    weighted = log_probability[keep] * np.asarray(multiplicity, dtype=float)[keep, None]
    return weighted.sum(axis=0)


def choose_blend_weight(profile: Profile) -> float:
    """The blend pseudo-count maximizing cross-validated held-out log-likelihood.

    Prompt groups are dealt round-robin into ``min(BLEND_CV_FOLDS, groups)`` folds;
    each fold is scored under the blend fit on the other folds (counts of the
    whole profile minus the fold's). Ties go to the larger weight (the simpler,
    smoother model). Needs >= 2 prompt groups.
    """
    if profile.groups is None or len(profile.groups) < 2 or profile.joint is None:
        raise TreeoptError(
            "the blend model of acceptance picks its weight by cross-validation over prompts and "
            "needs a profile with >= 2 prompt groups (use the joint or independent model)"
        )
    num_groups = len(profile.groups)
    num_folds = min(BLEND_CV_FOLDS, num_groups)
    fold_train_positions = profile.num_positions * (num_folds - 1) // num_folds
    weights = blend_weight_grid(fold_train_positions)
    full_mass, full_joint = profile.prefix_mass, profile.joint
    full_counts = np.sum([group.marginal_counts for group in profile.groups], axis=0)
    scores = np.zeros(len(weights))
    for fold in range(num_folds):
        heldout = profile.subset(range(fold, num_groups, num_folds))
        assert heldout.joint is not None
        heldout_mass, heldout_joint = heldout.prefix_mass, heldout.joint
        train_positions = profile.num_positions - heldout.num_positions
        train_counts = full_counts - np.sum(
            [group.marginal_counts for group in heldout.groups or ()], axis=0
        )

        def train_mass(path: Path, default: int, heldout_mass=heldout_mass) -> int:
            return full_mass.get(path, default) - heldout_mass.get(path, default)

        def train_stops(path: Path, default: int, heldout_joint=heldout_joint) -> int:
            return full_joint.get(path, default) - heldout_joint.get(path, default)

        scores += _log_likelihood(
            heldout_joint, train_mass, train_stops, train_counts / train_positions,
            profile.num_heads, weights,
        )
    best = np.flatnonzero(scores == scores.max())
    return float(weights[best[-1]])
