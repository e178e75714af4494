"""The writing layer (treeopt.core.atomic) and every writing verb under faults.

Disk full and read-only folders are real when a small tmpfs can be mounted here
(root), else skipped; the same failures are also faked in-process (os.replace,
mkstemp raising) so every machine runs them. The kill tests run a real process.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from click.testing import CliRunner

from treeopt.cli import app
from treeopt.core import atomic
from treeopt.core.atomic import atomic_path, atomic_write_text, output_set, remove_output
from treeopt.errors import TreeoptError

REPO = Path(__file__).resolve().parents[1]
COMMAND = typer.main.get_command(app)  # built once: typer's runner rebuilds it per call
runner = CliRunner()
TMPFS_BYTES = 64 * 1024
LATENCY = {"format": "treeopt.latency/1", "source": "measured", "device": "cpu",
           "dtype": "float32", "arch": "tiny", "created": "2025-01-01T00:00:00Z",
           "measurements": [{"batch": 1, "context": 128, "num_tokens": n,
                             "latency_s": 0.01 + n * 1e-4} for n in (1, 2, 4, 8)]}
ACCURACY_CSV = "model,head,top1,top2\nm,1,0.5,0.6\nm,2,0.3,0.4\n"


def hidden(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def invoke(args: list[str]):
    return runner.invoke(COMMAND, [str(arg) for arg in args])


def assert_one_line(result, fragment: str) -> None:
    """Exit 2 and one ``error:`` line, the last; no traceback.

    A write fails after the inputs proved good, so what a verb said about them (tune's
    latency source) may come first; bad inputs themselves are one line alone (test_fuzz).
    """
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and fragment in errors[0], lines
    assert "Traceback" not in result.output


# ------------------------------------------------------------------ unit guarantees
def test_symlinks_are_written_through(tmp_path: Path) -> None:
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "made.json")
    atomic_write_text(dangling, "made")
    assert dangling.is_symlink() and (tmp_path / "made.json").read_text() == "made"
    result = invoke(["build", "-b", "8", "-o", link, "--curve", tmp_path / "c.json"])
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and json.loads(target.read_text())["format"] == "treeopt.tree/1"
    assert hidden(tmp_path) == []


def _null_device(folder: Path) -> Path:
    device = folder / "null"
    try:
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot make a device node here: {exc}")
    return device


def test_devices_are_written_into_not_replaced(tmp_path: Path) -> None:
    device = _null_device(tmp_path)
    result = invoke(["export", "mc_sim_7b_63", "--to", "medusa", "-o", device])
    assert result.exit_code == 0, result.output
    result = invoke(["build", "-b", "8", "-o", device, "--curve", tmp_path / "c.csv"])
    assert result.exit_code == 0, result.output
    assert stat.S_ISCHR(device.stat().st_mode)
    assert hidden(tmp_path) == []


def test_fifos_are_written_into(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    atomic_write_text(fifo, "through the pipe\n")
    assert reader.communicate(timeout=10)[0] == b"through the pipe\n"
    assert stat.S_ISFIFO(fifo.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_modes_follow_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_path(tmp_path / "b.npz") as tmp:
            tmp.write_bytes(b"x")
        result = invoke(["build", "-b", "8", "-o", tmp_path / "t.json",
                         "--curve", tmp_path / "c.csv"])
        assert result.exit_code == 0
    finally:
        os.umask(old)
    for name in ("a.json", "b.npz", "t.json", "c.csv"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


def test_an_output_set_is_all_or_nothing(tmp_path: Path) -> None:
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text("old first")
    with pytest.raises(RuntimeError), output_set():
        atomic_write_text(first, "new first")
        assert first.read_text() == "old first"  # staged, not yet in place
        raise RuntimeError("the second output failed")
    assert first.read_text() == "old first" and not second.exists()
    with output_set():
        atomic_write_text(first, "new first")
        atomic_write_text(second, "new second")
        remove_output(tmp_path / "absent.json")
    assert first.read_text() == "new first" and second.read_text() == "new second"
    assert hidden(tmp_path) == []


def test_a_failed_commit_undoes_the_files_already_moved(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text("old first")
    real_replace = os.replace
    calls = []

    def replace_fails_second(source: str, target: str) -> None:
        calls.append(target)
        if Path(target) == second:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(atomic.os, "replace", replace_fails_second)
    with pytest.raises(TreeoptError, match=r"cannot write .*second.json: No space left"), \
            output_set():
        atomic_write_text(first, "new first")
        atomic_write_text(second, "new second")
    monkeypatch.undo()
    assert first.read_text() == "old first" and not second.exists()
    assert hidden(tmp_path) == []


def test_stale_temps_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.json.{dead.pid}.abcd1234.json"
    live = tmp_path / f".out.json.{os.getppid()}.abcd1234.json"  # a live process's
    other = tmp_path / f".other.json.{dead.pid}.abcd1234.json"  # another file's
    backup = tmp_path / f".out.json.{dead.pid}.0badcafe.bak"  # an output set's undo link
    for path in (stale, live, other, backup):
        path.write_text("half")
    atomic_write_text(tmp_path / "out.json", "{}")
    assert not stale.exists() and not backup.exists() and live.exists() and other.exists()


# ------------------------------------------------------------------ writing verbs
def _verbs(out: Path, inputs: Path) -> dict[str, list[object]]:
    """Every verb that writes without a model, writing into ``out``; inputs read from ``inputs``."""
    return {
        "build": ["build", "-b", "16", "-o", out / "tree.json", "--curve", out / "curve.csv"],
        "export": ["export", "mc_sim_7b_63", "--to", "trtllm", "-o", out / "choices.json"],
        "import": ["import", inputs / "choices.txt", "--from", "medusa", "-o", out / "tree.json"],
        "import-profile": ["import-profile", inputs / "acc.csv", "--model", "m",
                           "-o", out / "profile.json"],
        "overhead": ["overhead", "--predict", "--arch", "llama-7b", "--gpu", "h100-sxm",
                     "--batch", "1", "--context", "128", "--sizes", "1,2,4",
                     "-o", out / "lat.json"],
        "render-svg": ["render", "vicuna_7b_stage1", "-o", out / "tree.svg"],
        "render-png": ["render", "vicuna_7b_stage1", "-o", out / "tree.png"],
        "render-dot": ["render", "mc_sim_7b_63", "-o", out / "tree.dot"],
        "render-curve": ["render", "--curve", inputs / "curve.csv", "-o", out / "curve.png"],
        "roofline": ["roofline", "--arch", "llama-7b", "--batch", "1", "--candidates", "1,16",
                     "--plot", out / "roofline.png", "--json"],
        "simulate": ["simulate", "--batch", "1,4", "--context", "1024", "--candidates", "1,2,4",
                     "--plot", out / "figures", "--json"],
        "tune": ["tune", "--latency", inputs / "lat.json", "-o", out / "tree.json",
                 "--curve", out / "curve.csv", "--plot", out / "tune.png"],
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "choices.txt").write_text("[[0], [1], [0, 0]]")
    (folder / "acc.csv").write_text(ACCURACY_CSV)
    (folder / "lat.json").write_text(json.dumps(LATENCY))
    (folder / "curve.csv").write_text(
        "# treeopt.curve/1 {}\nnum_tokens,expected_accept_length\n1,1.0\n2,1.5\n4,1.9\n")
    return folder


def _mount(folder: Path, options: str) -> bool:
    folder.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True)
    return done.returncode == 0


@contextlib.contextmanager
def tmpfs(folder: Path, size: int = TMPFS_BYTES) -> Iterator[Path]:
    """A ``size``-byte tmpfs at ``folder``; skips the test where mounting is not allowed."""
    if os.geteuid() != 0 or not _mount(folder, f"size={size}"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path, leave: int = 0) -> None:
    """Fill the tmpfs at ``folder`` up to ``leave`` free bytes (completely when 0)."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            stats = os.statvfs(folder)
            if leave and stats.f_bavail * stats.f_frsize <= leave + 4096:
                break
            os.write(fd, b"\0" * (4096 if stats.f_bavail > 1 else 1))
    except OSError:
        pass  # full
    finally:
        os.close(fd)


