"""Latency files (``treeopt.latency/1``): JSON I/O and schema check.
"""

from __future__ import annotations

import json
import os
from functools import cache
from typing import Any

from treeopt.core.atomic import atomic_write_text
from treeopt.core.latency import FORMAT, LatencyTable, Setting
from treeopt.errors import TreeoptError
from treeopt.files.jsondoc import check_format, check_schema, read_json, shipped_schema


# ------------------------------------------------------------------ file I/O
@cache
def schema() -> dict[str, Any]:
    """The shipped JSON Schema of ``treeopt.latency/1``."""
    return shipped_schema("latency.schema.json")


def table_to_json(table: LatencyTable) -> dict[str, Any]:
    """The ``treeopt.latency/1`` object for ``table`` (rows sorted by setting)."""
    rows = []
    for setting in sorted(table.measurements):
        batch, context, num_tokens = setting
        seconds = table.measurements[setting]
        row: dict[str, Any] = {
            "batch": batch, "context": context, "num_tokens": num_tokens,
            "latency_s": None if seconds is None else float(seconds),
        }
        if setting in table.notes:
            row["note"] = table.notes[setting]
        if setting in table.spreads:
            row["spread"] = round(float(table.spreads[setting]), 6)
        rows.append(row)
    return {
        "format": FORMAT,
        "source": table.source,
        "device": table.device,
        "dtype": table.dtype,
        "arch": table.arch,
        "created": table.created,
        "versions": table.versions,
        "gpu": table.gpu,
        "method": table.method,
        "measurements": rows,
    }


def table_from_json(data: Any, where: str = "latency file") -> LatencyTable:
    """Validate a parsed ``treeopt.latency/1`` object; one-line TreeoptError on a problem."""
    check_format(data, FORMAT, where)
    check_schema(data, schema(), where)
    measurements: dict[Setting, float | None] = {}
    notes: dict[Setting, str] = {}
    spreads: dict[Setting, float] = {}
    for row in data["measurements"]:
        setting = (row["batch"], row["context"], row["num_tokens"])
        if setting in measurements:
            raise TreeoptError(
                f"{where}: batch {setting[0]}, context {setting[1]}, "
                f"num_tokens {setting[2]} appears twice"
            )
        measurements[setting] = row["latency_s"]
        if "note" in row:
            notes[setting] = row["note"]
        if "spread" in row:
            spreads[setting] = float(row["spread"])
    return LatencyTable(
        measurements=measurements,
        source=data["source"],
        device=data["device"],
        dtype=data["dtype"],
        arch=data["arch"],
        created=data["created"],
        versions=dict(data.get("versions") or {}),
        gpu=data.get("gpu"),
        method=dict(data.get("method") or {}),
        notes=notes,
        spreads=spreads,
    )


def write_latency(path: str | os.PathLike[str], table: LatencyTable) -> None:
    """Write ``table`` as ``treeopt.latency/1`` JSON, atomically."""
    if not table.measurements:
        raise TreeoptError("refusing to write a latency table with no measurements")
    atomic_write_text(path, json.dumps(table_to_json(table), indent=1) + "\n")


def load_latency(path: str | os.PathLike[str]) -> LatencyTable:
    """Read and validate a ``treeopt.latency/1`` file."""
    return table_from_json(read_json(path, "latency"), where=f"latency file {path}")


def prefer_measured(tables: list[tuple[str, LatencyTable]]) -> tuple[str, LatencyTable]:
    """The table ``tune`` uses among several: the first measured one, else the first given.

    A measurement on the real device beats a model of it; among equals, the
    user's order decides.
    """
    if not tables:
        raise TreeoptError("no latency file given")
    for name, table in tables:
        if table.source == "measured":
            return name, table
    return tables[0]
