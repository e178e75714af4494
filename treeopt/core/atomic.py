"""The one writing layer: every output is written completely or not at all.

Guarantees of :func:`atomic_path` (and the writers built on it):

- A regular file (or a new name) is written to a hidden temp file beside it,
  ``.NAME.PID.XXXXXXXX.SUFFIX``, fsynced and renamed onto it: a reader never sees
  a half-written output and a failed write leaves the previous one untouched.
- A symlink is written *through*: its target is replaced, the link stays a link.
- A character device, FIFO or socket (``-o /dev/null``) is written into directly
  (opened for writing, never replaced): ``/dev/null`` stays a device.
- :func:`output_set` groups several outputs (a tree and its curve, a profile and
  its rank vectors): nothing of the set reaches its targets unless every file of
  it was written.
- The temp file is removed on every exit path: an exception, Ctrl-C, and
  SIGTERM/SIGHUP (a handler is installed only while temp files exist). SIGKILL
  cannot be caught: a stale ``.NAME.PID.XXXXXXXX.SUFFIX`` may stay, and the next
  write of ``NAME`` removes every such file whose writing process is gone.
- ``ENOSPC``, ``EROFS``, ``EACCES`` and every other ``OSError`` while writing are a
  one-line :class:`TreeoptError` naming the file; so is a library's own exception
  that carries a system error (safetensors' Rust ``I/O error: No space left on
  device (os error 28)``), see :func:`os_error_in`.
- New files get the mode the umask gives (``0o666 & ~umask``), like ``open()``,
  also when the writer replaced the temp file with one of its own (safetensors
  writes 0600 files).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from treeopt.errors import TreeoptError

# Signals that end a process by default and can be caught: cleaned up before dying.
CLEANUP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)

_live_temps: set[Path] = set()  # temp files this process has and has not yet renamed
_previous_handlers: dict[int, object] = {}
_pending: ContextVar[list[_Staged] | None] = ContextVar("treeopt_output_set", default=None)


# Rust's std::io::Error as libraries written in Rust print it (safetensors, tokenizers).
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _cannot_write(target: Path, exc: OSError) -> TreeoptError:
    return TreeoptError(f"cannot write {target}: {exc.strerror or exc}")


def os_error_in(exc: BaseException) -> OSError | None:
    """The system error behind ``exc``: itself if an OSError, else one a library put
    into its message as ``(os error N)``; None when there is none (a real bug)."""
    if isinstance(exc, OSError):
        return exc
    if not isinstance(exc, Exception):
        return None  # Ctrl-C and exits pass through
    match = _RUST_OS_ERROR.search(str(exc))
    if match is None:
        return None
    number = int(match.group(1))
    return OSError(number, os.strerror(number))


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
        raise _cannot_write(target, exc) from None
    return target


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (0o644 under 022)."""
    return 0o666 & ~_umask()


# ------------------------------------------------------------ signal cleanup
def _remove_live_temps() -> None:
    for tmp in list(_live_temps):
        with contextlib.suppress(OSError):
            tmp.unlink()
        _live_temps.discard(tmp)


def _on_signal(signum: int, frame: object) -> None:
    _remove_live_temps()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # die of the signal, as without the handler


def _register(tmp: Path) -> None:
    _live_temps.add(tmp)
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may install handlers; exceptions still clean up
    for signum in CLEANUP_SIGNALS:
        if signum not in _previous_handlers:
            previous = signal.getsignal(signum)
            if previous is not None:  # None: installed from C, leave it alone
                _previous_handlers[signum] = previous
                signal.signal(signum, _on_signal)


def _forget(tmp: Path) -> None:
    _live_temps.discard(tmp)
    if _live_temps or threading.current_thread() is not threading.main_thread():
        return
    for signum, previous in list(_previous_handlers.items()):
        if signal.getsignal(signum) is _on_signal:
            signal.signal(signum, previous)  # type: ignore[arg-type]
        del _previous_handlers[signum]


