"""Reading treeopt's versioned JSON documents (trees, profiles, latency tables).

Each format has a ``"format": "treeopt.<kind>/<version>"`` tag and a JSON Schema
shipped in ``treeopt/schemas/``; these helpers turn every way a file can be
wrong into a one-line TreeoptError.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from treeopt.errors import TreeoptError

T = TypeVar("T")


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    """Parse a JSON file, turning I/O and syntax errors into one-line TreeoptErrors."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TreeoptError(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise TreeoptError(f"{what} file {path} is a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TreeoptError(f"cannot read {what} file {path}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TreeoptError(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


def read_document(path: str | os.PathLike[str], what: str, parse: Callable[[Any], T]) -> T:
    """``parse`` the JSON file ``path``; every one-line error names the file.

    :func:`read_json`'s own errors name it already; ``parse``'s get ``"{path}: "``.
    """
    data = read_json(path, what)
    try:
        return parse(data)
    except TreeoptError as exc:
        raise TreeoptError(f"{path}: {exc}") from None


@cache
def shipped_schema(filename: str) -> dict[str, Any]:
    """A JSON Schema shipped in ``treeopt/schemas/``."""
    text = resources.files("treeopt.files").joinpath("schemas", filename).read_text("utf-8")
    return json.loads(text)


def check_format(data: Any, fmt: str, what: str) -> dict[str, Any]:
    """Return ``data`` if it is a JSON object tagged ``"format": fmt``; else raise.

    ``what`` names the document in messages, e.g. ``"tree file"``.
    """
    if not isinstance(data, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null",
                int: "a number", float: "a number"}.get(type(data), type(data).__name__)
        raise TreeoptError(f"{what} must hold a JSON object, not {kind}")
    tag = data.get("format")
    if tag is None:
        raise TreeoptError(f"{what}: missing \"format\": expected \"{fmt}\"")
    if tag != fmt:
        raise TreeoptError(f"{what}: format {tag!r} is not {fmt!r}")
    return data


def check_schema(data: Any, schema: dict[str, Any], what: str) -> None:
    """Raise a one-line TreeoptError naming the most relevant schema violation."""
    import jsonschema  # only when a file is read: keeps start-up light

    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(data)
    )
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "top level"
        raise TreeoptError(f"{what} invalid at {where}: {error.message}")


