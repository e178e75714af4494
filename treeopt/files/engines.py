"""Trees in the formats other runtimes load, in and out.

- ``medusa``: FasterDecoding/Medusa ``medusa_choices``, a Python literal list of
  lists (tuples accepted on import, ``name = [...]`` too).
- ``eagle``: EAGLE's ``tree_choices``, the same literal shape.
- ``trtllm``: TensorRT-LLM ``medusa_choices`` / ``eagle_choices``, a JSON list of
  lists, checked against the engine's limits (see :func:`check_trtllm`).
- ``vllm``: vLLM ``speculative_token_tree``, a string of tuples in breadth-first
  order, e.g. ``"[(0,), (1,), (0, 0)]"``; vLLM drafts the tree level by level and
  is only correct when every node at a level has the same number of children
  (see :func:`check_vllm`).

Every import goes through :meth:`Tree.from_paths`, so a missing parent or a
duplicate is refused rather than silently re-rooted.
"""

from __future__ import annotations

import ast
import json
import re
from collections import defaultdict

from treeopt.core.tree import Tree, format_path
from treeopt.errors import TreeoptError

FORMATS = ("medusa", "trtllm", "vllm", "eagle")

# TensorRT-LLM limits: max_draft_len defaults to 63 paths; each level's candidates
# come from a top-k of at most 16 (ranks 0..15); the tree is at most 16 deep.
TRTLLM_DEFAULT_MAX_DRAFT_LEN = 63
TRTLLM_MAX_TOP_K = 16
TRTLLM_MAX_DEPTH = 16


def check_trtllm(tree: Tree, max_draft_len: int = TRTLLM_DEFAULT_MAX_DRAFT_LEN) -> None:
    """Raise TreeoptError if TensorRT-LLM would reject or mis-read ``tree``.

    TRT-LLM maps a node whose parent is missing onto the root without a word;
    :class:`Tree` already guarantees every prefix is present.
    """
    if len(tree) > max_draft_len:
        raise TreeoptError(
            f"TensorRT-LLM takes at most max_draft_len={max_draft_len} nodes; this tree has "
            f"{len(tree)} (build with --budget {max_draft_len + 1} or raise --max-draft-len)"
        )
    if tree.depth > TRTLLM_MAX_DEPTH:
        raise TreeoptError(
            f"TensorRT-LLM trees are at most {TRTLLM_MAX_DEPTH} deep; this is {tree.depth}"
        )
    for path in tree.paths:
        if path[-1] >= TRTLLM_MAX_TOP_K:
            raise TreeoptError(
                f"path {format_path(path)}: TensorRT-LLM takes ranks below {TRTLLM_MAX_TOP_K} "
                f"at each level (top-k <= {TRTLLM_MAX_TOP_K})"
            )


def nonuniform_levels(tree: Tree) -> list[tuple[int, dict[int, int]]]:
    """Levels whose nodes do not all have the same number of children.

    Returns ``(depth, {children_count: nodes_with_that_count})`` for each such
    depth (0 = the root's level, which is trivially uniform). Leaves count as
    nodes with 0 children, except on the deepest level.
    """
    children: dict[tuple[int, ...], int] = defaultdict(int)
    for path in tree.paths:
        children[path[:-1]] += 1
    problems = []
    for depth in range(1, tree.depth):
        counts: dict[int, int] = defaultdict(int)
        for path in tree.paths:
            if len(path) == depth:
                counts[children[path]] += 1
        if len(counts) > 1:
            problems.append((depth, dict(sorted(counts.items()))))
    return problems


def check_vllm(tree: Tree) -> None:
    """Raise TreeoptError unless every node at each level has the same number of children.

    vLLM's tree drafting proposes the same number of children under every node of
    a level; a tree that breaks this is verified as a different tree than the one
    exported.
    """
    problems = nonuniform_levels(tree)
    if problems:
        depth, counts = problems[0]
        spread = ", ".join(f"{nodes} with {kids}" for kids, nodes in counts.items())
        raise TreeoptError(
            f"vLLM needs every node at a level to have the same number of children; "
            f"depth {depth} has nodes {spread} children "
            f"(build one with: treeopt build --engine vllm)"
        )


def export_text(
    tree: Tree,
    target: str,
    max_draft_len: int = TRTLLM_DEFAULT_MAX_DRAFT_LEN,
    allow_nonuniform: bool = False,
) -> str:
    """``tree`` in ``target``'s format (one of :data:`FORMATS`), as text.

    ``allow_nonuniform`` exports a tree vLLM cannot draft faithfully anyway (the
    caller is expected to warn); by default such a tree is refused.
    """
    if target in ("medusa", "eagle"):
        return "[" + ", ".join(format_path(path) for path in tree.paths) + "]"
    if target == "trtllm":
        check_trtllm(tree, max_draft_len)
        return json.dumps(tree.as_lists())
    if target == "vllm":
        if not allow_nonuniform:
            check_vllm(tree)
        return "[" + ", ".join(_tuple_literal(path) for path in tree.paths) + "]"
    raise TreeoptError(f"unknown export target {target!r} (choose from {', '.join(FORMATS)})")


def _tuple_literal(path: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(rank) for rank in path) + ("," if len(path) == 1 else "") + ")"


_ASSIGNMENT = re.compile(r"^\s*[A-Za-z_][A-Za-z_0-9]*\s*(:[^=]*)?=\s*", re.DOTALL)


def parse_paths(text: str) -> list[list[int]]:
    """Parse a list of paths written as a Python/JSON literal (lists or tuples).

    Accepts ``name = [...]`` and a vLLM-style quoted string of tuples.
    """
    body = _ASSIGNMENT.sub("", text.strip(), count=1).strip()
    try:
        value = ast.literal_eval(body)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise TreeoptError(
            "not a list of paths: expected a literal like [[0], [0, 0], [1]]"
        ) from None
    if isinstance(value, str):  # vLLM's config holds the tree as a string
        return parse_paths(value)
    if not isinstance(value, (list, tuple)):
        raise TreeoptError(f"not a list of paths: got a {type(value).__name__}")
    paths = []
    for raw in value:
        if not isinstance(raw, (list, tuple)):
            raise TreeoptError(f"path {raw!r} is not a list or tuple of ranks")
        paths.append(list(raw))
    return paths


def import_text(text: str, source: str, num_heads: int | None = None) -> Tree:
    """Read a tree written in ``source``'s format (one of :data:`FORMATS`)."""
    if source not in FORMATS:
        raise TreeoptError(f"unknown import format {source!r} (choose from {', '.join(FORMATS)})")
    tree = Tree.from_paths(parse_paths(text), num_heads=num_heads)
    if source == "trtllm":
        check_trtllm(tree, max_draft_len=max(len(tree), TRTLLM_DEFAULT_MAX_DRAFT_LEN))
    return tree
