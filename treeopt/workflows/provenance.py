"""The one provenance builder: what every written tree, curve and profile says about its origin.

A provenance is a flat JSON object: the facts a verb knows (profile, budget,
latency source, ...), then when it was made and by which treeopt. Facts that are
None are left out, so a document never claims an unknown value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from treeopt._version import __version__
from treeopt.core.timestamps import utc_now


def provenance(facts: Mapping[str, Any] | None = None, /, **more: Any) -> dict[str, Any]:
    """``facts`` and ``more`` in that order (None values dropped), then ``created`` and
    ``treeopt_version``.

    Guarantees every key given with a value other than None appears with that value.
    """
    merged = {**(facts or {}), **more}
    stamped = {key: value for key, value in merged.items() if value is not None}
    stamped["created"] = utc_now()
    stamped["treeopt_version"] = __version__
    return stamped
