"""The CSV half of the reading layer: bounded, strict, one line per failure.

Both CSV readers (accuracy tables, curves) parse through :func:`parse_csv`, so a
hostile file fails the same way everywhere:

- the text comes from :func:`treeopt.files.jsondoc.read_text` (size bound, UTF-8,
  a spreadsheet's byte-order mark dropped);
- a line longer than :data:`MAX_CSV_LINE` characters (a file that is one giant
  line, a binary blob) is refused before the ``csv`` module sees it, and the
  ``csv`` module's own errors (a field over its limit, a NUL byte) are one line;
- cells beyond the header are kept under :data:`EXTRA_CELLS` so the caller can
  refuse ragged rows;
- messages quote at most :data:`QUOTED` characters of the file.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable

from treeopt.errors import TreeoptError

# treeopt's CSVs have a dozen short columns; a line this long is not one of them.
MAX_CSV_LINE = 64 * 1024
# DictReader's key for cells beyond the header (a name no real column has).
EXTRA_CELLS = "\0extra"
QUOTED = 200


def quoted(items: Iterable[str]) -> str:
    """``items`` comma-joined for a message, cut to :data:`QUOTED` characters."""
    text = ", ".join(map(str, items))
    return text if len(text) <= QUOTED else text[:QUOTED] + "..."


def parse_csv(lines: list[str], where: str,
              first_line: int = 1) -> tuple[list[str], list[dict[str, str]]]:
    """(header, records) of CSV ``lines``; one-line TreeoptError starting ``where``.

    ``first_line`` is the file's line number of ``lines[0]`` (for messages).
    """
    for number, line in enumerate(lines, start=first_line):
        if len(line) > MAX_CSV_LINE:
            raise TreeoptError(f"{where}: line {number} is {len(line)} characters long "
                               f"(at most {MAX_CSV_LINE}): not a CSV table")
    try:
        reader = csv.DictReader(lines, restkey=EXTRA_CELLS)
        records = list(reader)
        columns = [str(name) for name in reader.fieldnames or []]
    except csv.Error as exc:
        raise TreeoptError(f"{where}: not CSV: {exc}") from None
    return columns, records
