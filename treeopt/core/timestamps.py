"""Document timestamps: one format for every file treeopt writes."""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> str:
    """The current time as every document's ``created`` field writes it (UTC, seconds)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
