"""Tree-size tuning: the size that maximizes predicted speedup.

Speedup(n) = E[accept](n) / (latency(n) / latency(1)): tokens gained per step
over plain decoding's one, divided by how much longer the verification step of
an n-token tree takes than a plain decoding step. Pure functions over the
builder's nested acceptance curve and a :class:`~treeopt.core.latency.LatencyTable`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from treeopt.core.checks import check_int
from treeopt.core.latency import LatencyTable
from treeopt.core.profile import Profile
from treeopt.core.tree import Tree
from treeopt.errors import TreeoptError
from treeopt.optimize.build import ENGINES, MIN_BUDGET, build_tree, engine_max_budget


@dataclass(frozen=True)
class TunePoint:
    """One tree size: its expected accept length, step overhead and predicted speedup."""

    num_tokens: int
    expected_accept_length: float
    overhead: float
    speedup: float


@dataclass(frozen=True)
class TuneResult:
    """The speedup curve at one (batch, context) and its best size.

    Attributes:
        points: one per size n = 1..len(points), in order.
        best: the point of highest speedup (the smallest n among ties).
        batch, context: the latency setting used.
        limited_by: why the curve stops where it does: ``"acceptance curve"``,
            ``"latency table"`` (largest measured size, or out of memory) or
            ``"max budget"``.
    """

    points: list[TunePoint]
    best: TunePoint
    batch: int
    context: int
    limited_by: str


def points_at(
    accept_curve: Sequence[float], overhead: Mapping[int, float], sizes: Iterable[int]
) -> list[TunePoint]:
    """The one speedup rule, for each size n in ``sizes`` (in that order).

    ``speedup = E[accept](n) / overhead(n)``, with ``accept_curve[n - 1]`` =
    E[accept](n) (tokens per step, root included) and ``overhead[n]`` =
    latency(n) / latency(1): tokens per second over plain decoding's. Both
    ``treeopt tune`` and ``treeopt simulate`` score sizes with it. Raises
    TreeoptError if the acceptance curve or overhead misses a size asked for.
    """
    points = []
    for n in sizes:
        if n not in overhead:
            raise TreeoptError(f"no overhead for num_tokens {n}")
        if not 1 <= n <= len(accept_curve):
            raise TreeoptError(f"acceptance curve covers {len(accept_curve)} sizes, not {n}")
        accept, cost = float(accept_curve[n - 1]), float(overhead[n])
        points.append(TunePoint(n, accept, cost, accept / cost))
    return points


def speedup_points(
    accept_curve: Sequence[float], overhead: Mapping[int, float], max_num_tokens: int
) -> list[TunePoint]:
    """Speedup for n = 1..max_num_tokens (see :func:`points_at`).

    Guarantees ``points[i].num_tokens == i + 1`` and ``speedup == E / overhead``.
    Raises TreeoptError if the acceptance curve or overhead misses a size asked for.
    """
    check_int(max_num_tokens, "max_num_tokens")
    if len(accept_curve) < max_num_tokens:
        raise TreeoptError(
            f"acceptance curve covers {len(accept_curve)} sizes, fewer than {max_num_tokens}"
        )
    return points_at(accept_curve, overhead, range(1, max_num_tokens + 1))


def best_point(points: Sequence[TunePoint]) -> TunePoint:
    """The point of highest speedup; among equal speedups, the smallest tree (cheaper)."""
    if not points:
        raise TreeoptError("no tree sizes to choose from")
    return max(points, key=lambda point: (point.speedup, -point.num_tokens))


def tune_size(
    accept_curve: Sequence[float],
    table: LatencyTable,
    batch: int,
    context: int,
    max_budget: int | None = None,
) -> TuneResult:
    """Pick the tree size n* maximizing E[accept](n) / overhead(n) at (batch, context).

    Sizes run from 1 to the smallest of: the acceptance curve's length, the
    largest size the latency table covers there (never extrapolated; an
    out-of-memory size caps it) and ``max_budget``.
    """
    overhead = table.overhead_curve(batch, context)
    # On a tie the latency table is named: the builder is usually sized to it.
    limits = {"latency table": max(overhead), "acceptance curve": len(accept_curve)}
    if max_budget is not None:
        limits["max budget"] = check_int(max_budget, "max_budget")
    limited_by = min(limits, key=lambda name: limits[name])
    points = speedup_points(accept_curve, overhead, limits[limited_by])
    return TuneResult(points, best_point(points), batch, context, limited_by)


@dataclass(frozen=True)
class BatchBest:
    """The best tree size at one batch size and its predicted speedup."""

    batch: int
    num_tokens: int
    speedup: float
    expected_accept_length: float
    overhead: float


def batch_view(
    accept_curve: Sequence[float],
    table: LatencyTable,
    context: int,
    max_budget: int | None = None,
) -> list[BatchBest]:
    """For each batch size the table has at ``context``: the best size and its speedup.

    Large batches turn the linear layers compute-bound, so extra tree tokens cost
    more and the best size and speedup shrink (down to n* = 1, speedup 1 when a
    tree no longer pays).
    """
    rows = []
    for batch in table.batches:
        if (batch, context) not in table.settings():
            continue
        result = tune_size(accept_curve, table, batch, context, max_budget)
        best = result.best
        rows.append(
            BatchBest(batch, best.num_tokens, best.speedup, best.expected_accept_length,
                      best.overhead)
        )
    if not rows:
        raise TreeoptError(
            f"latency table has no batch at context {context} "
            f"(contexts: {', '.join(map(str, table.contexts))})"
        )
    return rows


def chain_lengths_per_batch(rows: Sequence[BatchBest]) -> list[tuple[int, int]]:
    """``(batch, chain length K)`` from a batch view of a chain's curve: K = n* - 1.

    Feed a curve built with ``engine="vllm-medusa"`` to :func:`batch_view`; the
    result goes to :func:`treeopt.files.engines.vllm_speculative_config`.
    """
    return [(row.batch, row.num_tokens - 1) for row in rows]


def curve_rows(result: TuneResult, latency: Mapping[int, float]) -> list[dict[str, float]]:
    """Rows for ``treeopt.curve/1``: num_tokens, E[accept], latency_s, overhead, speedup."""
    return [
        {
            "num_tokens": point.num_tokens,
            "expected_accept_length": point.expected_accept_length,
            "latency_s": latency[point.num_tokens],
            "overhead": point.overhead,
            "speedup": point.speedup,
        }
        for point in result.points
    ]


@dataclass(frozen=True)
class TunedTree:
    """The tree of the best size for one latency setting, and how it was chosen.

    Attributes:
        result: the speedup curve at (batch, context) and its best size n*.
        tree: the tree of n* tokens per step (root-only when nothing beats plain
            decoding, i.e. n* = 1).
        score: the builder's figure for ``tree`` (tokens per step, root included:
            replayed under steps weighting, else the expected accept length).
        accept_curve: the builder's figure for every size 1..budget (the curve tuned).
        weighting: the builder's weighting (``"positions"`` or ``"steps"``).
        max_budget: the largest size tuned (``--max-budget`` capped by the engine's limit);
            pass it on to :func:`batch_view`.
    """

    result: TuneResult
    tree: Tree
    score: float
    accept_curve: list[float]
    weighting: str
    max_budget: int | None = None


def tune_tree(
    profile: Profile,
    table: LatencyTable,
    batch: int | None = None,
    context: int | None = None,
    max_budget: int | None = None,
    acceptance_model: str = "independent",
    engine: str | None = None,
) -> TunedTree:
    """Build the nested trees for ``profile`` and pick the size of best predicted speedup.

    ``batch`` defaults to the table's smallest, ``context`` to its nearest to
    :data:`DEFAULT_CONTEXT`. The builder runs to the largest size the table covers
    there (capped by ``max_budget``), :func:`tune_size` picks n*, and the returned
    tree is the builder's n*-token tree. Under steps weighting the nested trees
    follow the full budget's visited positions, so n*'s tree is also rebuilt for
    its own and the rebuilt one is kept if it replays better.

    ``engine`` (one of :data:`~treeopt.optimize.build.ENGINES`) builds every tree
    under that engine's limits (its largest budget too), so the tuned tree is one
    the engine takes as it is.
    """
    if engine is not None and engine not in ENGINES:
        raise TreeoptError(f"unknown engine {engine!r} (choose from {', '.join(ENGINES)})")
    batch, context = table.setting(batch, context)
    size_limit = table.max_num_tokens(batch, context)
    budget = size_limit if max_budget is None else min(max_budget, size_limit)
    engine_limit = engine_max_budget(engine, profile.num_heads)
    if engine_limit is not None:
        budget = min(budget, engine_limit)
        max_budget = engine_limit if max_budget is None else min(max_budget, engine_limit)
    if budget < MIN_BUDGET:
        raise TreeoptError(
            f"nothing to tune at batch {batch}, context {context}: the latency table covers "
            f"sizes up to {size_limit} and max_budget is {max_budget} (a tree needs "
            f">= {MIN_BUDGET} tokens per step)"
        )
    built = build_tree(profile, budget, acceptance_model=acceptance_model, engine=engine)
    accept_curve = [float(value) for value in built.curve]
    result = tune_size(accept_curve, table, batch, context, max_budget)
    if built.branching is not None:  # product trees come in some sizes only: pick among those
        sizes = {built.tree_at(point.num_tokens).num_tokens for point in result.points}
        result = replace(
            result, best=best_point([p for p in result.points if p.num_tokens in sizes]))
    best = result.best
    tree, score = built.tree_at(best.num_tokens), best.expected_accept_length
    if built.weighting == "steps" and 1 < best.num_tokens < built.budget:
        rebuilt = build_tree(profile, best.num_tokens, acceptance_model=acceptance_model,
                             engine=engine)
        if rebuilt.expected_accept_length > score:
            tree, score = rebuilt.tree, rebuilt.expected_accept_length
    return TunedTree(result, tree, score, accept_curve, built.weighting, max_budget)
