"""Every benchmark honours --help (prints it, writes nothing) and writes only where told."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
# common.py is what the benchmarks share, not a benchmark.
SCRIPTS = sorted(path.name for path in BENCHMARKS.glob("*.py") if path.name != "common.py")
# Benchmarks that must be told where to write (-o / --out) and start no work without it.
CHEAP_REQUIRED_OUTPUT = ("build_speed.py", "cpu_loop.py", "gpu_session.py", "knobs_vs_grid.py",
                         "profile_scaling.py", "roofline_vs_measured.py", "seed_chart.py")


def snapshot(*folders: Path) -> dict[Path, tuple[int, int]]:
    """(mtime, size) of every file under ``folders``: what a run could have written."""
    return {path: (path.stat().st_mtime_ns, path.stat().st_size)
            for folder in folders for path in folder.rglob("*") if path.is_file()}


def run_all(commands: list[list[str]], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Run the commands side by side (each imports torch: that is the slow part)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    children = [subprocess.Popen(command, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE) for command in commands]
    done = []
    for command, child in zip(commands, children, strict=True):
        stdout, stderr = child.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(command, child.returncode, stdout, stderr))
    return done


def test_every_benchmark_prints_help_and_writes_nothing(tmp_path):
    assert "gpu_session.py" in SCRIPTS and "seed_chart.py" in SCRIPTS
    before = snapshot(BENCHMARKS, ROOT / "docs")
    commands = [[sys.executable, str(BENCHMARKS / name), "--help"] for name in SCRIPTS]
    commands.append(["bash", str(BENCHMARKS / "gpu_session.sh"), "--help"])
    for command, done in zip(commands, run_all(commands, tmp_path), strict=True):
        assert done.returncode == 0, (command, done.stderr[-1000:])
        assert "usage" in done.stdout.lower() or "--dry-run" in done.stdout, command
    assert snapshot(BENCHMARKS, ROOT / "docs") == before
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", CHEAP_REQUIRED_OUTPUT)
def test_benchmarks_need_to_be_told_where_to_write(tmp_path, name):
    before = snapshot(BENCHMARKS)
    done = run_all([[sys.executable, str(BENCHMARKS / name)]], tmp_path)[0]
    assert done.returncode == 2 and "required" in done.stderr
    assert snapshot(BENCHMARKS) == before and list(tmp_path.iterdir()) == []


def test_gpu_session_sh_needs_an_output_folder(tmp_path):
    done = run_all([["bash", str(BENCHMARKS / "gpu_session.sh"), "--dry-run"]], tmp_path)[0]
    assert done.returncode == 2 and "--out" in done.stderr
    assert list(tmp_path.iterdir()) == []
