"""Acceptance and speedup curves, format ``treeopt.curve/1``, as JSON or CSV.

A curve has one row per budget ``num_tokens`` (tokens verified per step, the root
included: 1 = plain decoding): the ``expected_accept_length`` of the best tree of
that size (root's token included) and, once latencies are known, ``latency_s``
(seconds per decoding step), ``overhead`` (step latency / plain decoding's) and
``speedup`` (expected tokens per second over plain decoding's). Extra columns
(numbers or strings) are kept as they are.

JSON (the format is chosen by file extension, ``.json`` or ``.csv``):

.. code-block:: json

    {"format": "treeopt.curve/1", "provenance": {"profile": "vicuna-7b"},
     "rows": [{"num_tokens": 1, "expected_accept_length": 1.0},
              {"num_tokens": 2, "expected_accept_length": 1.5604}]}

CSV: a header row, then one row per budget; provenance rides in a first comment
line ``# treeopt.curve/1 {"profile": "vicuna-7b"}`` that spreadsheet tools skip
(``pandas.read_csv(path, comment="#")``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from treeopt.errors import TreeoptError

FORMAT = "treeopt.curve/1"
OPTIONAL_COLUMNS = ("latency_s", "overhead", "speedup")
REQUIRED_COLUMNS = ("num_tokens", "expected_accept_length")
SUFFIXES = (".json", ".csv")


@dataclass(frozen=True)
class CurveRow:
    """One budget's point of a curve."""

    num_tokens: int
    expected_accept_length: float
    latency_s: float | None = None
    overhead: float | None = None
    speedup: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict with the optional columns that are set, then the extras."""
        data: dict[str, Any] = {
            "num_tokens": self.num_tokens,
            "expected_accept_length": self.expected_accept_length,
        }
        for name in OPTIONAL_COLUMNS:
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        data.update(self.extra)
        return data


@dataclass(frozen=True)
class Curve:
    """Rows in increasing ``num_tokens`` and where they came from."""

    rows: list[CurveRow]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tokens(self) -> list[int]:
        return [row.num_tokens for row in self.rows]

    @property
    def expected_accept_length(self) -> list[float]:
        return [row.expected_accept_length for row in self.rows]


def _number(value: Any, name: str, where: str, positive: bool) -> float:
    if isinstance(value, bool):
        raise TreeoptError(f"{where}: {name} must be a number, not {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TreeoptError(f"{where}: {name} must be a number, not {value!r}") from None
    if not math.isfinite(number) or (positive and number <= 0):
        raise TreeoptError(f"{where}: {name} must be a finite positive number, not {value!r}")
    return number


def make_row(raw: CurveRow | Mapping[str, Any], where: str = "row") -> CurveRow:
    """Validate one row (a CurveRow or a mapping of column -> value)."""
    data = raw.as_dict() if isinstance(raw, CurveRow) else dict(raw)
    for name in REQUIRED_COLUMNS:
        if data.get(name) in (None, ""):
            raise TreeoptError(f"{where}: missing {name}")
    tokens = data.pop("num_tokens")
    try:
        num_tokens = int(tokens) if not isinstance(tokens, bool) else -1
        if isinstance(tokens, float) and tokens != num_tokens:
            num_tokens = -1
    except (TypeError, ValueError, OverflowError):
        num_tokens = -1
    if num_tokens < 1:
        raise TreeoptError(f"{where}: num_tokens must be an integer >= 1, not {tokens!r}")
    accept = _number(data.pop("expected_accept_length"), "expected_accept_length", where, True)
    if accept < 1:
        raise TreeoptError(
            f"{where}: expected_accept_length {accept} < 1 (it counts the base model's own token)"
        )
    optional = {}
    for name in OPTIONAL_COLUMNS:
        value = data.pop(name, None)
        optional[name] = None if value in (None, "") else _number(value, name, where, True)
    return CurveRow(num_tokens, accept, extra=data, **optional)


def make_curve(
    rows: Iterable[CurveRow | Mapping[str, Any]], provenance: Mapping[str, Any] | None = None
) -> Curve:
    """Validate rows: unique num_tokens in increasing order."""
    checked = [make_row(raw, f"row {index + 1}") for index, raw in enumerate(rows)]
    if not checked:
        raise TreeoptError("a curve needs at least one row")
    for before, after in itertools.pairwise(checked):
        if after.num_tokens <= before.num_tokens:
            raise TreeoptError(
                f"curve rows must have increasing num_tokens; {after.num_tokens} follows "
                f"{before.num_tokens}"
            )
    return Curve(checked, dict(provenance or {}))


