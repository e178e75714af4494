"""treeopt build / eval / import-profile through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from treeopt.cli import app
from treeopt.core.profile import Profile
from treeopt.files.curve_file import read_curve
from treeopt.files.profile_file import load_profile, write_profile
from treeopt.files.tree_file import load_tree_document

runner = CliRunner()
SHARED = Path(__file__).resolve().parents[2] / "shared"
GOLDEN_64 = 2.384396586943  # see test_build.test_golden_vicuna_7b_budget_64


def invoke(*args: str):
    return runner.invoke(app, [str(arg) for arg in args])


def assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert fragment in lines[0]


@pytest.fixture
def measured_profile(tmp_path: Path) -> Path:
    """A measured profile of 40 prompts with correlated heads (3 heads, top-4)."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 25)
    first = rng.integers(-1, 4, len(groups))
    ranks = np.where(rng.uniform(size=(len(groups), 3)) < 0.6, first[:, None],
                     rng.integers(-1, 4, (len(groups), 3)))
    path = tmp_path / "measured.json"
    write_profile(path, Profile.from_rank_vectors(ranks, 4, groups, {"model": "synthetic"}))
    return path


def test_build_default_profile_to_stdout() -> None:
    result = invoke("build", "--budget", 64)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["paths"]) == 63 and data["num_heads"] == 5
    assert data["expected_accept_length"] == pytest.approx(GOLDEN_64, abs=1e-6)
    provenance = data["provenance"]
    assert provenance["profile"] == "vicuna-7b" and provenance["budget"] == 64
    assert provenance["acceptance_model"] == "independent"
    assert provenance["model"] == "vicuna-7b-v1.3" and "treeopt_version" in provenance
    assert "expected accept length 2.3844" in result.stderr


def test_build_to_files_with_curve(tmp_path: Path) -> None:
    tree_path, curve_path = tmp_path / "tree.json", tmp_path / "curve.csv"
    result = invoke("build", "-b", 64, "-o", tree_path, "--curve", curve_path,
                    "--max-rank", "4,3", "--max-children", 4)
    assert result.exit_code == 0, result.output
    document = load_tree_document(tree_path)
    assert len(document.tree) == 63 and document.tree.max_rank_per_depth()[1] <= 3
    curve = read_curve(curve_path)
    assert curve.num_tokens == list(range(1, 65))
    assert curve.rows[0].expected_accept_length == 1.0
    assert curve.rows[-1].expected_accept_length == pytest.approx(
        document.expected_accept_length, abs=1e-6
    )
    assert curve.provenance["max_children"] == 4


def test_build_vllm_exports(tmp_path: Path) -> None:
    tree_path = tmp_path / "vllm.json"
    assert invoke("build", "-b", 64, "--engine", "vllm", "-o", tree_path).exit_code == 0
    exported = invoke("export", tree_path, "--to", "vllm")
    assert exported.exit_code == 0, exported.output
    assert exported.stdout.startswith("[(0,), (1,), (2,), (3,), (4,), (0, 0)")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--budget", "1"], "budget 1 is plain decoding"),
        (["--budget", "65", "--engine", "trtllm"], "max_draft_len=63"),
        (["--budget", "10", "--model-of-acceptance", "joint"], "joint counts"),
        (["--budget", "10", "--max-rank", "a,b"], "--max-rank"),
        (["--budget", "10", "--profile", "vicuna-1b"], "no profile file or shipped profile"),
        (["--budget", "10", "--curve", "CURVE.txt"], ".json or .csv"),
        (["--budget", "10", "--holdout", "0.5"], "groups"),
        (["--budget", "4000"], "only 3905 candidate nodes"),
    ],
)
def test_build_errors_leave_no_file(args: list[str], fragment: str, tmp_path: Path) -> None:
    args = [arg.replace("CURVE", str(tmp_path / "curve")) for arg in args]
    result = invoke("build", *args, "-o", tmp_path / "tree.json")
    assert_one_line_error(result, fragment)
    assert list(tmp_path.iterdir()) == []


def test_eval_table_and_json(tmp_path: Path) -> None:
    tree_path = tmp_path / "t.json"
    invoke("build", "-b", 64, "-o", tree_path)
    table = invoke("eval", tree_path, "mc_sim_7b_63", "vicuna_7b_stage1")
    assert table.exit_code == 0, table.output
    lead, lines = table.stdout.splitlines()[:4], table.stdout.splitlines()[5:]
    assert lead[0] == "tokens per step: E[accept], independent model of acceptance"
    assert lead[2].split() == ["mc_sim_7b_63", "2.3399"]
    assert lines[0].split() == ["tree", "nodes", "tokens/step", "E[accept]", "independent"]
    assert lines[2].split() == ["mc_sim_7b_63", "63", "64", "2.3399"]
    assert lines[3].split() == ["vicuna_7b_stage1", "63", "64", "2.3437"]
    as_json = json.loads(invoke("eval", tree_path, "mc_sim_7b_63", "--json").stdout)
    assert [row["tree"] for row in as_json] == [str(tree_path), "mc_sim_7b_63"]
    assert as_json[0]["nodes"] == 63
    assert as_json[0]["expected_accept_length"] == pytest.approx(GOLDEN_64, abs=1e-6)
    assert_one_line_error(invoke("eval", "no_such_tree"), "no tree file or shipped tree")


def test_eval_help_says_root_counts() -> None:
    result = invoke("eval", "--help")
    assert "base model's own token" in " ".join(result.stdout.split())


