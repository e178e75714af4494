"""The one exception type treeopt raises for bad input.

The CLI turns a :class:`TreeoptError` into a one-line ``error: ...`` message and
exit code 2; anything else is a bug and keeps its traceback.
"""


class TreeoptError(ValueError):
    """Bad input: a malformed tree, profile, latency file, option or model."""


class TreeError(TreeoptError):
    """A set of paths that is not a valid Medusa tree."""
