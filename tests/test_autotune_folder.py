"""Issue 25 items 1-3 and 11: autotune's output folder, through the CLI, on
../shared/models/stories260K with untrained heads and the smallest settings that run.

One finished run (module fixture, ~10 s) is copied for every rerun case.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from treeopt.cli import app

torch = pytest.importorskip("torch")

SHARED = Path(__file__).resolve().parents[2] / "shared"
STORIES = SHARED / "models" / "stories260K"
STORY_PROMPTS = Path(__file__).resolve().parent / "data" / "story_prompts.txt"
SMALL = ["--max-prompts", "6", "--max-new-tokens", "8", "--sizes", "1,2,3", "--top-k", "2",
         "--rounds", "1", "--device", "cpu"]

pytestmark = pytest.mark.skipif(not STORIES.is_dir(), reason="needs ../shared/models/stories260K")


def autotune(*args: str, cwd: Path | None = None, monkeypatch=None):
    if cwd is not None:
        monkeypatch.chdir(cwd)
    return CliRunner().invoke(app, ["autotune", *args])


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder with untrained heads for stories260K (``heads/``), and ``first/``: a run
    that failed in its profile stage and was then rerun, corrected, to the end."""
    from treeopt.model.loading import load_medusa, random_heads

    root = tmp_path_factory.mktemp("autotune-folder")
    loaded = load_medusa(str(STORIES), need_heads=False, quiet=True)
    random_heads(loaded.model, 2).save_pretrained(root / "heads")
    common = ["-m", str(STORIES), "--heads", str(root / "heads"), "-d", str(STORY_PROMPTS),
              "-q", "-o", str(root / "first")]
    # Item 2: no prompt fits a 600-token continuation in the model's 512 positions: the
    # profile stage fails after the state file was written ...
    failed = CliRunner().invoke(app, ["autotune", *common, *SMALL, "--max-new-tokens", "600"])
    assert failed.exit_code == 2 and "leave no prompt room" in failed.stderr, failed.output
    assert (root / "first" / "autotune.state.json").exists()
    # ... and does not block the corrected run in the same folder.
    result = CliRunner().invoke(app, ["autotune", *common, *SMALL])
    assert result.exit_code == 0, result.output
    return root


def copy_run(work: Path, tmp_path: Path) -> Path:
    shutil.copytree(work / "first", tmp_path / "run")
    shutil.copytree(work / "heads", tmp_path / "heads")
    return tmp_path / "run"


def stamps(folder: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}


def stage_lines(output: str) -> dict[str, str]:
    """stage -> "kept" or "ran", from the [i/n] lines."""
    lines = {}
    for line in output.splitlines():
        if line.startswith("[") and "] " in line:
            name, rest = line.split("] ", 1)[1].split(" ", 1)
            name = name.rstrip(":")
            if "finished earlier, kept" in rest:
                lines[name] = "kept"
            elif rest.startswith("done"):
                lines[name] = "ran"
    return lines


# ------------------------------------------------------------------ item 1
def test_a_folder_with_the_users_own_files_is_refused_before_any_stage(work, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("profile.json", "profile.json.ranks.npz", "report.md"):
        (mine / name).write_text("the user's own\n")
    (mine / "notes.txt").write_text("not a name autotune writes\n")
    result = autotune("-m", str(STORIES), "--heads", str(work / "heads"), "-d",
                      str(STORY_PROMPTS), *SMALL, "-o", str(mine))
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"error: {mine} holds profile.json, profile.json.ranks.npz, report.md, which autotune "
        "did not write and would overwrite: use another -o (a new or empty folder), or move "
        "those files"]
    assert not (mine / "autotune.state.json").exists()
    assert all((mine / name).read_text() == "the user's own\n"
               for name in ("profile.json", "profile.json.ranks.npz", "report.md"))


def test_a_file_added_to_a_finished_run_is_not_overwritten(work, tmp_path):
    run = copy_run(work, tmp_path)
    (run / "tree-b1.json").write_text("mine\n")  # a name the tune stage may write
    result = autotune("-m", str(STORIES), "--heads", str(tmp_path / "heads"), "-d",
                      str(STORY_PROMPTS), *SMALL, "--redo", "tune", "-o", str(run))
    assert result.exit_code == 2 and "holds tree-b1.json, which autotune did not write" \
        in result.stderr
    assert (run / "tree-b1.json").read_text() == "mine\n"


# ------------------------------------------------------------------ item 2
def test_a_typo_in_an_input_writes_nothing(work, tmp_path):
    out = tmp_path / "out"
    for flag, value, message in [
        ("--heads", str(tmp_path / "hedas") + "/", "--heads Medusa heads folder"),
        ("-m", "./stories260k", "model folder ./stories260k does not exist"),
        ("-d", str(tmp_path / "questions.jsonl"), "does not exist"),
    ]:
        args = {"-m": str(STORIES), "--heads": str(work / "heads"), "-d": str(STORY_PROMPTS)}
        args[flag] = value
        result = autotune(*(item for pair in args.items() for item in pair), *SMALL,
                          "-o", str(out))
        assert result.exit_code == 2, result.output
        assert len(result.stderr.splitlines()) == 1 and message in result.stderr, result.stderr
        assert not out.exists()


def test_the_run_that_failed_in_its_first_stage_did_not_block_its_folder(work):
    state = json.loads((work / "first" / "autotune.state.json").read_text())
    assert list(state["stages"]) == ["profile", "build", "latency", "tune", "export", "verify",
                                     "report"]
    assert state["settings"]["max_new_tokens"] == 8


