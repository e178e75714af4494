"""The one exception type treeopt raises for bad input.

The CLI turns a :class:`TreeoptError` into a one-line ``error: ...`` message and
exit code 2; anything else is a bug and keeps its traceback.
"""


class TreeoptError(ValueError):
    """Bad input: a malformed tree, profile, latency file, option or model."""


class TreeError(TreeoptError):
    """A set of paths that is not a valid Medusa tree."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its class name if it has none), for one-line errors."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
