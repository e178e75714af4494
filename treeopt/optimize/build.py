"""The greedy tree builder: the best tree of every size from an acceptance profile.

Candidates are the Cartesian product of per-head top-k ranks (paths up to
``num_heads`` deep). A node's value is the probability that a step accepts it
(:mod:`treeopt.optimize.acceptance_models`); a tree's expected accept length is 1 + the sum of its
node values.

**Guarantee (unconstrained).** Under every model of acceptance a child's value is
at most its parent's. Order all candidates by (value descending, depth, ranks):
a parent always precedes its children, so the first ``n`` candidates in that order
are prefix-closed, i.e. a valid tree, and no other set of ``n`` candidates has a
larger sum of values. Popping a heap over the frontier (children of chosen nodes)
visits candidates in exactly that order, so ``build_tree(...).tree_at(n)`` is an
optimal tree of ``n - 1`` nodes for every ``n``, and the trees are nested.

**Constraints** (``max_depth``, ``max_rank``, ``max_children``, an engine's
limits) are applied greedily: the result is valid but may be suboptimal (e.g. a
capped node's high-value grandchildren are never reached). ``engine="vllm"`` is
different: it searches every full product tree (branching ``c_1, c_2, ...`` per
level, ranks ``0..c_d - 1``) exhaustively, so it is optimal among those; such trees
come only in some sizes, so the result may verify fewer tokens than the budget
(:func:`budget_shortfall` says so). ``engine="vllm-medusa"`` is the top-1 chain
vLLM's Medusa drafts today (one token per head): at most ``heads + 1`` tokens.

**Weighting by decoding steps.** The values above average over every calibration
position. Decoding visits fewer: a step accepting ``a`` tokens skips ``a - 1``
positions, so easy text is visited less than its share, and the position average
overstates tokens per step (:mod:`treeopt.optimize.replay`). When the profile carries its
ordered rank vectors, ``weighting="steps"`` (the default then) alternates: replay
decoding with the current tree, rebuild optimally on the positions it visits,
while that raises replayed tokens per step (stopping at a repeat or after two
rounds in a row that do not). The first tree is the position-average one, so the result
is never worse on the calibration text by that measure; its ``curve`` is replayed
tokens per step of every nested tree: what the runtime measures on those prompts.
This is a fixed-point heuristic, not a proof of optimality over all trees.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import product

from treeopt.core.checks import check_int
from treeopt.core.profile import Profile
from treeopt.core.tree import ROOT, Path, Tree
from treeopt.errors import ParameterError, TreeoptError
from treeopt.files.engines import (
    ENGINE_TARGETS,
    TRTLLM_DEFAULT_MAX_DRAFT_LEN,
    TRTLLM_MAX_DEPTH,
    TRTLLM_MAX_TOP_K,
    chain_length,
    check_trtllm,
    check_vllm,
)
from treeopt.optimize.acceptance_models import AcceptanceModel
from treeopt.optimize.replay import nested_tokens_per_step, replay, tokens_per_step

# The engines whose limits the builder knows (one record per target: treeopt.files.engines).
ENGINES = tuple(dict.fromkeys(target.builder for target in ENGINE_TARGETS.values()
                              if target.builder is not None))
WEIGHTINGS = ("steps", "positions")
MIN_BUDGET = 2  # budget 1 is the root alone: plain decoding, nothing to build
# Most trees built when weighting by steps, and how many rounds in a row may fail
# to improve before stopping: on the stories260K heads the best tree comes by
# round 3 or 4, once after a round that did not improve.
MAX_STEP_WEIGHTING_ROUNDS = 8
STEP_WEIGHTING_PATIENCE = 2

__all__ = ["ENGINES", "BuildResult", "budget_shortfall", "build_tree", "engine_max_budget"]


@dataclass(frozen=True)
class BuildResult:
    """The nested trees of one greedy pass and their expected accept lengths.

    Attributes:
        order: nodes in insertion order; ``tree_at(n)`` holds the first ``n - 1``
            (for ``engine="vllm"``: the final tree's nodes, canonical order).
        curve: expected accept length for ``num_tokens = 1 .. budget`` (``curve[0]``
            is 1.0, the root-only tree).
        num_heads: heads of the output trees (the profile's).
        acceptance_model: model the values come from.
        blend_weight: the blend's pseudo-count (``None`` unless ``blend``).
        branching: for ``engine="vllm"``, the best branching vector per
            ``num_tokens`` (index ``n - 1``); ``None`` otherwise.
        weighting: ``positions`` (curve = position-average expected accept length)
            or ``steps`` (curve = replayed tokens per decoding step).
        rounds: trees built (1 unless ``steps``).
    """

    order: tuple[Path, ...]
    curve: tuple[float, ...]
    num_heads: int
    acceptance_model: str
    blend_weight: float | None = None
    branching: tuple[tuple[int, ...], ...] | None = None
    weighting: str = "positions"
    rounds: int = 1

    @property
    def budget(self) -> int:
        return len(self.curve)

    @property
    def tree(self) -> Tree:
        """The tree for the full budget."""
        return self.tree_at(self.budget)

    @property
    def expected_accept_length(self) -> float:
        """The full tree's figure: ``curve[-1]``, tokens per step, root included.

        Under ``weighting="positions"`` the expected accept length (position average);
        under ``"steps"`` the replayed tokens per decoding step, which is what the
        runtime measures on the profiled text (and what tree files store for it).
        """
        return self.curve[-1]

    def tree_at(self, num_tokens: int) -> Tree:
        """The tree verifying ``num_tokens`` tokens per step (root included).

        For ``engine="vllm"`` it is the best tree with uniform levels of *at most*
        ``num_tokens`` tokens (a product of branching factors cannot hit every size).
        """
        if not 1 <= num_tokens <= self.budget:
            raise TreeoptError(f"num_tokens must be in 1..{self.budget}, not {num_tokens}")
        if self.branching is not None:
            return product_tree(self.branching[num_tokens - 1], self.num_heads)
        if num_tokens == 1:
            return Tree.empty(self.num_heads)
        return Tree.from_paths(self.order[: num_tokens - 1], num_heads=self.num_heads)


def _rank_caps(
    profile: Profile, depth_limit: int, max_rank: int | Sequence[int] | None, engine: str | None
) -> list[int]:
    """Largest allowed rank at depth 1..depth_limit (inclusive)."""
    if max_rank is None:
        ranks = [profile.top_k - 1]
    elif isinstance(max_rank, int):
        ranks = [max_rank]
    else:
        ranks = list(max_rank)
        if not ranks:
            raise ParameterError("max_rank", "needs at least one value")
    for rank in ranks:
        check_int(rank, "max_rank", minimum=0)
    caps = [ranks[min(depth, len(ranks) - 1)] for depth in range(depth_limit)]
    top = profile.top_k - 1
    if engine == "trtllm":
        top = min(top, TRTLLM_MAX_TOP_K - 1)
    elif engine == "vllm-medusa":
        top = 0  # each head's argmax only
    return [min(cap, top) for cap in caps]


def _check_build(
    profile: Profile, budget: int, max_depth: int | None, max_children: int | None,
    engine: str | None, weighting: str | None,
) -> tuple[int, str]:
    """``(deepest level allowed, weighting)`` for :func:`build_tree`'s arguments, checked."""
    check_int(budget, "budget", minimum=MIN_BUDGET,
              note="tokens per step, root included; budget 1 is plain decoding")
    if engine is not None and engine not in ENGINES:
        raise TreeoptError(f"unknown engine {engine!r} (choose from {', '.join(ENGINES)})")
    if engine == "trtllm" and budget - 1 > TRTLLM_DEFAULT_MAX_DRAFT_LEN:
        raise ParameterError(
            "budget", f"{budget} needs {budget - 1} nodes, and TensorRT-LLM takes at most "
            f"max_draft_len={TRTLLM_DEFAULT_MAX_DRAFT_LEN} (use {TRTLLM_DEFAULT_MAX_DRAFT_LEN + 1} "
            "or less)"
        )
    depth_limit = profile.num_heads
    if max_depth is not None:
        depth_limit = min(depth_limit, check_int(max_depth, "max_depth"))
    if engine == "trtllm":
        depth_limit = min(depth_limit, TRTLLM_MAX_DEPTH)
    if max_children is not None:
        check_int(max_children, "max_children")
    if weighting is None:
        weighting = "steps" if profile.sequences is not None else "positions"
    if weighting not in WEIGHTINGS:
        raise TreeoptError(f"unknown weighting {weighting!r} (choose from {', '.join(WEIGHTINGS)})")
    if weighting == "steps" and profile.sequences is None:
        raise TreeoptError(
            "weighting by decoding steps needs the profile's rank vectors (PROFILE.ranks.npz, "
            "written by treeopt profile); use weighting positions"
        )
    return depth_limit, weighting


def build_tree(
    profile: Profile,
    budget: int,
    acceptance_model: str = "independent",
    max_depth: int | None = None,
    max_rank: int | Sequence[int] | None = None,
    max_children: int | None = None,
    engine: str | None = None,
    blend_weight: float | None = None,
    weighting: str | None = None,
) -> BuildResult:
    """The best tree verifying ``budget`` tokens per step, and every smaller one.

    Args:
        profile: acceptance profile; the trees get its ``num_heads``.
        budget: tokens per step, root included (>= 2); the tree has ``budget - 1`` nodes.
        acceptance_model: ``independent``, ``joint`` or ``blend`` (the last two need
            joint counts).
        max_depth: deepest level allowed (default: the profile's heads).
        max_rank: largest rank allowed (0-based, inclusive), one bound or one per
            depth (the last repeats).
        max_children: most children of any node, the root included.
        engine: ``trtllm`` (<= 63 nodes, ranks < 16, depth <= 16), ``vllm`` (full
            product trees only, searched exhaustively; vLLM before PR #42121) or
            ``vllm-medusa`` (the top-1 chain vLLM's Medusa drafts).
        blend_weight: the blend's pseudo-count (default: chosen by cross-validation).
        weighting: ``positions`` (every calibration position counts once) or
            ``steps`` (the positions decoding visits; needs ``profile.sequences``).
            Default: ``steps`` when the profile has its rank vectors.

    With ``positions``, unconstrained, every ``tree_at(n)`` is optimal (see the
    module docstring); constrained, it is valid but may be suboptimal. With
    ``steps``, see "Weighting by decoding steps" there. Raises TreeoptError if the
    constraints leave fewer than ``budget - 1`` candidates.
    """
    depth_limit, weighting = _check_build(profile, budget, max_depth, max_children, engine,
                                          weighting)
    caps = _rank_caps(profile, depth_limit, max_rank, engine)
    model = AcceptanceModel(profile, acceptance_model, blend_weight)

    def build_once(model: AcceptanceModel) -> BuildResult:
        if engine in ("vllm", "vllm-medusa"):
            return _build_product(model, budget, caps, max_children)
        return _build_greedy(model, budget, caps, max_children)

    result = build_once(model)
    if weighting == "steps":
        result = _weight_by_steps(result, profile, model, build_once)
    if engine == "vllm":
        check_vllm(result.tree)
    elif engine == "vllm-medusa":
        chain_length(result.tree)
    elif engine == "trtllm":
        check_trtllm(result.tree)
    return result


def engine_max_budget(engine: str | None, num_heads: int) -> int | None:
    """Largest budget (tokens per step, root included) ``engine`` takes, or None.

    TensorRT-LLM: ``max_draft_len`` nodes + the root; vLLM's Medusa: one token per head.
    """
    if engine == "trtllm":
        return TRTLLM_DEFAULT_MAX_DRAFT_LEN + 1
    if engine == "vllm-medusa":
        return num_heads + 1
    return None


def budget_shortfall(result: BuildResult, engine: str | None) -> str | None:
    """One line when ``result``'s tree verifies fewer tokens than its budget, else None.

    Only an engine's shape limits cause it: vLLM's uniform levels come in some sizes
    only, vLLM's Medusa chain is at most ``heads + 1`` tokens.
    """
    tokens = result.tree.num_tokens
    if tokens >= result.budget:
        return None
    shape = {"vllm": "tree with uniform levels (the shape vLLM's speculative_token_tree took)",
             "vllm-medusa": f"top-1 chain (what vLLM's Medusa drafts, one token per head, "
                            f"{result.num_heads} heads)"}.get(engine, "tree")
    return (f"note: the best {shape} within the budget of {result.budget} has {tokens} "
            f"tokens/step; that engine cannot take exactly {result.budget}")


def _weight_by_steps(
    first: BuildResult, profile: Profile, model: AcceptanceModel,
    build_once: Callable[[AcceptanceModel], BuildResult],
) -> BuildResult:
    """Rebuild on the positions the last tree's decoding visits while that improves.

    Stops when a rebuilt tree repeats an earlier one or when
    ``STEP_WEIGHTING_PATIENCE`` rounds in a row replay no better than the best so
    far, and returns the best, with its curve replayed.
    """
    sequences = profile.sequences
    assert sequences is not None
    rounds = 1
    best = first
    best_score, visited = replay(first.tree, sequences)
    seen = {first.tree.paths}
    stale = 0  # rounds in a row that did not improve on the best
    while rounds < MAX_STEP_WEIGHTING_ROUNDS:
        # The profile of the positions the last tree visits (same prompts, same
        # blend weight).
        steps_profile = Profile.from_rank_vectors(
            sequences.ranks[visited], profile.top_k, groups=sequences.groups[visited]
        )
        result = build_once(AcceptanceModel(steps_profile, model.name, model.blend_weight))
        rounds += 1
        if result.tree.paths in seen:
            break
        seen.add(result.tree.paths)
        score, visited = replay(result.tree, sequences)
        if score > best_score:
            best, best_score, stale = result, score, 0
        else:
            stale += 1
            if stale == STEP_WEIGHTING_PATIENCE:
                break  # around the fixed point rounds only oscillate
    if best.branching is None:
        curve = tuple(float(v) for v in nested_tokens_per_step(best.order, sequences))
    else:  # product trees are not nested: replay each distinct one
        scores = {b: tokens_per_step(product_tree(b, best.num_heads), sequences)
                  for b in set(best.branching)}
        curve = tuple(scores[b] for b in best.branching)
    return replace(best, curve=curve, weighting="steps", rounds=rounds)


def _build_greedy(
    model: AcceptanceModel, budget: int, caps: list[int], max_children: int | None
) -> BuildResult:
    """Pop the frontier by (value desc, depth, ranks) until ``budget - 1`` nodes."""
    nodes_wanted = budget - 1
    depth_limit = len(caps)
    frontier: list[tuple[float, int, Path]] = []
    child_count: dict[Path, int] = {}

    def push_children(path: Path, value: float) -> None:
        if len(path) >= depth_limit:
            return
        values = model.child_values(path, value).tolist()
        for rank in range(caps[len(path)] + 1):
            child = (*path, rank)
            heapq.heappush(frontier, (-values[rank], len(child), child))

    push_children(ROOT, 1.0)
    order: list[Path] = []
    total = 1.0
    curve = [total]
    while len(order) < nodes_wanted and frontier:
        negative_value, _, path = heapq.heappop(frontier)
        parent = path[:-1]
        if max_children is not None:
            if child_count.get(parent, 0) >= max_children:
                continue
            child_count[parent] = child_count.get(parent, 0) + 1
        order.append(path)
        total -= negative_value
        curve.append(total)
        push_children(path, -negative_value)
    if len(order) < nodes_wanted:
        raise ParameterError(
            "budget", f"{budget} needs {nodes_wanted} candidate nodes; these limits (heads, "
            f"top-k, max depth, max rank, max children) leave only {len(order)} candidate nodes")
    return BuildResult(
        tuple(order), tuple(curve), model.profile.num_heads, model.name, model.blend_weight
    )


def product_tree(branching: Sequence[int], num_heads: int) -> Tree:
    """The full tree with ``branching[d]`` children (ranks 0..c-1) under every depth-d node."""
    if not branching:
        return Tree.empty(num_heads)
    paths: list[Path] = []
    for depth in range(1, len(branching) + 1):
        paths.extend(product(*(range(count) for count in branching[:depth])))
    return Tree.from_paths(paths, num_heads=num_heads)


def _build_product(
    model: AcceptanceModel, budget: int, caps: list[int], max_children: int | None
) -> BuildResult:
    """Exhaustive search over branching vectors with at most ``budget - 1`` nodes."""
    nodes_wanted = budget - 1
    limits = [cap + 1 for cap in caps]
    if max_children is not None:
        limits = [min(limit, max_children) for limit in limits]
    # best[size] = (value sum, branching) over product trees of exactly `size` nodes.
    best: dict[int, tuple[float, tuple[int, ...]]] = {0: (0.0, ())}

    def search(level: list[tuple[Path, float]], branching: tuple[int, ...], size: int,
               total: float) -> None:
        depth = len(branching)
        if depth >= len(limits):
            return
        children = [(path, model.child_values(path, value).tolist()) for path, value in level]
        next_level: list[tuple[Path, float]] = []
        added = 0.0
        for count in range(1, limits[depth] + 1):
            new_size = size + len(level) * count
            if new_size > nodes_wanted:
                break
            rank = count - 1
            for path, values in children:
                next_level.append(((*path, rank), values[rank]))
                added += values[rank]
            vector = (*branching, count)
            known = best.get(new_size)
            if known is None or total + added > known[0]:
                best[new_size] = (total + added, vector)
            search(list(next_level), vector, new_size, total + added)

    search([(ROOT, 1.0)], (), 0, 0.0)
    curve: list[float] = []
    branchings: list[tuple[int, ...]] = []
    running: tuple[float, tuple[int, ...]] = best[0]
    for size in range(nodes_wanted + 1):
        candidate = best.get(size)
        if candidate is not None and candidate[0] > running[0]:
            running = candidate
        curve.append(1.0 + running[0])
        branchings.append(running[1])
    final = product_tree(branchings[-1], model.profile.num_heads)
    return BuildResult(
        final.paths, tuple(curve), model.profile.num_heads, model.name, model.blend_weight,
        tuple(branchings),
    )