# ------------------------------------------------------------------ item 3
def test_resume_ignores_how_paths_are_spelled(work, tmp_path, monkeypatch):
    run = copy_run(work, tmp_path)
    shutil.copy(STORY_PROMPTS, tmp_path / "prompts.txt")
    before = stamps(run)
    for heads in ("./heads", "heads/", str(tmp_path / "heads")):
        result = autotune("-m", str(STORIES), "--heads", heads, "-d", "prompts.txt", *SMALL,
                          "-o", "run/", cwd=tmp_path, monkeypatch=monkeypatch)
        assert result.exit_code == 0, result.output
        assert set(stage_lines(result.stderr).values()) == {"kept"}, result.stderr
    assert stamps(run) == before  # nothing rewritten, not even the state


def test_changed_heads_content_or_other_settings_are_refused_naming_the_flags(work, tmp_path):
    run = copy_run(work, tmp_path)
    result = autotune("-m", str(STORIES), "--heads", str(tmp_path / "heads"), "-d",
                      str(STORY_PROMPTS), *SMALL, "--top-k", "3", "--batch", "1,2", "-o",
                      str(run))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {run} holds an autotune run made with other "
                                    "--batch, --top-k: use another -o"), result.stderr
    config = tmp_path / "heads" / "config.json"
    config.write_text(config.read_text().replace("{", '{"note": "retrained", ', 1))
    result = autotune("-m", str(STORIES), "--heads", str(tmp_path / "heads"), "-d",
                      str(STORY_PROMPTS), *SMALL, "-o", str(run))
    assert result.exit_code == 2 and "made with other --heads:" in result.stderr


@pytest.mark.parametrize(("changes", "redone"), [
    (["--rounds", "2"], ["tune", "export", "verify", "report"]),
    (["--threads", "1"], ["latency", "tune", "export", "verify", "report"]),
    (["--no-verify"], ["tune", "export", "report"]),
    (["--redo", "verify"], ["verify", "report"]),
])
def test_a_rerun_redoes_only_the_stages_a_change_affects(work, tmp_path, changes, redone):
    run = copy_run(work, tmp_path)
    args = ["-m", str(STORIES), "--heads", str(tmp_path / "heads"), "-d", str(STORY_PROMPTS),
            *SMALL, *changes, "-o", str(run)]
    result = autotune(*args)
    assert result.exit_code == 0, result.output
    lines = stage_lines(result.stderr)
    assert sorted(name for name, how in lines.items() if how == "ran") == sorted(redone)
    assert "redoing" in result.stderr
    again = autotune(*(arg for arg in args if arg not in ("--redo", "verify")))
    # the new settings are the run's now
    assert set(stage_lines(again.stderr).values()) == {"kept"}, again.stderr


# ----------------------------------------------------------------- item 11
def test_ctrl_c_says_what_was_saved_and_the_command_that_resumes(work, tmp_path, monkeypatch):
    from treeopt.workflows import autotune as workflow

    run = copy_run(work, tmp_path)

    def interrupted(settings, log) -> None:
        log("[2/7] build ...")
        raise KeyboardInterrupt

    monkeypatch.setattr(workflow, "autotune", interrupted)
    args = ["autotune", "-m", "m", "--heads", "h", "-d", "d.jsonl", "-q", "-o", str(run)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 130
    assert result.stderr.splitlines() == [
        f"interrupted in stage build: finished stages are saved in {run} "
        f"(autotune.state.json); resume: treeopt autotune -m m --heads h -d d.jsonl -q -o {run}"]


@pytest.mark.parametrize(("argv", "saved", "expected"), [
    (["profile", "-m", "m", "-o", "p.json"], "p.json.partial.npz",
     "interrupted: the prompts profiled so far are saved in p.json.partial.npz; resume: "
     "treeopt profile -m m -o p.json --resume"),
    (["profile", "-m", "m", "-o", "p.json"], None,
     "interrupted: nothing saved yet; rerun: treeopt profile -m m -o p.json"),
    (["train-heads", "-m", "m", "-o", "heads"], "heads/training_state.json",
     "interrupted: every finished epoch is saved in heads (training_state.json); resume: "
     "treeopt train-heads -m m -o heads --resume"),
    (["tune", "--measure", "--storage", "sqlite:///s.db"], None,
     "interrupted: finished trials are saved in sqlite:///s.db; resume: treeopt tune "
     "--measure --storage sqlite:///s.db"),
    (["study", "-m", "m"], None,
     "interrupted: no trial was saved (no --storage); give --storage sqlite:///study.db to "
     "keep trials across runs"),
    (["build", "-p", "x"], None, "interrupted: nothing was saved"),
])
def test_interrupted_messages(tmp_path, monkeypatch, argv, saved, expected):
    from treeopt.cli.interrupted import interrupted_message

    monkeypatch.chdir(tmp_path)
    if saved is not None:
        Path(saved).parent.mkdir(parents=True, exist_ok=True)
        Path(saved).write_text("")
    assert interrupted_message(argv) == expected


def test_ctrl_c_in_profile_exits_130_with_the_resume_command(tmp_path, monkeypatch):
    import treeopt.model.calibration as calibration

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(calibration, "read_prompts", interrupted)
    monkeypatch.chdir(tmp_path)
    Path("p.json.partial.npz").write_text("")
    result = CliRunner().invoke(app, ["profile", "-m", "m", "--heads", "h", "-d", "x.txt",
                                      "-o", "p.json"])
    assert result.exit_code == 130
    assert result.stderr.splitlines() == [
        "interrupted: the prompts profiled so far are saved in p.json.partial.npz; resume: "
        "treeopt profile -m m --heads h -d x.txt -o p.json --resume"]