def _discard(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        tmp.unlink()
    _forget(tmp)


# -------------------------------------------------------------- temp files
def _temp_pattern(name: str, suffix: str) -> re.Pattern[str]:
    """Temp files (and an output set's ``.bak`` links) of ``name``; group 1 is the writer's pid."""
    return re.compile(
        rf"\.{re.escape(name)}\.(\d+)\.[a-z0-9_]{{8}}(?:{re.escape(suffix)}|\.bak)")


def _process_gone(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def remove_stale_temps(target: Path, suffix: str) -> None:
    """Remove ``target``'s temp files left by writers that were killed (SIGKILL)."""
    pattern = _temp_pattern(target.name, suffix)
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and _process_gone(int(match.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _is_special(path: Path) -> bool:
    """Whether ``path`` exists and is neither a regular file nor a folder (a device, FIFO)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _make_temp(target: Path, suffix: str, special: bool) -> Path:
    folder = Path(tempfile.gettempdir()) if special else target.parent
    if not special:
        remove_stale_temps(target, suffix)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=suffix,
                                    dir=folder)
    except OSError as exc:
        raise _cannot_write(target, exc) from None
    tmp = Path(name)
    _register(tmp)
    try:
        os.fchmod(fd, new_file_mode())  # mkstemp makes 0600; outputs follow the umask
    except OSError as exc:
        os.close(fd)
        _discard(tmp)
        raise _cannot_write(target, exc) from None
    os.close(fd)
    return tmp


@dataclass
class _Staged:
    """A written temp file waiting to reach its target (or a target to remove)."""

    target: Path
    tmp: Path | None  # None: remove target on commit
    special: bool = False


def _commit(item: _Staged) -> None:
    """Move one staged file onto its target; OSError is left to the caller."""
    if item.tmp is None:
        if item.target.exists() or item.target.is_symlink():
            item.target.unlink()
        return
    if item.special:
        with open(item.tmp, "rb") as source, open(item.target, "wb") as sink:
            shutil.copyfileobj(source, sink)
        _discard(item.tmp)
        return
    os.replace(item.tmp, item.target)
    _forget(item.tmp)


def _commit_all(staged: list[_Staged]) -> None:
    """Commit every staged file, or none: on a failure the committed ones are undone.

    Devices and FIFOs go last: what was sent into them cannot be taken back.
    """
    backups: list[tuple[Path, Path | None]] = []  # (target, hard link to its old content)
    try:
        for item in sorted(staged, key=lambda item: item.special):
            backup = None
            if not item.special and item.target.is_file():
                backup = item.target.with_name(
                    f".{item.target.name}.{os.getpid()}.{os.urandom(4).hex()}.bak")
                try:
                    os.link(item.target, backup)
                    _register(backup)
                except OSError:
                    backup = None  # no hard links here: no undo for this file
            _commit(item)
            backups.append((item.target, backup))
    except OSError as exc:
        for target, backup in reversed(backups):
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, target)
                    _forget(backup)
                else:
                    target.unlink()
        for item in staged:
            if item.tmp is not None:
                _discard(item.tmp)
        raise _cannot_write(item.target, exc) from None
    for _, backup in backups:
        if backup is not None:
            _discard(backup)


def _resolve(target: Path) -> Path:
    """The file a write of ``target`` lands in: a symlink's final target."""
    if target.is_symlink():
        return Path(os.path.realpath(target))
    return target


@contextlib.contextmanager
def output_set() -> Iterator[None]:
    """Group outputs: inside, atomic writes reach their targets only if the block succeeds.

    Every :func:`atomic_path` (and :func:`remove_output`) in the block is staged;
    at its end all are moved onto their targets together, and if the block
    raises, or one of the moves fails (the ones done are undone), none is.
    Nested sets join the outermost one.
    """
    if _pending.get() is not None:
        yield
        return
    staged: list[_Staged] = []
    token = _pending.set(staged)
    try:
        yield
        _pending.reset(token)
        token = None
        _commit_all(staged)
    finally:
        if token is not None:
            _pending.reset(token)
        for item in staged:
            if item.tmp is not None and item.tmp.exists():
                _discard(item.tmp)


def remove_output(path: str | os.PathLike[str]) -> None:
    """Remove an output file that is stale (at the end of the :func:`output_set`, if in one)."""
    target = Path(path)
    staged = _pending.get()
    if staged is not None:
        staged.append(_Staged(target, None))
        return
    try:
        _commit(_Staged(target, None))
    except OSError as exc:
        raise TreeoptError(f"cannot remove {target}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; it becomes ``path`` when the block succeeds.

    See the module's guarantees: on any exception or signal the temp file is
    removed and ``path`` is untouched; links are written through and devices
    into. ``suffix`` defaults to the target's own, for writers that pick a
    format by extension. A path that cannot be written (see
    :func:`check_output_path`, or the system refusing, disk full included) is a
    one-line TreeoptError naming it.
    """
    requested = check_output_path(path)
    special = _is_special(requested)  # stat follows links: /dev/stdout -> the pipe or tty
    target = requested if special else _resolve(requested)
    if target != requested:
        check_output_path(target)  # a dangling link into a missing folder
    tmp = _make_temp(target, suffix if suffix is not None else target.suffix, special)
    staged = _pending.get()
    try:
        try:
            yield tmp
            if not special:  # the writer may have replaced tmp with a file of its own mode
                os.chmod(tmp, new_file_mode())
        except Exception as exc:  # disk full, read-only, no permission, while writing
            system = os_error_in(exc)
            if system is None or isinstance(exc, TreeoptError):
                raise
            raise _cannot_write(requested, system) from None
        if staged is not None:
            if any(item.target == target for item in staged):
                raise TreeoptError(f"cannot write {requested} twice in one command")
            staged.append(_Staged(target, tmp, special))
            return
        try:
            _commit(_Staged(target, tmp, special))
        except OSError as exc:
            raise _cannot_write(requested, exc) from None
    finally:
        if staged is None or not any(item.tmp == tmp for item in staged):
            if tmp.exists():
                _discard(tmp)
            else:
                _forget(tmp)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`), fsynced."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically as UTF-8 (see :func:`atomic_path`)."""
    atomic_write_bytes(path, text.encode("utf-8"))