def _state(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() if path.is_file() else b"dir"
            for path in sorted(folder.rglob("*"))}


VERB_NAMES = list(_verbs(Path("o"), Path("i")))


def every_verb_refuses(folder: Path, inputs: Path, reason: str) -> None:
    """Each writing verb into ``folder`` fails in one line giving ``reason``; nothing changes."""
    before = _state(folder)
    failures = []
    for name, args in _verbs(folder, inputs).items():
        result = invoke(args)
        try:
            assert_one_line(result, str(folder))
            assert reason in result.stderr
        except AssertionError as exc:
            failures.append(f"{name}: {exc}")
        if _state(folder) != before:
            failures.append(f"{name}: left {sorted(set(_state(folder)) - set(before))}")
    assert not failures, "\n".join(failures)


def test_disk_full_is_one_line_for_every_writing_verb(tmp_path: Path, inputs: Path) -> None:
    with tmpfs(tmp_path / "disk") as disk:
        _fill(disk)
        every_verb_refuses(disk, inputs, "No space left on device")


def test_nearly_full_disk_writes_completely_or_not_at_all(tmp_path: Path, inputs: Path) -> None:
    with tmpfs(tmp_path / "disk") as disk:
        _fill(disk, leave=6 * 1024)
        for name, args in _verbs(disk, inputs).items():
            before = _state(disk)
            result = invoke(args)
            if result.exit_code == 0:
                continue  # it fitted; other tests check what success writes
            assert_one_line(result, "No space left on device")
            assert _state(disk) == before, name


