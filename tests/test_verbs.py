"""One shape for every verb (issue 25, items 8-10, 12-14, 16, 17): help that reads whole at
80 columns and in a pipe, one vocabulary, path-looking names, a heads folder as the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from treeopt.cli import app

ROOT = Path(__file__).resolve().parents[1]
STORIES = ROOT.parent / "shared" / "models" / "stories260K"
runner = CliRunner()
VERBS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


# ------------------------------------------------------------------ item 14
@pytest.mark.parametrize("verb", VERBS)
def test_help_reads_whole_at_80_columns(verb: str) -> None:
    result = runner.invoke(app, [verb, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert "…" not in result.output  # no option name or description cut
    assert "<bool>" not in result.output  # a flag takes no value
    command = typer.main.get_command(app).commands[verb]  # type: ignore[attr-defined]
    for option in command.params:
        if not getattr(option, "hidden", False):
            for flag in option.opts:
                assert flag in result.output, f"{verb}: {flag} missing from --help"


def test_help_in_a_pipe_is_plain_and_whole() -> None:
    """A real pipe (no terminal, no COLUMNS): every verb's help, no box drawing, nothing cut."""
    environment = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    environment["PYTHONPATH"] = str(ROOT)
    script = ("import sys\nfrom treeopt.cli import app\nimport typer\n"
              "for verb in sys.argv[1:]:\n"
              "    try:\n        app([verb, '--help'])\n    except SystemExit:\n        pass\n")
    output = subprocess.run([sys.executable, "-c", script, *VERBS], capture_output=True,
                            text=True, env=environment, timeout=120).stdout
    assert output.count("Usage:") == len(VERBS)
    assert "…" not in output and "╭" not in output and "<bool>" not in output
    assert "E[accept]" in output  # brackets are text, not rich markup eaten


def test_roofline_tables_show_whole_numbers_in_a_pipe() -> None:
    result = runner.invoke(app, ["roofline", "--arch", "llama-7b", "--gpu", "h100-sxm"],
                           terminal_width=80)
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    assert "1.48e+03" in result.output  # the medusa heads' MB, once cut to "1.48e…"


def test_list_gpus_is_one_line_a_gpu() -> None:
    from treeopt.cost.gpus import GPUS

    result = runner.invoke(app, ["roofline", "--list-gpus"], terminal_width=80)
    assert result.exit_code == 0
    assert len(result.output.splitlines()) <= len(GPUS) + 5
    assert all(len(line) <= 80 for line in result.output.splitlines())


