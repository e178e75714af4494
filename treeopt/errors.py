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


class ParameterError(TreeoptError):
    """A bad value of one named parameter of a library function.

    The message names the parameter (``max_depth must be ...``); the CLI shows its
    own option for it (``--max-depth must be ...``), so the library never needs to
    know the flags.
    """

    def __init__(self, parameter: str, reason: str) -> None:
        super().__init__(f"{parameter} {reason}")
        self.parameter = parameter
        self.reason = reason


def not_downloaded(what: str, name: str, reason: str) -> TreeoptError:
    """The one wording of "this hub id is not here": ``reason`` says why it cannot be fetched."""
    return TreeoptError(f"{what} {name!r} {reason}: download it with `hf download {name}` "
                        f"where there is network, or pass a local folder")
