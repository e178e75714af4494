"""The documentation runs: every snippet of README.md and docs/*.md that can run on CPU does.

Fenced blocks, per page in document order, in one temporary folder per page:

- ``bash`` / ``sh`` / ``shell``: run by bash with ``-e -o pipefail``;
- ``console``: each ``$ `` line is run (in one shell, so ``$?`` works); the lines shown
  after it must each appear in its output (stdout and stderr), and a command shown with
  no output must exit 0;
- ``python``: run by python; a block with ``>>>`` prompts runs as a doctest.

``../shared/`` becomes the absolute shared folder (the test is skipped without it), and
``treeopt`` / ``python`` are this interpreter with this checkout first on the path.
A block preceded by ``<!-- not-run: reason -->`` is not run (and counted);
``<!-- run-if: dot -->`` runs it only where that program is installed. The set-up block
of README is what CI runs: it is checked against ``.ci/run``. A page saying
``<!-- docs-test: after PAGE -->`` starts in a copy of PAGE's finished folder.
A fence with no language that holds commands fails the test: mark it or make it run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PAGES = ["README.md", *sorted(str(path.relative_to(ROOT)) for path in (ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "shell"}
RUN_LANGUAGES = SHELL_LANGUAGES | {"console", "python"}
COMMAND_LOOKING = re.compile(r"^\s*(\$ )?(treeopt|python|pip|bash)\s")
MARKER = re.compile(r"^<!--\s*(not-run|run-if|docs-test):\s*(.*?)\s*-->$")
BLOCK_TIMEOUT_S = 300
SEPARATOR = "@@docs-test-rc@@"


@dataclass
class Block:
    """One fenced block of a page: its language, text, first line and marker."""

    page: str
    line: int
    language: str
    text: str
    marker: tuple[str, str] | None = None  # ("not-run", reason) or ("run-if", program)
    section: str | None = None


@dataclass
class PageRun:
    """What running one page's blocks gave: failures, counts, the folder and the time."""

    folder: Path
    failures: list[str] = field(default_factory=list)
    ran: int = 0
    not_run: int = 0
    seconds: float = 0.0


def parse_blocks(page: str) -> list[Block]:
    """Every fenced block of ``page`` with the marker comment right before it, if any."""
    lines = (ROOT / page).read_text().splitlines()
    blocks: list[Block] = []
    section = None
    previous = ""
    index = 0
    while index < len(lines):
        stripped = lines[index].strip()
        opened = re.match(r"<!-- section:([\w-]+) -->", stripped)
        if opened:
            section = opened.group(1)
        elif stripped.startswith("<!-- /section:"):
            section = None
        if stripped.startswith("```"):
            indent = len(lines[index]) - len(lines[index].lstrip())
            language = stripped[3:].strip().split(" ")[0].lower()
            end = index + 1
            while end < len(lines) and not lines[end].strip().startswith("```"):
                end += 1
            text = "\n".join(line[indent:] for line in lines[index + 1:end]) + "\n"
            found = MARKER.match(previous)
            marker = (found.group(1), found.group(2)) if found and found.group(1) != "docs-test" \
                else None
            blocks.append(Block(page, index + 1, language, text, marker, section))
            index = end + 1
            previous = ""
            continue
        if stripped:
            previous = stripped
        index += 1
    return blocks


def page_dependency(page: str) -> str | None:
    """The page whose finished folder ``page`` starts from (its docs-test marker), if any."""
    found = re.search(r"<!--\s*docs-test:\s*after\s+(\S+)\s*-->", (ROOT / page).read_text())
    if found is None:
        return None
    return str(((ROOT / page).parent / found.group(1)).resolve().relative_to(ROOT))


def with_real_paths(text: str) -> str:
    return re.sub(r"\.\./shared\b", str(SHARED), text)


def environment(bin_dir: Path, cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        "TREEOPT_CACHE_DIR": str(cache),
        "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", "TQDM_DISABLE": "1",
        "TRANSFORMERS_VERBOSITY": "error", "COLUMNS": "100",
    })
    return env


