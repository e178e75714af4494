"""The canonical Medusa tree: a set of rank paths below an implicit root.

A *path* is a tuple of 0-based ranks: ``path[d]`` is the rank, in Medusa head
``d + 1``'s distribution, of the candidate token at depth ``d + 1``. The root (the
base model's own next token) is implicit and is not a path. ``(0, 2)`` is head 1's
top token followed by head 2's third.

A tree of ``n`` paths verifies ``n + 1`` tokens per step (the root included): that
is its *budget*, ``Tree.num_tokens``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from treeopt.core.checks import is_integer
from treeopt.errors import TreeError

if TYPE_CHECKING:  # networkx is only imported when a graph view is asked for
    import networkx as nx

Path = tuple[int, ...]
ROOT: Path = ()
# A rank indexes a head's vocabulary-sized distribution: no tokenizer reaches 2**20
# (about a million) tokens, so a larger rank is a corrupt file, not a candidate.
MAX_RANK = 2**20 - 1


def canonical_key(path: Path) -> tuple[int, Path]:
    """Sort key of the canonical order: by depth, then lexicographically by ranks."""
    return (len(path), path)


def format_path(path: Sequence[object]) -> str:
    """A path as users write it in JSON: ``[0, 2]``."""
    return "[" + ", ".join(str(r) if isinstance(r, int) else repr(r) for r in path) + "]"


def _coerce_path(raw: object) -> Path:
    """Turn one raw path (list or tuple of ints) into a tuple, or raise TreeError."""
    if not isinstance(raw, (list, tuple)):
        raise TreeError(f"path {raw!r:.80} is not a list of ranks")
    if len(raw) == 0:
        raise TreeError("empty path [] (the root is implicit; list only its descendants)")
    if set(map(type, raw)) == {int} and min(raw) >= 0 and max(raw) <= MAX_RANK:
        return tuple(raw)  # the common case, checked at C speed
    for rank in raw:
        # bool is an int subclass, but True as a rank is a typo, not a rank.
        if not is_integer(rank):
            raise TreeError(f"rank {rank!r:.40} in path {format_path(raw):.80} is not an integer")
        if rank < 0:
            raise TreeError(f"rank {rank} in path {format_path(raw):.80} is negative")
        if rank > MAX_RANK:
            raise TreeError(f"a rank of {int(rank).bit_length()} bits in path "
                            f"{format_path(raw):.80} is larger than any vocabulary "
                            f"(at most {MAX_RANK})")
    return tuple(raw)


@dataclass(frozen=True)
class Tree:
    """An immutable, validated Medusa tree in canonical order.

    Build one with :meth:`Tree.from_paths`, which validates; the constructor trusts
    its input and is for code that already holds canonical, valid paths.

    Attributes:
        paths: every non-root node's rank path, sorted by ``(len, path)``.
        num_heads: Medusa heads the tree is for (bounds the depth).
    """

    paths: tuple[Path, ...]
    num_heads: int

    # ----------------------------------------------------------- construction
    @classmethod
    def from_paths(
        cls,
        paths: Iterable[Sequence[int]],
        num_heads: int | None = None,
        top_k: int | Sequence[int] | None = None,
        allow_empty: bool = False,
    ) -> Tree:
        """Validate ``paths`` and return them as a canonical tree.

        Raises :class:`TreeError` naming the first offending path when a path is
        malformed (not a list, empty, non-integer or negative rank), duplicated,
        missing its parent, deeper than ``num_heads``, or has a rank ``>= top_k``
        (``top_k`` may be one bound or one per depth). ``num_heads`` defaults to the
        tree's depth. An empty tree is an error unless ``allow_empty`` (the runtime's
        plain autoregressive decoding uses one).
        """
        coerced = [_coerce_path(raw) for raw in paths]
        if not coerced and not allow_empty:
            raise TreeError("tree has no paths (a tree needs at least one node below the root)")
        duplicates = [path for path, count in Counter(coerced).items() if count > 1]
        if duplicates:
            first = min(duplicates, key=canonical_key)
            raise TreeError(f"duplicate path {format_path(first)}")
        ordered = tuple(sorted(coerced, key=canonical_key))
        present = set(ordered)
        for path in ordered:
            if len(path) > 1 and path[:-1] not in present:
                raise TreeError(
                    f"path {format_path(path)} has no parent {format_path(path[:-1])}"
                )
        depth = len(ordered[-1]) if ordered else 0
        if num_heads is None:
            num_heads = depth
        if not is_integer(num_heads) or num_heads < 0:
            raise TreeError(f"num_heads {num_heads!r} is not a non-negative integer")
        for path in ordered:
            if len(path) > num_heads:
                raise TreeError(
                    f"path {format_path(path)} has depth {len(path)} > num_heads {num_heads}"
                )
        if top_k is not None:
            check_top_k(ordered, top_k)
        return cls(ordered, num_heads)

    @classmethod
    def empty(cls, num_heads: int = 0) -> Tree:
        """The root-only tree: plain autoregressive decoding, one token per step."""
        return cls((), num_heads)

    @classmethod
    def chain(cls, length: int) -> Tree:
        """The chain of ``length`` rank-0 nodes: a draft model's ``gamma`` greedy guesses.

        ``Tree.chain(0)`` is the root-only tree.
        """
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise TreeError(f"chain length {length!r} is not a non-negative integer")
        return cls(tuple((0,) * depth for depth in range(1, length + 1)), length)

    # -------------------------------------------------------------- structure
    def __len__(self) -> int:
        """Number of nodes below the root (paths)."""
        return len(self.paths)

    def __iter__(self) -> Iterator[Path]:
        return iter(self.paths)

    def __contains__(self, path: object) -> bool:
        return path in self._path_set

    @cached_property
    def _path_set(self) -> frozenset[Path]:
        return frozenset(self.paths)

    @property
    def num_tokens(self) -> int:
        """Tokens verified per step, the root included: the tree's budget."""
        return len(self.paths) + 1

    @property
    def depth(self) -> int:
        """Length of the longest path (0 for the root-only tree)."""
        return len(self.paths[-1]) if self.paths else 0

    def width_per_depth(self) -> list[int]:
        """Number of nodes at depth 1, 2, ..., ``depth``."""
        widths = [0] * self.depth
        for path in self.paths:
            widths[len(path) - 1] += 1
        return widths

    def max_rank_per_depth(self) -> list[int]:
        """Largest rank used at depth 1, 2, ..., ``depth``."""
        ranks = [0] * self.depth
        for path in self.paths:
            ranks[len(path) - 1] = max(ranks[len(path) - 1], path[-1])
        return ranks

    def children(self, path: Path = ROOT) -> list[Path]:
        """Children of ``path`` (``()`` for the root) in rank order."""
        return [p for p in self.paths if len(p) == len(path) + 1 and p[:-1] == path]

    def leaves(self) -> list[Path]:
        """Nodes with no children, in canonical order."""
        parents = {path[:-1] for path in self.paths}
        return [path for path in self.paths if path not in parents]

    def index(self, path: Path) -> int:
        """Position of ``path`` in canonical order, counting the root as 0."""
        if path == ROOT:
            return 0
        return self.paths.index(path) + 1

    def to_networkx(self) -> nx.DiGraph:
        """A directed graph rooted at ``()``; edges point from parent to child.

        Node attributes: ``depth`` and ``rank`` (``None`` for the root).
        """
        import networkx as nx

        graph = nx.DiGraph()
        graph.add_node(ROOT, depth=0, rank=None)
        for path in self.paths:
            graph.add_node(path, depth=len(path), rank=path[-1])
            graph.add_edge(path[:-1], path)
        return graph

    def as_lists(self) -> list[list[int]]:
        """Paths as lists of ints, the shape every runtime's format starts from."""
        return [list(path) for path in self.paths]

    def summary(self) -> dict[str, object]:
        """Nodes, tokens, depth, per-depth width and max rank, as a plain dict."""
        return {
            "nodes": len(self),
            "tokens_per_step": self.num_tokens,
            "num_heads": self.num_heads,
            "depth": self.depth,
            "width_per_depth": self.width_per_depth(),
            "max_rank_per_depth": self.max_rank_per_depth(),
            "leaves": len(self.leaves()),
        }


def check_top_k(paths: Iterable[Path], top_k: int | Sequence[int]) -> None:
    """Raise TreeError if a rank at depth d is ``>= top_k`` (or ``>= top_k[d-1]``)."""
    for path in paths:
        for depth_index, rank in enumerate(path):
            bound = top_k if isinstance(top_k, int) else top_k[min(depth_index, len(top_k) - 1)]
            if rank >= bound:
                raise TreeError(
                    f"rank {rank} at depth {depth_index + 1} in path {format_path(path)} "
                    f">= top_k {bound}"
                )