def test_holdout_build_eval_and_oracle(measured_profile: Path, tmp_path: Path) -> None:
    tree_path = tmp_path / "train.json"
    built = invoke("build", "-p", measured_profile, "-b", 16, "-a", "blend",
                   "--holdout", 0.25, "--seed", 1, "-o", tree_path)
    assert built.exit_code == 0, built.output
    assert load_tree_document(tree_path).provenance["split"]["part"] == "train"
    result = invoke("eval", tree_path, "-p", measured_profile, "--holdout", 0.25, "--seed", 1,
                    "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(row["tree"], row["acceptance_model"]) for row in rows] == [
        (str(tree_path), "independent"), ("in-sample-16", "independent"),
        (str(tree_path), "joint"), ("in-sample-16", "joint"),
        (str(tree_path), "blend"), ("in-sample-16", "blend"),
    ]
    for contender, oracle in zip(rows[::2], rows[1::2], strict=True):
        if oracle["acceptance_model"] == oracle["built_with"]:  # its ceiling is there
            assert oracle["expected_accept_length"] >= \
                contender["expected_accept_length"] - 1e-12
    _, heldout = load_profile(str(measured_profile)).split(0.25, 1)
    assert heldout.num_positions == 250  # 10 of 40 prompts x 25 positions


def test_eval_holdout_leads_with_one_figure_and_names_the_in_sample_row(
        measured_profile: Path, tmp_path: Path) -> None:
    """Issue 16, item 12: no "oracle" that is not a ceiling; one figure leads."""
    built = invoke("build", "-p", measured_profile, "-b", 16, "--holdout", 0.25,
                   "-o", tmp_path / "t.json")
    assert built.exit_code == 0, built.output
    result = invoke("eval", tmp_path / "t.json", "-p", measured_profile, "--holdout", 0.25)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    # No rank vectors in this profile: the most faithful model's E[accept] leads.
    assert lines[0] == "tokens per step: E[accept], blend model of acceptance"
    assert lines[1].split()[0] == str(tmp_path / "t.json")
    assert lines[2].split()[0] == "in-sample-16"
    assert "oracle" not in result.stdout


def test_import_profile(tmp_path: Path) -> None:
    csv_path = tmp_path / "acc.csv"
    csv_path.write_text("model,head,top1,top2\nm-v1,2,0.3,0.4\nm-v1,1,0.5,0.75\nother,1,0.1,0.2\n")
    out = tmp_path / "m.json"
    result = invoke("import-profile", csv_path, "--model", "m", "-o", out, "--source", "paper")
    assert result.exit_code == 0, result.output
    profile = load_profile(str(out))
    np.testing.assert_allclose(profile.marginal, [[0.5, 0.25], [0.3, 0.1]])
    assert profile.provenance["model"] == "m-v1" and profile.provenance["source"] == "paper"
    bad = tmp_path / "bad.csv"
    bad.write_text("model,head,top1,top2\nm,1,0.5,0.4\n")
    assert_one_line_error(invoke("import-profile", bad, "--model", "m", "-o", tmp_path / "x.json"),
                          "must not decrease")
    assert_one_line_error(
        invoke("import-profile", csv_path, "--model", "zz", "-o", tmp_path / "x.json"),
        "matches 0 models",
    )
    assert not (tmp_path / "x.json").exists()


def test_import_profile_reproduces_shipped(tmp_path: Path) -> None:
    if not SHARED.is_dir():
        pytest.skip("../shared is absent")
    out = tmp_path / "v.json"
    result = invoke("import-profile", SHARED / "data/medusa_head_accuracy_vicuna.csv",
                    "--model", "vicuna-13b", "-o", out)
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(load_profile(str(out)).marginal,
                               load_profile("vicuna-13b").marginal, atol=1e-12)


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        (["-o", "{tmp}"], "error: cannot write '{tmp}': it is a folder, give a file name"),
        (["-o", "{tmp}/missing/t.json"],
         "error: cannot write {tmp}/missing/t.json: {tmp}/missing does not exist"),
        # A bad second output is refused before the first is written.
        (["-o", "{tmp}/t.json", "--curve", "{tmp}/c.txt"],
         "error: curve file {tmp}/c.txt must end in .json or .csv, not .txt"),
    ],
)
def test_bad_outputs_are_refused_before_any_work(outputs: list[str], message: str,
                                                 tmp_path: Path) -> None:
    args = [arg.format(tmp=tmp_path) for arg in outputs]
    result = CliRunner().invoke(app, ["build", "--budget", "8", *args])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [message.format(tmp=tmp_path)]
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_is_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["build", "--budget", "8", "-o", "/proc/t.json"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["error: cannot write /proc/t.json: No such file or "
                                          "directory"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["profile", "-m", "x", "-d", "y", "-o", "{tmp}/p.json", "--batch-size", "0"],
         "error: Invalid value for '--batch-size': Input should be greater than or equal to 1 "
         "(see 'treeopt profile --help')"),
        (["train-heads", "-m", "x", "-d", "y", "-o", "{tmp}/h", "--lr", "-1"],
         "error: --lr must be > 0, not -1.0"),
        (["overhead", "--random-weights", "--arch", "llama-7b", "--device", "foo",
          "-o", "{tmp}/o.json"],
         "error: --device 'foo' is not a torch device (cpu, cuda, cuda:1, mps)"),
        (["study", "--model", "x", "--heads", "h", "-d", "{prompts}",
          "--profile", "vicuna-7b", "--storage", "foo://x"],
         "error: --storage cannot be opened (foo://x): Can't load plugin: "
         "sqlalchemy.dialects:foo"),
    ],
)
def test_model_verbs_refuse_bad_options_before_loading(args: list[str], message: str,
                                                       tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello\n")
    result = CliRunner().invoke(app, [arg.format(tmp=tmp_path, prompts=prompts) for arg in args])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [message]


def test_dash_output_is_stdout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["build", "--budget", "4", "-o", "-"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["paths"] == [[0], [1], [0, 0]]
    assert list(tmp_path.iterdir()) == []
