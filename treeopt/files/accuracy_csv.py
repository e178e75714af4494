"""Published cumulative top-k head accuracies as a CSV (e.g. Medusa's ``assets/medusa_acc.csv``).

Columns ``model, head, top1 .. topK``: one row per model and (1-based) head, each
cell the share of positions where the true token is among the head's top k.
"""

from __future__ import annotations

import os

from treeopt.errors import TreeoptError
from treeopt.files.csvdoc import EXTRA_CELLS, parse_csv, quoted
from treeopt.files.jsondoc import read_text


def read_accuracy_csv(path: str | os.PathLike[str], model: str) -> tuple[str, list[list[float]]]:
    """``(model name in the CSV, rows)`` of cumulative top-k accuracies for ``model``.

    ``model`` matches a model exactly or as a unique prefix (``vicuna-7b`` matches
    ``vicuna-7b-v1.3``). ``rows[h]`` is head h + 1's ``[top1, ..., topK]``; heads
    are 1..H without gaps. One-line TreeoptError naming the file otherwise.
    """
    columns, records = parse_csv(read_text(path, "CSV").splitlines(keepends=True), str(path))
    top_columns = [c for c in columns if c.startswith("top") and c[3:].isdigit()]
    if "model" not in columns or "head" not in columns or not top_columns:
        raise TreeoptError(f"{path}: needs columns model, head, top1..topK; has {quoted(columns)}")
    ragged = [index for index, record in enumerate(records, start=2) if EXTRA_CELLS in record]
    if ragged:
        raise TreeoptError(f"{path}: line {ragged[0]} has more cells than the header")
    top_columns.sort(key=lambda c: int(c[3:]))
    if [int(c[3:]) for c in top_columns] != list(range(1, len(top_columns) + 1)):
        raise TreeoptError(f"{path}: top-k columns must be top1..topK without gaps")
    names = list(dict.fromkeys(record["model"] or "" for record in records))
    matches = [name for name in names if name == model] or [
        name for name in names if name.startswith(model)
    ]
    if len(matches) != 1:
        raise TreeoptError(
            f"{path}: model {model!r} matches {len(matches)} models (has: {quoted(names)})"
        )
    chosen = [record for record in records if (record["model"] or "") == matches[0]]
    try:
        chosen.sort(key=lambda record: int(record["head"]))
        heads = [int(record["head"]) for record in chosen]
        rows = [[float(record[c]) for c in top_columns] for record in chosen]
    except (TypeError, ValueError):
        raise TreeoptError(f"{path}: head and top-k cells must be numbers") from None
    if heads != list(range(1, len(heads) + 1)):
        raise TreeoptError(f"{path}: model {matches[0]} has heads {heads}, not 1..{len(heads)}")
    return matches[0], rows