def test_read_only_folder_is_one_line_and_keeps_old_outputs(tmp_path: Path,
                                                           inputs: Path) -> None:
    with tmpfs(tmp_path / "ro") as folder:
        for name in ("tree.json", "curve.csv", "choices.json", "profile.json", "lat.json"):
            (folder / name).write_text("previous output\n")
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        every_verb_refuses(folder, inputs, "Read-only file system")


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("verb", VERB_NAMES)
def test_faked_failures_are_one_line_naming_the_file(verb: str, error: int, tmp_path: Path,
                                                     inputs: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every machine: the system refusing the temp file (EACCES, EROFS) or the rename (ENOSPC)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "tree.json").write_text("previous")

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(error, os.strerror(error))

    if error == errno.ENOSPC:
        monkeypatch.setattr(atomic.os, "replace", refuse)
    else:
        monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
    result = invoke(_verbs(out, inputs)[verb])
    monkeypatch.undo()
    assert_one_line(result, f"{out}")
    assert os.strerror(error) in result.stderr
    assert _state(out) == {"tree.json": b"previous"}


def test_tune_leaves_no_curve_when_the_tree_cannot_be_written(tmp_path: Path, inputs: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    real_replace = os.replace

    def tree_fails(source: str, target: str) -> None:
        if str(target).endswith("tree.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(atomic.os, "replace", tree_fails)
    result = invoke(["tune", "--latency", inputs / "lat.json", "-o", tmp_path / "tree.json",
                     "--curve", tmp_path / "curve.csv"])
    monkeypatch.undo()
    assert_one_line(result, "tree.json: No space left on device")
    assert sorted(path.name for path in tmp_path.iterdir()) == []


# ------------------------------------------------------------------ kill tests
KILL_SCRIPT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from treeopt.core import atomic

    ready = Path(sys.argv[1])
    real_fsync = os.fsync

    def fsync_then_wait(fd):  # the temp file exists and is being written: signal now
        real_fsync(fd)
        ready.write_text("writing")
        time.sleep(60)

    atomic.os.fsync = fsync_then_wait
    sys.argv = ["treeopt"] + sys.argv[2:]
    from treeopt.cli.app import main
    main()
""")


def _start_writer(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    out = tmp_path / "out"
    out.mkdir()
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(ready), "build", "-b", "64",
         "--curve", str(out / "curve.csv"), "-o", str(out / "tree.json")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the writer never started writing"
        time.sleep(0.05)
    assert hidden(out), "a temp file should exist while writing"
    return process, out, ready


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, -signal.SIGTERM),
                                                   (signal.SIGINT, 130)])
def test_a_killed_writer_leaves_no_temp_files(tmp_path: Path, signum: int,
                                              exit_code: int) -> None:
    process, out, _ = _start_writer(tmp_path)
    process.send_signal(signum)
    assert process.wait(timeout=60) == exit_code
    assert sorted(path.name for path in out.iterdir()) == []  # no temp, no half output set


def test_after_sigkill_the_next_run_removes_the_stale_temp(tmp_path: Path) -> None:
    """SIGKILL cannot be caught: its temp file stays until the next write of that output."""
    process, out, _ = _start_writer(tmp_path)
    process.kill()
    process.wait(timeout=60)
    assert hidden(out)  # documented: a stale .NAME.PID.XXXXXXXX.SUFFIX may remain
    result = invoke(["build", "-b", "64", "--curve", out / "curve.csv", "-o", out / "tree.json"])
    assert result.exit_code == 0, result.output
    assert hidden(out) == [] and sorted(p.name for p in out.iterdir()) == ["curve.csv",
                                                                           "tree.json"]



def test_one_output_named_twice_is_refused(tmp_path: Path) -> None:
    result = invoke(["build", "-b", "8", "-o", tmp_path / "x.csv", "--curve", tmp_path / "x.csv"])
    assert_one_line(result, "twice")
    assert list(tmp_path.iterdir()) == []


def test_dev_stdout_is_written_into_the_pipe_behind_it() -> None:
    """``-o /dev/stdout`` follows the link to this process's pipe and writes into it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "treeopt", "export", "vicuna_7b_stage1",
                           "--to", "medusa", "-o", "/dev/stdout"],
                          capture_output=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"[[0], [1],")
    assert Path("/dev/stdout").is_symlink() or not Path("/dev/stdout").exists()
