"""Curve files (``treeopt.curve/1``): JSON or CSV by extension.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path as FilePath
from typing import Any

from treeopt.core.atomic import atomic_write_text
from treeopt.core.curve import FORMAT, REQUIRED_COLUMNS, SUFFIXES, Curve, CurveRow, make_curve
from treeopt.errors import TreeoptError


def curve_suffix(path: str | os.PathLike[str]) -> str:
    suffix = FilePath(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise TreeoptError(
            f"curve file {path} must end in .json or .csv, not {suffix or 'nothing'}"
        )
    return suffix


def curve_to_text(curve: Curve, suffix: str) -> str:
    """The curve as ``.json`` or ``.csv`` text."""
    dict_rows = [row.as_dict() for row in curve.rows]
    if suffix == ".json":
        body = ",\n".join("    " + json.dumps(row) for row in dict_rows)
        head = json.dumps({"format": FORMAT, "provenance": curve.provenance}, indent=2)[:-2]
        return f"{head},\n  \"rows\": [\n{body}\n  ]\n}}\n"
    columns = list(REQUIRED_COLUMNS)
    for row in dict_rows:
        columns += [name for name in row if name not in columns]
    buffer = io.StringIO()
    buffer.write(f"# {FORMAT} {json.dumps(curve.provenance)}\n")
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(dict_rows)
    return buffer.getvalue()


def write_curve(
    path: str | os.PathLike[str],
    rows: Iterable[CurveRow | Mapping[str, Any]] | Curve,
    provenance: Mapping[str, Any] | None = None,
) -> Curve:
    """Validate and write a curve atomically, as JSON or CSV by ``path``'s extension."""
    suffix = curve_suffix(path)
    if isinstance(rows, Curve):
        curve = make_curve(rows.rows, provenance if provenance is not None else rows.provenance)
    else:
        curve = make_curve(rows, provenance)
    atomic_write_text(path, curve_to_text(curve, suffix))
    return curve


def read_curve(path: str | os.PathLike[str]) -> Curve:
    """Read and validate a ``.json`` or ``.csv`` curve; one-line TreeoptError otherwise."""
    if FilePath(path).is_dir():
        raise TreeoptError(f"curve file {path} is a folder")
    suffix = curve_suffix(path)
    if suffix == ".json":
        from treeopt.files.jsondoc import read_json

        data = read_json(path, "curve")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise TreeoptError(f"{path}: not a {FORMAT} JSON object (\"format\" missing or wrong)")
        if not isinstance(data.get("rows"), list) or not all(
            isinstance(row, dict) for row in data["rows"]
        ):
            raise TreeoptError(f"{path}: \"rows\" must be a list of objects")
        if not isinstance(data.get("provenance") or {}, dict):
            raise TreeoptError(f"{path}: \"provenance\" must be an object")
        return _prefixed(path, lambda: make_curve(data["rows"], data.get("provenance") or {}))
    from treeopt.files.csvdoc import EXTRA_CELLS, parse_csv
    from treeopt.files.jsondoc import parse_json, read_text

    text = read_text(path, "curve")
    lines = text.splitlines()
    provenance: dict[str, Any] = {}
    provenance_line = bool(lines) and lines[0].startswith("#")
    if provenance_line:
        header = lines.pop(0)[1:].strip()
        if header.startswith(FORMAT):
            provenance = parse_json(header[len(FORMAT):].strip() or "{}",
                                    f"{path}: provenance comment")
            if not isinstance(provenance, dict):
                raise TreeoptError(f"{path}: provenance comment is not a JSON object")
    _, records = parse_csv(lines, str(path), first_line=1 + bool(provenance_line))
    rows = [{key: _csv_value(value) for key, value in row.items() if key != EXTRA_CELLS}
            for row in records]
    return _prefixed(path, lambda: make_curve(rows, provenance))


def _csv_value(value: str | None) -> Any:
    """CSV cells are text: numbers come back as numbers, the rest as strings."""
    if value is None or value == "":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def _prefixed(path: str | os.PathLike[str], make: Any) -> Curve:
    try:
        return make()
    except TreeoptError as exc:
        raise TreeoptError(f"{path}: {exc}") from None
