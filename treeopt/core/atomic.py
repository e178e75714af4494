"""Atomic file writes: a reader never sees a half-written output file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from treeopt.errors import TreeoptError


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path if it can be an output file, else a one-line TreeoptError.

    Its folder must exist (it is not created: a typo should not make folders) and
    it must not be a folder itself. Verbs call this for every output before any
    work, so a bad second output never leaves the first one written.
    """
    text = os.fspath(path)
    target = Path(text)
    try:
        if not text or target.is_dir():
            raise TreeoptError(f"cannot write {text!r}: it is a folder, give a file name")
        folder = target.parent
        if not folder.is_dir():
            what = "is not a folder" if folder.exists() else "does not exist"
            raise TreeoptError(f"cannot write {target}: {folder} {what}")
    except OSError as exc:  # name too long, no permission to look
        raise TreeoptError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched, so a
    crash or Ctrl-C never leaves a truncated output behind. ``suffix`` defaults to
    the target's own, for writers that pick a format by extension. A path that
    cannot be written (see :func:`check_output_path`, or the system refusing) is
    a one-line TreeoptError.
    """
    target = check_output_path(path)
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=suffix if suffix is not None else target.suffix,
            dir=target.parent,
        )
    except OSError as exc:
        raise TreeoptError(f"cannot write {target}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp makes the file 0600; outputs should get the usual umask-based mode.
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)
    try:
        yield tmp
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise TreeoptError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file in the same folder + rename)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
