"""The ``treeopt.tree/1`` JSON format: the one place trees are read and written.

.. code-block:: json

    {"format": "treeopt.tree/1", "num_heads": 5,
     "paths": [[0], [1], [0, 0]],
     "expected_accept_length": 2.31,
     "provenance": {"profile": "vicuna-7b", "budget": 4, "builder": "greedy"}}

``paths`` alone is what other runtimes need; ``expected_accept_length`` counts
the root's token; ``provenance`` is free-form. The JSON Schema ships as
``treeopt/schemas/tree.schema.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from treeopt.core.atomic import atomic_write_text
from treeopt.core.checks import check_int
from treeopt.core.tree import Tree
from treeopt.errors import TreeoptError
from treeopt.files.jsondoc import check_format, check_schema, read_document, shipped_schema

FORMAT = "treeopt.tree/1"


@dataclass(frozen=True)
class TreeDocument:
    """A tree together with what its file says about it."""

    tree: Tree
    expected_accept_length: float | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


def schema() -> dict[str, Any]:
    """The shipped JSON Schema of ``treeopt.tree/1``."""
    return shipped_schema("tree.schema.json")


def document_from_json(data: Any) -> TreeDocument:
    """Validate a parsed ``treeopt.tree/1`` object and return its document.

    Raises TreeoptError (TreeError for the paths) with a one-line message naming
    the first problem found.
    """
    check_format(data, FORMAT, "tree file")
    num_heads = data.get("num_heads")
    check_int(num_heads, "num_heads", error=TreeoptError)
    paths = data.get("paths")
    if not isinstance(paths, list):
        raise TreeoptError("\"paths\" must be a list of rank lists")
    tree = Tree.from_paths(paths, num_heads=num_heads)  # as strict as the schema's "paths"
    check_schema(data, schema(), "tree file", checked=("paths",))
    expected = data.get("expected_accept_length")
    if expected is not None and expected > tree.depth + 1:
        raise TreeoptError(
            f"expected_accept_length {expected} is more than a tree of depth {tree.depth} "
            f"can accept per step ({tree.depth + 1}, the root included)"
        )
    return TreeDocument(tree, None if expected is None else float(expected),
                        dict(data.get("provenance") or {}))


def document_to_json(document: TreeDocument) -> dict[str, Any]:
    """The ``treeopt.tree/1`` object for ``document`` (paths in canonical order)."""
    data: dict[str, Any] = {
        "format": FORMAT,
        "num_heads": document.tree.num_heads,
        "paths": document.tree.as_lists(),
    }
    if document.expected_accept_length is not None:
        data["expected_accept_length"] = round(document.expected_accept_length, 6)
    if document.provenance:
        data["provenance"] = document.provenance
    return data


def dumps(document: TreeDocument) -> str:
    """Serialize with one path per line: diffable, still compact."""
    data = document_to_json(document)
    paths = data.pop("paths")
    head = json.dumps(data, indent=2)[:-2]  # reopen the object to append "paths"
    body = ",\n".join("    " + json.dumps(path) for path in paths)
    return f"{head},\n  \"paths\": [\n{body}\n  ]\n}}\n"


def read_tree_document(path: str | os.PathLike[str]) -> TreeDocument:
    """Read and validate a ``treeopt.tree/1`` file; content errors name the file."""
    return read_document(path, "tree", document_from_json)


def write_tree(
    path: str | os.PathLike[str],
    tree: Tree,
    expected_accept_length: float | None = None,
    provenance: dict[str, Any] | None = None,
) -> None:
    """Write ``tree`` as ``treeopt.tree/1`` JSON, atomically."""
    if len(tree) == 0:
        raise TreeoptError("refusing to write an empty tree")
    atomic_write_text(path, dumps(TreeDocument(tree, expected_accept_length, provenance or {})))


def load_tree_document(name_or_path: str | os.PathLike[str]) -> TreeDocument:
    """Read a tree file, or a shipped tree by name (e.g. ``mc_sim_7b_63``)."""
    from treeopt.files.shipped import names_a_file, shipped_tree_path

    if names_a_file(name_or_path):
        return read_tree_document(name_or_path)

    return read_tree_document(shipped_tree_path(str(name_or_path)))


def load_tree(name_or_path: str | os.PathLike[str]) -> Tree:
    """The tree in a file, or a shipped tree by name (e.g. ``mc_sim_7b_63``)."""
    return load_tree_document(name_or_path).tree