def make_bin(folder: Path) -> Path:
    """``treeopt`` and ``python`` commands that run this interpreter on this checkout."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, command in (("treeopt", f'exec "{sys.executable}" -m treeopt "$@"'),
                          ("python", f'exec "{sys.executable}" "$@"')):
        path = folder / name
        path.write_text(f"#!/usr/bin/env bash\n{command}\n")
        path.chmod(0o755)
    return folder


def run(command: list[str], folder: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run ``command`` in ``folder``: its exit status and its stdout and stderr, interleaved."""
    try:
        done = subprocess.run(command, cwd=folder, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {BLOCK_TIMEOUT_S} s"
    return done.returncode, done.stdout


def console_steps(text: str) -> list[tuple[str, list[str]]]:
    """(command, lines expected in its output) for each ``$ `` line of a console block."""
    steps: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps and line.strip():
            steps[-1][1].append(line.rstrip())
    return steps


def run_console(block: Block, folder: Path, env: dict[str, str]) -> str | None:
    steps = console_steps(with_real_paths(block.text))
    script = "".join(f'{command}\n__rc=$?; echo "{SEPARATOR} $__rc"; (exit $__rc)\n'
                     for command, _ in steps)
    code, output = run(["bash", "-c", script], folder, env)
    pieces = output.split(SEPARATOR)
    for (command, expected), piece, rest in zip(steps, pieces, pieces[1:], strict=False):
        status = int(rest.split("\n", 1)[0].split()[0])
        got = {line.rstrip() for line in piece.splitlines()}
        missing = [line for line in expected if line not in got]
        if missing or (not expected and status != 0):
            return f"$ {command}\n(exit {status}) expected {missing or 'exit 0'}; got:\n{piece}"
    return None if len(pieces) == len(steps) + 1 else f"stopped early (exit {code}):\n{output}"


def run_block(block: Block, folder: Path, env: dict[str, str]) -> str | None:
    """Run one block in ``folder``; None when it did what the page says, else why not."""
    text = with_real_paths(block.text)
    if block.language == "console":
        return run_console(block, folder, env)
    if block.language in SHELL_LANGUAGES:
        code, output = run(["bash", "-e", "-o", "pipefail", "-c", text], folder, env)
    elif ">>>" in text:
        (folder / "_doctest.txt").write_text(text)
        code, output = run([sys.executable, "-m", "doctest", "_doctest.txt"], folder, env)
    else:
        (folder / "_snippet.py").write_text(text)
        code, output = run([sys.executable, "_snippet.py"], folder, env)
    return None if code == 0 else f"exit {code}:\n{output[-3000:]}"


def should_run(block: Block) -> bool:
    if block.language not in RUN_LANGUAGES or block.section == "setup":
        return False
    if block.marker is None:
        return True
    kind, value = block.marker
    return kind == "run-if" and shutil.which(value) is not None


def run_page(page: str, base: Path, env: dict[str, str],
             finished: dict[str, Future[PageRun]]) -> PageRun:
    """Run ``page``'s runnable blocks in order in a folder of its own."""
    folder = base / page.replace("/", "_")
    dependency = page_dependency(page)
    if dependency:
        shutil.copytree(finished[dependency].result().folder, folder, symlinks=True)
    else:
        folder.mkdir(parents=True)
        # Snippets may read the repository's own data, named from its root.
        (folder / "tests").mkdir()
        (folder / "tests" / "data").symlink_to(ROOT / "tests" / "data")
    result = PageRun(folder)
    start = time.perf_counter()
    for block in parse_blocks(page):
        if block.language not in RUN_LANGUAGES or block.section == "setup":
            continue
        if not should_run(block):
            result.not_run += 1
            continue
        result.ran += 1
        problem = run_block(block, folder, env)
        if problem:
            result.failures.append(f"{page}:{block.line} ({block.language}): {problem}")
    result.seconds = time.perf_counter() - start
    return result


@pytest.fixture(scope="module")
def page_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PageRun]:
    """Every page run, two at a time (pages after their dependency)."""
    if not SHARED.is_dir():
        pytest.skip("needs ../shared (models/stories260K, data/)")
    base = tmp_path_factory.mktemp("docs")
    env = environment(make_bin(base / "bin"), base / "cache")
    ordered = sorted(PAGES, key=lambda page: page_dependency(page) is not None)
    futures: dict[str, Future[PageRun]] = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for page in ordered:
            futures[page] = pool.submit(run_page, page, base, env, futures)
        return {page: future.result() for page, future in futures.items()}


@pytest.mark.parametrize("page", PAGES)
def test_page_snippets_run(page: str, page_runs: dict[str, PageRun]) -> None:
    result = page_runs[page]
    assert not result.failures, "\n\n".join(result.failures)


def test_every_runnable_looking_block_is_run_or_marked() -> None:
    unmarked = []
    counts = {"run": 0, "not-run": 0, "run-if": 0}
    for page in PAGES:
        for block in parse_blocks(page):
            if block.language in RUN_LANGUAGES and block.section != "setup":
                counts[block.marker[0] if block.marker else "run"] += 1
                if block.marker and not block.marker[1]:
                    unmarked.append(f"{page}:{block.line}: a marker needs a reason")
            elif block.language == "" and any(COMMAND_LOOKING.match(line)
                                              for line in block.text.splitlines()):
                unmarked.append(f"{page}:{block.line}: commands in a fence with no language "
                                "(fence it as bash and make it run, or as text)")
    assert not unmarked, "\n".join(unmarked)
    # The docs demonstrate more than they skip.
    assert counts["run"] > counts["not-run"], counts


def test_the_setup_block_is_what_ci_runs() -> None:
    setup = [block for block in parse_blocks("README.md") if block.section == "setup"]
    assert len(setup) == 1 and setup[0].language == "bash"
    commands = setup[0].text.splitlines()
    assert commands[1] == "python -m pytest -q"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "python -m pytest -q" in ci
    assert "torch==2.13.0" in commands[0] and any("torch==2.13.0" in line for line in ci)
    assert '-e ".[dev]"' in commands[0] and any('-e ".[dev]"' in line for line in ci)


def test_readme_is_a_front_door_naming_every_verb() -> None:
    import typer.main

    from treeopt.cli import app

    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    table = [line for line in readme.splitlines() if line.startswith("| `")]
    listed = {name for line in table for name in re.findall(r"`([a-z-]+)`", line.split("|")[1])}
    verbs = set(typer.main.get_command(app).commands)
    assert verbs <= listed, f"verbs missing from README's table: {sorted(verbs - listed)}"


def test_relative_links_and_pictures_exist() -> None:
    broken = []
    for page in PAGES:
        prose = [block for block in re.split(r"^\s*```.*$", (ROOT / page).read_text(),
                                             flags=re.MULTILINE)[::2]]
        text = re.sub(r"`[^`]*`", "", "".join(prose))
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            resolved = ((ROOT / page).parent / target).resolve()
            if not resolved.exists():
                broken.append(f"{page}: {target}")
    assert not broken, "\n".join(broken)
