"""Published cumulative top-k head accuracies as a CSV (e.g. Medusa's ``assets/medusa_acc.csv``).

Columns ``model, head, top1 .. topK``: one row per model and (1-based) head, each
cell the share of positions where the true token is among the head's top k.
"""

from __future__ import annotations

import csv
import os

from treeopt.errors import TreeoptError

# DictReader's key for cells beyond the header (a name no real column has).
EXTRA_CELLS = "\0extra"


def read_accuracy_csv(path: str | os.PathLike[str], model: str) -> tuple[str, list[list[float]]]:
    """``(model name in the CSV, rows)`` of cumulative top-k accuracies for ``model``.

    ``model`` matches a model exactly or as a unique prefix (``vicuna-7b`` matches
    ``vicuna-7b-v1.3``). ``rows[h]`` is head h + 1's ``[top1, ..., topK]``; heads
    are 1..H without gaps. One-line TreeoptError naming the file otherwise.
    """
    try:
        # utf-8-sig: spreadsheet programs start a UTF-8 CSV with a byte-order mark
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, restkey=EXTRA_CELLS)
            records = list(reader)
            columns = [str(name) for name in reader.fieldnames or []]
    except FileNotFoundError:
        raise TreeoptError(f"CSV file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TreeoptError(f"cannot read CSV file {path}: {exc}") from None
    top_columns = [c for c in columns if c.startswith("top") and c[3:].isdigit()]
    if "model" not in columns or "head" not in columns or not top_columns:
        raise TreeoptError(f"{path}: needs columns model, head, top1..topK; has {columns}")
    ragged = [index for index, record in enumerate(records, start=2) if EXTRA_CELLS in record]
    if ragged:
        raise TreeoptError(f"{path}: line {ragged[0]} has more cells than the header")
    top_columns.sort(key=lambda c: int(c[3:]))
    if [int(c[3:]) for c in top_columns] != list(range(1, len(top_columns) + 1)):
        raise TreeoptError(f"{path}: top-k columns must be top1..topK without gaps")
    names = list(dict.fromkeys(record["model"] for record in records))
    matches = [name for name in names if name == model] or [
        name for name in names if name.startswith(model)
    ]
    if len(matches) != 1:
        raise TreeoptError(
            f"{path}: model {model!r} matches {len(matches)} models (has: {', '.join(names)})"
        )
    chosen = [record for record in records if record["model"] == matches[0]]
    try:
        chosen.sort(key=lambda record: int(record["head"]))
        heads = [int(record["head"]) for record in chosen]
        rows = [[float(record[c]) for c in top_columns] for record in chosen]
    except (TypeError, ValueError):
        raise TreeoptError(f"{path}: head and top-k cells must be numbers") from None
    if heads != list(range(1, len(heads) + 1)):
        raise TreeoptError(f"{path}: model {matches[0]} has heads {heads}, not 1..{len(heads)}")
    return matches[0], rows
