"""What Ctrl-C prints: what the interrupted verb saved, and the command that resumes it.

:func:`interrupted_message` reads the command line (the verb and its options) and
looks at the files the verb keeps for a resume, so it says only what is really on
disk.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path


def option_value(argv: Sequence[str], *names: str) -> str | None:
    """The value of the last of ``names`` in ``argv`` (``-o X``, ``--output X`` or
    ``--output=X``); None when absent."""
    value = None
    for index, arg in enumerate(argv):
        for name in names:
            if arg == name and index + 1 < len(argv):
                value = argv[index + 1]
            elif name.startswith("--") and arg.startswith(name + "="):
                value = arg.split("=", 1)[1]
    return value


def command_line(argv: Sequence[str], add: str | None = None) -> str:
    """``treeopt ARGS`` quoted for a shell, with ``add`` appended when not already there."""
    args = list(argv)
    if add is not None and add not in args:
        args.append(add)
    return "treeopt " + shlex.join(args)


def _is_study(argv: Sequence[str]) -> bool:
    return bool(argv) and (argv[0] == "study" or (argv[0] == "tune" and "--measure" in argv))


def interrupted_message(argv: Sequence[str], stage: str | None = None) -> str:
    """One line for an interrupted ``treeopt`` command line ``argv`` (verb first).

    ``stage``: autotune's stage that was running (its verb knows it).
    """
    verb = argv[0] if argv else ""
    output = option_value(argv, "-o", "--output")
    if verb == "autotune" and output is not None:
        from treeopt.workflows.autotune_state import STATE_FILE

        where = f" in stage {stage}" if stage else ""
        if not (Path(output) / STATE_FILE).is_file():
            return f"interrupted{where}: nothing saved yet; rerun: {command_line(argv)}"
        return (f"interrupted{where}: finished stages are saved in {output} ({STATE_FILE}); "
                f"resume: {command_line(argv)}")
    if verb == "train-heads" and output is not None:
        from treeopt.model.train_heads import STATE_FILE as TRAIN_STATE

        if not (Path(output) / TRAIN_STATE).is_file():
            return f"interrupted before the first epoch finished: nothing saved; rerun: " \
                   f"{command_line(argv)}"
        return (f"interrupted: every finished epoch is saved in {output} ({TRAIN_STATE}); "
                f"resume: {command_line(argv, '--resume')}")
    if verb == "profile" and output is not None:
        from treeopt.model.profiling import partial_path

        partial = partial_path(output)
        if not partial.is_file():
            return f"interrupted: nothing saved yet; rerun: {command_line(argv)}"
        return (f"interrupted: the prompts profiled so far are saved in {partial}; resume: "
                f"{command_line(argv, '--resume')}")
    if _is_study(argv):
        storage = option_value(argv, "--storage")
        if storage is None:
            return ("interrupted: no trial was saved (no --storage); give --storage "
                    "sqlite:///study.db to keep trials across runs")
        return (f"interrupted: finished trials are saved in {storage}; resume: "
                f"{command_line(argv)}")
    return "interrupted: nothing was saved"


__all__ = ["command_line", "interrupted_message", "option_value"]