# ------------------------------------------------------------------ item 16
def test_tune_measure_points_at_study() -> None:
    result = runner.invoke(app, ["tune", "--measure", "-m", "vicuna-7b", "--prompts", "q.jsonl"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: tune --measure is now its own verb: treeopt study -m MODEL -d DATA ... "
        "(see 'treeopt study --help')"]


def test_tune_verb_passes_settings_by_keyword() -> None:
    """No positional settings: every call of a settings class in a verb names its fields."""
    import ast

    for path in (ROOT / "treeopt" / "cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "").endswith(
                    ("Settings", "Request")):
                assert not node.args, f"{path.name}:{node.lineno} passes settings by position"


def test_a_new_tune_target_is_one_registry_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    from treeopt.workflows import tuning

    seen = []
    monkeypatch.setitem(tuning.TUNE_TARGETS, "vllm-medusa", tuning.TuneTarget(
        "vLLM's knobs", frozenset({"engine", "batch", "say"}), seen.append))
    request = tuning.TuneRequest(engine="vllm-medusa", batch=4)
    assert tuning.tune_target(request) == "vllm-medusa"
    tuning.tune(request)
    assert seen == [request]
    with pytest.raises(tuning.ParameterError, match="latency does not apply"):
        tuning.tune(tuning.TuneRequest(engine="vllm-medusa", latency=(Path("x"),)))


# ------------------------------------------------------------------ item 10
def test_study_takes_data_and_the_old_prompts_name(tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    for flag in ("-d", "--data", "--prompts"):
        result = runner.invoke(app, ["study", "-m", str(tmp_path / "m"), flag, str(prompts),
                                     "--device", "cpu"])
        assert "error: --profile is needed" in result.stderr, (flag, result.output)
    result = runner.invoke(app, ["study", "-m", "x", "--device", "cpu"])
    assert result.exit_code == 2 and "Missing option '--data'" in result.stderr


def test_build_takes_quiet() -> None:
    result = runner.invoke(app, ["build", "--budget", "4", "-q", "-o", "-"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("verb", ["profile", "train-heads", "generate", "overhead", "study",
                                  "autotune"])
def test_one_device_default_rule(verb: str) -> None:
    command = typer.main.get_command(app).commands[verb]  # type: ignore[attr-defined]
    device = next(option for option in command.params if option.name == "device")
    assert device.default == "auto"
    assert "auto (cuda when a GPU is visible, else cpu)" in device.help
    dtype = next(option for option in command.params if option.name == "dtype")
    assert dtype.default == "auto"


def test_device_choice_is_cuda_only_when_visible() -> None:
    torch = pytest.importorskip("torch")
    from treeopt.workflows.devices import device_choice

    assert device_choice("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert device_choice("cpu") == "cpu"


# ------------------------------------------------------------------ item 17
def test_library_names_no_cli_flags() -> None:
    import re

    for relative in ("treeopt/model/loading.py", "treeopt/workflows/autotune.py",
                     "treeopt/optimize/build.py", "treeopt/workflows/tuning.py",
                     "treeopt/model/study.py"):
        text = (ROOT / relative).read_text()
        strings = re.findall(r'f?"[^"\n]*"', text)
        flagged = [s for s in strings if re.search(r"(?<![\w`])--[a-z]", s)
                   and "`" not in s]  # a `treeopt verb --flag` command is fine
        assert not flagged, f"{relative} names CLI flags: {flagged}"


def test_library_errors_read_as_the_verbs_flags(tmp_path: Path) -> None:
    result = runner.invoke(app, ["autotune", "-m", "m", "--heads", "h", "-d", "d",
                                 "--sizes", "2,4", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --sizes must include 1"), result.stderr
    result = runner.invoke(app, ["generate", "-m", "m", "--prompt", "x", "--dtype", "fp8"])
    assert result.stderr.startswith("error: --dtype must be bf16, fp16, fp32"), result.stderr


# ------------------------------------------------------------------ items 8, 9
def test_path_looking_heads_that_do_not_exist_are_missing_folders(tmp_path: Path) -> None:
    from treeopt.errors import TreeoptError
    from treeopt.model.loading import checkpoint_dir

    for name in ("head/", "./head", str(tmp_path / "head"), "~/no-such-heads-folder"):
        with pytest.raises(TreeoptError, match=f"Medusa heads folder {name} does not exist"):
            checkpoint_dir(name, "Medusa heads")


def heads_folder(folder: Path, base: str) -> Path:
    """A Medusa-1 heads folder made by hand: 4 random heads for stories260K, and its base."""
    torch = pytest.importorskip("torch")
    from medusa_runtime.heads import MedusaConfig, MedusaHeads

    torch.manual_seed(0)
    MedusaHeads(MedusaConfig(4, 1, 64, 512)).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["base_model_name_or_path"] = base
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.skipif(not STORIES.is_dir(), reason="needs ../shared/models/stories260K")
def test_heads_folder_as_the_model_in_generate_and_profile(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the base is named relative to the project, as a user would
    heads = heads_folder(tmp_path / "heads", "../shared/models/stories260K")
    result = runner.invoke(app, ["generate", "-m", str(heads), "--tree", "mc_sim_7b_63",
                                 "--prompt", "Once upon a time", "--max-new-tokens", "8",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    plain = runner.invoke(app, ["generate", "-m", str(STORIES), "--prompt", "Once upon a time",
                                "--max-new-tokens", "8", "--device", "cpu"])
    assert result.stdout == plain.stdout  # greedy: the base's own text, with the heads
    prompts = tmp_path / "p.txt"
    prompts.write_text("Once upon a time\nThe cat\n")
    result = runner.invoke(app, ["profile", "-m", str(heads), "-d", str(prompts), "--top-k", "4",
                                 "--max-new-tokens", "8", "--device", "cpu", "-q",
                                 "-o", str(tmp_path / "prof.json")])
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "prof.json").read_text())
    assert written["num_heads"] == 4


# ------------------------------------------------------------------ item 12
def test_render_title_shows_the_figure_build_reported(tmp_path: Path) -> None:
    import re

    import numpy as np

    from treeopt.core.profile import Profile
    from treeopt.files.profile_file import write_profile

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 25)
    first = rng.integers(-1, 4, len(groups))
    ranks = np.where(rng.uniform(size=(len(groups), 3)) < 0.6, first[:, None],
                     rng.integers(-1, 4, (len(groups), 3)))
    profile = tmp_path / "measured.json"
    write_profile(profile, Profile.from_rank_vectors(ranks, 4, groups, {"model": "synthetic"},
                                                     first_decode_index=np.zeros(40, int)))
    tree = tmp_path / "tree.json"
    built = runner.invoke(app, ["build", "--budget", "12", "-p", str(profile), "-o", str(tree)])
    assert built.exit_code == 0, built.output
    reported = float(re.search(r"tokens per decoding step \(replayed\) ([0-9.]+)",
                               built.stderr).group(1))
    picture = tmp_path / "tree.dot"
    result = runner.invoke(app, ["render", str(tree), "-p", str(profile), "-o", str(picture)])
    assert result.exit_code == 0, result.output
    assert f"tokens/step replayed {reported:.3f}" in picture.read_text()


# ------------------------------------------------------------------ item 13
@pytest.mark.skipif(not STORIES.is_dir(), reason="needs ../shared/models/stories260K")
def test_a_launch_bound_prediction_is_warned_about_once(tmp_path: Path) -> None:
    args = ["overhead", "--predict", "--gpu", "h100-sxm", "--batch", "1", "--context", "128",
            "--sizes", "1,2,4"]
    small = runner.invoke(app, [*args, "--arch", str(STORIES), "-o", str(tmp_path / "s.json")])
    assert small.exit_code == 0, small.output
    warnings = [line for line in small.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "launch-bound" in warnings[0], small.stderr
    assert "datasheet numbers are a lower bound" in warnings[0]
    large = runner.invoke(app, [*args, "--arch", "llama-7b", "-o", str(tmp_path / "l.json")])
    assert large.exit_code == 0 and "launch-bound" not in large.stderr


def test_overhead_dtype_follows_the_one_rule(tmp_path: Path) -> None:
    """auto: a prediction has no checkpoint, so bf16 (the checkpoint's own with --model)."""
    result = runner.invoke(app, ["overhead", "--predict", "--arch", "llama-7b", "--gpu",
                                 "h100-sxm", "--batch", "1", "--context", "128", "--sizes",
                                 "1,2", "-o", str(tmp_path / "l.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "l.json").read_text())["dtype"] == "bfloat16"
