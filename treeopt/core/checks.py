"""The integer check every layer shares: an int (numpy's too), never a bool, at least a minimum.

``True`` is an ``int`` subclass in Python, but a ``True`` where a count belongs is a
typo, so it is refused everywhere the same way.
"""

from __future__ import annotations

import numbers

from treeopt.errors import ParameterError, TreeoptError


def is_integer(value: object) -> bool:
    """True for an int or numpy integer, False for a bool or anything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer_requirement(minimum: int) -> str:
    """How a message states the bound: ``a positive integer``, ``an integer >= 2``, ..."""
    if minimum == 1:
        return "a positive integer"
    if minimum == 0:
        return "a non-negative integer"
    return f"an integer >= {minimum}"


def check_int(value: object, name: str, minimum: int = 1, note: str = "",
              error: type[TreeoptError] = ParameterError) -> int:
    """``value`` as an int if it is an integer (not a bool) >= ``minimum``.

    Otherwise raises ``error`` naming ``name``: ``"{name} must be a positive integer,
    not 0"`` (``note`` goes in parentheses after the bound). With the default
    :class:`~treeopt.errors.ParameterError` the CLI shows its own flag for ``name``.
    """
    if is_integer(value) and value >= minimum:  # type: ignore[operator]
        return int(value)  # type: ignore[call-overload]
    reason = f"must be {integer_requirement(minimum)}{f' ({note})' if note else ''}, not {value!r}"
    if error is ParameterError:
        raise ParameterError(name, reason)
    raise error(f"{name} {reason}")
