"""Trees and profiles that ship with treeopt, found by name.

In a source checkout they live in the repository's ``trees/`` folder; an installed
wheel carries the same folder as ``treeopt/_trees``.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from treeopt.errors import TreeoptError

TREE_FOLDERS = ("reference", "tuned")
PROFILE_FOLDER = "profiles"
DEFAULT_PROFILE = "vicuna-7b"


@cache
def trees_root() -> Path:
    """The folder holding ``reference/``, ``tuned/`` and ``profiles/``."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "_trees", package.parent / "trees"):
        if candidate.is_dir():
            return candidate
    raise TreeoptError("treeopt's shipped trees folder is missing: reinstall treeopt")


def _names(folders: tuple[str, ...]) -> dict[str, Path]:
    names: dict[str, Path] = {}
    for folder in folders:
        for path in sorted((trees_root() / folder).glob("*.json")):
            names.setdefault(path.stem, path)
    return names


def names_a_file(name_or_path: str | os.PathLike[str]) -> bool:
    """Whether a tree or profile argument means a file rather than a shipped name.

    It does if the file exists, ends in ``.json`` or contains a path separator, so
    a missing file is reported as missing, not as an unknown shipped name.
    """
    text = os.fspath(name_or_path)
    return Path(text).exists() or text.endswith(".json") or os.sep in text


def shipped_tree_names() -> list[str]:
    """Names accepted wherever a tree argument is (``mc_sim_7b_63``, ...)."""
    return sorted(_names(TREE_FOLDERS))


def shipped_tree_path(name: str) -> Path:
    """The file of shipped tree ``name``; a one-line error listing names if unknown."""
    names = _names(TREE_FOLDERS)
    if name not in names:
        raise TreeoptError(
            f"no tree file or shipped tree named {name!r} (shipped: {', '.join(sorted(names))})"
        )
    return names[name]


def shipped_profile_names() -> list[str]:
    """Names accepted wherever a profile argument is (``vicuna-7b``, ...)."""
    return sorted(_names((PROFILE_FOLDER,)))


def shipped_profile_path(name: str) -> Path:
    """The file of shipped profile ``name``; a one-line error listing names if unknown."""
    names = _names((PROFILE_FOLDER,))
    if name not in names:
        raise TreeoptError(
            f"no profile file or shipped profile named {name!r} "
            f"(shipped: {', '.join(sorted(names)) or 'none'})"
        )
    return names[name]
