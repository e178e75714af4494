"""A drafter's recorded expansion, and the engine-style dynamic tree ``dynamic:S,K,N`` built on it.

The engine-style dynamic tree (SGLang's EAGLE ``select_top_k_tokens`` +
``organize_draft_results``, EAGLE-2's ``topK_genrate``; the shared spec is
``dynamic:STEPS,TOPK,TOKENS``):

1. Level 1: the drafter's top-K tokens after the root, score = probability. They
   are the first frontier.
2. Level ``l = 2..S``: each frontier node ``f`` (in frontier-rank order) gets its
   top-K children ``c``, score ``score(f) * p_c``; the new frontier is the top-K of
   these ``K * K`` candidates by score.
3. The tree is the ``N - 1`` best of all ``K + (S - 1) K^2`` candidates by score;
   ties go to the lower candidate index (level by level, frontier-rank-major,
   child-rank-minor). A child never outscores its parent (probabilities are <= 1,
   and a tie goes to the parent's lower index), so every prefix of that order is a
   tree.

Nodes are named by *rank paths* as in :class:`treeopt.core.tree.Tree`: ``(0, 2)``
is the third most likely child of the most likely child of the root. The frontier
at a level does not depend on ``S``, and the beam of a smaller ``K`` is not a subset
of a larger one's; so a :class:`DraftExpansion` recorded up to ``(d_max, k_max)``
holds, per calibration position, the top-``k_max`` child probabilities of every node
that the beam of *some* ``K <= k_max`` expands at levels ``0..d_max - 1`` (the root
included): enough to build every ``dynamic:S,K,N`` with ``S <= d_max``, ``K <= k_max``.
Where the target's greedy continuation lies is the rank vector of the same
position (:class:`treeopt.core.ranks.RankSequences`). Scores are float32 products,
as the runtime computes them. Pure numpy; no torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from treeopt.core.tree import Path, Tree
from treeopt.errors import ParameterError, TreeoptError

DYNAMIC_PREFIX = "dynamic:"
ChildProbs = Mapping[Path, np.ndarray]  # expanded node -> its children's probabilities


@dataclass(frozen=True)
class BeamSetting:
    """``dynamic:S,K,N``: ``steps`` drafter passes, beam width ``topk``, ``num_tokens``
    verified per step (the root included)."""

    steps: int
    topk: int
    num_tokens: int

    def __post_init__(self) -> None:
        if min(self.steps, self.topk) < 1:
            raise ParameterError("trees", f"{self.name}: STEPS and TOPK must be >= 1")
        if not 2 <= self.num_tokens <= self.max_tokens(self.steps, self.topk):
            most = self.max_tokens(self.steps, self.topk)
            raise ParameterError(
                "trees", f"{self.name}: TOKENS must be in 2..{most} "
                "(1 + TOPK + (STEPS - 1) * TOPK^2 candidates, the root included)")

    @staticmethod
    def max_tokens(steps: int, topk: int) -> int:
        """The root and every candidate: ``1 + K + (S - 1) K^2``."""
        return 1 + topk + (steps - 1) * topk * topk

    def __str__(self) -> str:
        return f"{self.steps},{self.topk},{self.num_tokens}"

    @property
    def name(self) -> str:
        return f"{DYNAMIC_PREFIX}{self.steps},{self.topk},{self.num_tokens}"


def parse_beam_setting(name: str) -> BeamSetting | None:
    """``"dynamic:3,4,8"`` -> its :class:`BeamSetting`; ``dynamic:N`` and other names -> None."""
    if not name.startswith(DYNAMIC_PREFIX) or "," not in name:
        return None
    parts = name[len(DYNAMIC_PREFIX):].split(",")
    if len(parts) != 3 or not all(part.strip().isdigit() for part in parts):
        raise ParameterError("trees", f"entry {name!r} is not an engine-style dynamic tree: "
                                      "write dynamic:STEPS,TOPK,TOKENS, e.g. dynamic:3,4,8")
    return BeamSetting(*(int(part) for part in parts))


def parse_expand(text: str, depth: int | None = None) -> tuple[int, int]:
    """``"4,6"`` -> ``(k_max, d_max)`` = (4, 6); ``d_max`` at most ``depth`` when given."""
    parts = text.split(",")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts) \
            or min(int(part) for part in parts) < 1:
        raise ParameterError("expand", f"must be K_MAX,D_MAX with both >= 1 (e.g. 4,6), "
                                       f"not {text!r}")
    k_max, d_max = (int(part) for part in parts)
    if depth is not None and d_max > depth:
        raise ParameterError("expand", f"D_MAX {d_max} exceeds --depth {depth} (the rank "
                                       "vectors must reach as deep as the beam)")
    return k_max, d_max


@dataclass(frozen=True)
class Beam:
    """One position's beam for one ``K`` up to some depth: candidates in index order.

    ``paths[i]``/``scores[i]``: candidate ``i``; ``frontiers[l - 1]``: the level-``l``
    frontier (paths, in frontier-rank order), which the next level expands.
    """

    paths: list[Path]
    scores: np.ndarray  # float32
    frontiers: list[list[Path]]

    def order(self, steps: int | None = None) -> list[Path]:
        """Candidates of levels ``<= steps`` best first (``dynamic:S,K,N`` keeps the first
        ``N - 1``); every prefix is a tree."""
        keep = [i for i, path in enumerate(self.paths) if steps is None or len(path) <= steps]
        keep.sort(key=lambda i: (-float(self.scores[i]), i))
        return [self.paths[i] for i in keep]


def build_beam(children: Callable[[Path], np.ndarray] | ChildProbs, topk: int, steps: int
               ) -> Beam:
    """The beam of width ``topk`` over ``steps`` levels (see the module doc).

    ``children(path)`` (or ``children[path]``): the probabilities of ``path``'s
    children, most likely first, at least ``topk`` of them; asked only for the root
    and the frontiers of levels ``1..steps - 1``. A missing node is a TreeoptError.
    """
    lookup = children if callable(children) else _lookup(children)
    paths: list[Path] = []
    scores: list[np.float32] = []
    frontier: list[tuple[Path, np.float32]] = [((), np.float32(1.0))]
    frontiers: list[list[Path]] = []
    for level in range(1, steps + 1):
        level_paths: list[Path] = []
        level_scores: list[np.float32] = []
        for path, score in frontier:
            probs = np.asarray(lookup(path), dtype=np.float32)[:topk]
            if len(probs) < topk:
                raise TreeoptError(f"node {list(path)} has {len(probs)} children recorded, "
                                   f"not the {topk} the beam needs")
            # Level 1 scores are the probabilities themselves (the root's score is 1).
            level_scores.extend(probs if level == 1 else score * probs)
            level_paths.extend((*path, rank) for rank in range(topk))
        best = sorted(range(len(level_paths)), key=lambda i: (-float(level_scores[i]), i))[:topk]
        frontier = [(level_paths[i], level_scores[i]) for i in best]
        frontiers.append([path for path, _ in frontier])
        paths.extend(level_paths)
        scores.extend(level_scores)
    return Beam(paths, np.asarray(scores, dtype=np.float32), frontiers)


def _lookup(children: ChildProbs) -> Callable[[Path], np.ndarray]:
    def get(path: Path) -> np.ndarray:
        if path not in children:
            raise TreeoptError(f"the expansion has no children recorded for node {list(path)}: "
                               "record it with a larger --expand")
        return children[path]
    return get


def beam_tree(children: Callable[[Path], np.ndarray] | ChildProbs, setting: BeamSetting
              ) -> Tree:
    """The tree ``dynamic:S,K,N`` verifies at one position."""
    order = build_beam(children, setting.topk, setting.steps).order()
    return Tree.from_paths(order[: setting.num_tokens - 1])


@dataclass(frozen=True, eq=False)
class DraftExpansion:
    """Per calibration position, the drafter's children of every node a beam keeps.

    Attributes:
        k_max, d_max: the largest beam width and number of steps it serves.
        node_offsets: ``(P + 1,)``: position ``p``'s nodes are rows
            ``node_offsets[p]:node_offsets[p + 1]`` of the arrays below, its root first.
        parent: ``(M,)`` the parent's index within the position's nodes (``-1``: root);
            a parent precedes its children.
        rank: ``(M,)`` the node's rank among its parent's children (``-1``: root).
        child_probs: ``(M, k_max)`` float32, the node's top-``k_max`` children's
            probabilities, most likely first.
    Positions are the rows of the profile's rank vectors, in the same order.
    """

    k_max: int
    d_max: int
    node_offsets: np.ndarray
    parent: np.ndarray
    rank: np.ndarray
    child_probs: np.ndarray

    def __post_init__(self) -> None:
        """Check shapes, ranges and that every position's nodes form a rooted tree."""
        if min(int(self.k_max), int(self.d_max)) < 1:
            raise TreeoptError("an expansion needs k_max >= 1 and d_max >= 1")
        offsets, num_nodes = self.node_offsets, len(self.parent)
        if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != num_nodes \
                or np.any(np.diff(offsets) < 1):
            raise TreeoptError("expansion node_offsets must rise from 0 to the number of nodes, "
                               "at least one node (the root) per position")
        if self.rank.shape != (num_nodes,) or self.child_probs.shape != (num_nodes, self.k_max):
            raise TreeoptError(f"expansion arrays must be (nodes,) and (nodes, k_max) = "
                               f"({num_nodes}, {self.k_max}), not {self.rank.shape} and "
                               f"{self.child_probs.shape}")
        probs = self.child_probs
        if probs.size and not (np.all(np.isfinite(probs)) and probs.min() >= 0
                               and probs.max() <= 1 and np.all(np.diff(probs, axis=1) <= 0)):
            raise TreeoptError("expansion child probabilities must lie in [0, 1], most likely "
                               "first")
        local = np.arange(num_nodes) - np.repeat(offsets[:-1], np.diff(offsets))
        is_root = local == 0
        if np.any(self.parent[is_root] != -1) or np.any(self.rank[is_root] != -1):
            raise TreeoptError("each position's first expansion node must be its root")
        inner = ~is_root
        if np.any(self.parent[inner] < 0) or np.any(self.parent[inner] >= local[inner]) \
                or np.any(self.rank[inner] < 0) or np.any(self.rank[inner] >= self.k_max):
            raise TreeoptError("expansion nodes must follow their parent, with ranks in "
                               "0..k_max - 1")

    def __len__(self) -> int:
        return len(self.node_offsets) - 1

    @property
    def num_nodes(self) -> int:
        return len(self.parent)

    def children(self, position: int) -> dict[Path, np.ndarray]:
        """Position ``position``'s expanded nodes (rank paths) -> children's probabilities."""
        first, last = int(self.node_offsets[position]), int(self.node_offsets[position + 1])
        paths: list[Path] = []
        out: dict[Path, np.ndarray] = {}
        for index in range(first, last):
            parent = int(self.parent[index])
            path = () if parent < 0 else paths[parent] + (int(self.rank[index]),)
            paths.append(path)
            out[path] = self.child_probs[index]
        return out

    def rows(self, keep: np.ndarray) -> DraftExpansion:
        """The positions where boolean ``keep`` is true, in order."""
        counts = np.diff(self.node_offsets)
        nodes = np.repeat(keep, counts)
        offsets = np.concatenate(([0], np.cumsum(counts[keep])))
        return DraftExpansion(self.k_max, self.d_max, offsets.astype(np.int64),
                              self.parent[nodes], self.rank[nodes], self.child_probs[nodes])

    def digest(self) -> str:
        """SHA-256 of the arrays (probabilities as the float32 the file keeps)."""
        hasher = hashlib.sha256(f"k_max={self.k_max};d_max={self.d_max};".encode())
        for array, dtype in ((self.node_offsets, np.int64), (self.parent, np.int64),
                             (self.rank, np.int64), (self.child_probs, np.float32)):
            hasher.update(str(array.shape).encode())
            hasher.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
        return hasher.hexdigest()

    def covers(self, setting: BeamSetting) -> bool:
        return setting.steps <= self.d_max and setting.topk <= self.k_max


def expansion_from_children(rows: list[Mapping[Path, np.ndarray]], k_max: int, d_max: int
                            ) -> DraftExpansion:
    """Pack per-position ``{path: child probabilities}`` (every parent listed) into arrays."""
    offsets, parents, ranks, probs = [0], [], [], []
    for row in rows:
        order = sorted(row, key=lambda path: (len(path), path))
        index = {path: i for i, path in enumerate(order)}
        if not order or order[0] != ():
            raise TreeoptError("every position's expansion needs its root")
        for path in order:
            if path and path[:-1] not in index:
                raise TreeoptError(f"expansion node {list(path)} has no recorded parent")
            parents.append(index[path[:-1]] if path else -1)
            ranks.append(path[-1] if path else -1)
            probs.append(np.asarray(row[path], dtype=np.float32)[:k_max])
        offsets.append(offsets[-1] + len(order))
    child_probs = np.stack(probs) if probs else np.zeros((0, k_max), dtype=np.float32)
    return DraftExpansion(k_max, d_max, np.asarray(offsets, dtype=np.int64),
                          np.asarray(parents, dtype=np.int32), np.asarray(ranks, dtype=np.int16),
                          child_probs)
