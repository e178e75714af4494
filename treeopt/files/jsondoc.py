"""The one reading layer for treeopt's files: bounded, strict, one line per failure.

Each JSON format has a ``"format": "treeopt.<kind>/<version>"`` tag and a JSON
Schema shipped in ``treeopt/files/schemas/`` (the contract). Reading guarantees:

- a file larger than :data:`MAX_FILE_BYTES` or nested deeper than
  :data:`MAX_JSON_DEPTH` is refused before it is parsed (no ``RecursionError``,
  no memory blow-up);
- ``NaN``, ``Infinity``, numbers too large for a float and integers beyond 64
  bits are refused: every number a treeopt document holds is finite;
- text is UTF-8, a leading byte-order mark (as spreadsheet programs write) is
  accepted;
- every failure is one :class:`TreeoptError` line naming the file.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable
from functools import cache
from importlib import resources
from itertools import accumulate
from typing import Any, TypeVar

from treeopt.errors import TreeoptError

T = TypeVar("T")

# The largest file any reader takes: a measured profile of a large calibration set
# (tens of thousands of joint entries) is a few MB; 256 MiB leaves ample room while
# refusing /dev/zero-like inputs before they exhaust memory.
MAX_FILE_BYTES = 256 * 2**20
# treeopt documents nest at most 6 deep (profile groups' joint prefixes) and HF
# configs a few more; 64 is far above both and far below Python's recursion limit,
# which the parser and the schema validator would otherwise hit as a traceback.
MAX_JSON_DEPTH = 64
# Integers are counts, ranks and sizes: beyond 64 bits they are corrupt, and numpy
# could not hold them anyway.
MAX_JSON_INT = 2**63 - 1

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
# A number literal with a run of 19 digits or more (2**63 has 19), outside strings.
_LONG_NUMBER = re.compile(r"-?[0-9][0-9.eE+-]{18,}")


class _BadNumber(ValueError):
    """Raised inside the JSON parser's number hooks."""


def read_text(path: str | os.PathLike[str], what: str) -> str:
    """The UTF-8 text of file ``path`` (BOM dropped); one-line TreeoptError otherwise.

    ``what`` names the file's role in messages (``"tree"``, ``"curve"``, ...).
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise TreeoptError(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise TreeoptError(f"{what} file {path} is a directory") from None
    except OSError as exc:
        raise TreeoptError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise TreeoptError(
            f"{what} file {path} is larger than {MAX_FILE_BYTES // 2**20} MiB: not a {what} file"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TreeoptError(
            f"cannot read {what} file {path}: not UTF-8 text (byte {exc.start})"
        ) from None


def _depth(text_without_strings: str) -> int:
    brackets = _NOT_BRACKET.sub("", text_without_strings)
    return max(accumulate(1 if char in "[{" else -1 for char in brackets), default=0)


def _check_ints(text_without_strings: str) -> None:
    """Refuse integer literals beyond 64 bits (a regex, not a parser hook: hooks cost 1 us each)."""
    for match in _LONG_NUMBER.finditer(text_without_strings):
        literal = match.group()
        if not literal.lstrip("-").isdigit():
            continue  # a float: parse_float bounds it
        if len(literal) > len(str(MAX_JSON_INT)) + 1 or abs(int(literal)) > MAX_JSON_INT:
            raise _BadNumber(f"integer {literal[:40]}{'...' if len(literal) > 40 else ''} "
                             "is too large")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumber(f"number {text[:40]} is too large for a float")
    return value


def _no_constant(text: str) -> Any:
    raise _BadNumber(f"{text} is not a number (JSON numbers are finite)")


def parse_json(text: str, where: str, strict_numbers: bool = True) -> Any:
    """Parse JSON ``text`` under the bounds above; errors are one line starting ``where``.

    ``strict_numbers=False`` keeps only the size and depth bounds, for files whose
    numbers treeopt never reads (calibration prompts exported with ``NaN`` scores).
    """
    bare = _JSON_STRING.sub("", text)
    depth = _depth(bare)
    if depth > MAX_JSON_DEPTH:
        raise TreeoptError(f"{where}: JSON nested {depth} deep (at most {MAX_JSON_DEPTH})")
    try:
        if not strict_numbers:
            return json.loads(text)
        _check_ints(bare)
        return json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise TreeoptError(
            f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except _BadNumber as exc:
        raise TreeoptError(f"{where}: {exc}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise TreeoptError(f"{where} is not valid JSON: {type(exc).__name__}") from None


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    """Parse a JSON file (see the module's bounds); one-line TreeoptErrors naming it."""
    return parse_json(read_text(path, what), str(path))


def read_document(path: str | os.PathLike[str], what: str, parse: Callable[[Any], T]) -> T:
    """``parse`` the JSON file ``path``; every one-line error names the file.

    :func:`read_json`'s own errors name it already; ``parse``'s get ``"{path}: "``.
    """
    data = read_json(path, what)
    try:
        return parse(data)
    except TreeoptError as exc:
        raise TreeoptError(f"{path}: {exc}") from None


def numeric_array(value: Any, dtype: Any, where: str, ndim: int) -> Any:
    """``value`` (parsed JSON) as an ``ndim``-dimensional numpy array of ``dtype``.

    Ragged rows, nested lists where numbers belong and values the dtype cannot hold
    are one-line TreeoptErrors naming ``where`` (numpy would raise a ValueError
    about "inhomogeneous shape", or build an object array).
    """
    import numpy as np

    try:
        array = np.asarray(value, dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        array = None
    if array is None or array.ndim != ndim:
        shape = "a list" if ndim == 1 else f"{ndim}-dimensional rows of equal length"
        raise TreeoptError(f"{where} must be {shape} of numbers (ragged or nested rows)")
    return array


@cache
def shipped_schema(filename: str) -> dict[str, Any]:
    """A JSON Schema shipped in ``treeopt/files/schemas/``."""
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
        raise TreeoptError(f"{what}: format {tag!r:.80} is not {fmt!r}")
    return data


def check_schema(data: Any, schema: dict[str, Any], what: str,
                 checked: Iterable[str] = ()) -> None:
    """Raise a one-line TreeoptError naming the most relevant schema violation.

    ``checked`` names top-level arrays the caller has already validated in Python
    at least as strictly as the schema does (its tests hold the two to agree):
    the schema sees only their first item, so validating a 2000-node chain costs
    what a 1-node tree does (JSON Schema validation walks every item in Python).
    """
    import jsonschema  # only when a file is read: keeps start-up light

    if isinstance(data, dict):
        data = {key: value[:1] if key in checked and isinstance(value, list) else value
                for key, value in data.items()}
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(data)
    )
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "top level"
        message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
        raise TreeoptError(f"{what} invalid at {where}: {message}")
