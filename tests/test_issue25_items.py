"""Issue 25 items 4-7 (report, latency spread and statistic, overhead contexts, eval
--holdout); the autotune folder items (1-3) and Ctrl-C (11) are in test_autotune_folder.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from treeopt.cli import app

SHARED = Path(__file__).resolve().parents[2] / "shared"
STORIES = SHARED / "models" / "stories260K"
runner = CliRunner()


# ------------------------------------------------------------------ item 7
def test_eval_holdout_in_sample_row_and_lead_figure_are_one_number(tmp_path: Path) -> None:
    """The lead said in-sample-64 = 3.6837 while the table's row said 3.6493: the row
    mixed the trees built under three models. One in-sample tree per size now."""
    from test_dynamic_cli import measured_profile

    profile = measured_profile(tmp_path / "p.json", heads=4, top_k=6, prompts=8, rows=800)
    args = ["eval", "mc_sim_7b_63", "-p", str(profile), "--holdout", "0.5"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tokens per step: replayed tokens per step")
    lead = {line.split()[0]: line.split()[1] for line in lines[1:3]}
    table = {line.split()[0]: line.split()[-1] for line in lines[4:] if line.strip()}
    assert lead["in-sample-64"] == table["in-sample-64"]
    rows = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    in_sample = [row for row in rows if row["tree"] == "in-sample-64"]
    assert len({row["tokens_per_step_replayed"] for row in in_sample}) == 1
    assert {row["built_with"] for row in in_sample} == {"blend"}


# ------------------------------------------------------------------ item 4
def _stages(source: str = "measured", verify: bool = False) -> dict:
    describe = ("measured on cpu (stories, float32)" if source == "measured"
                else "roofline-model prediction for H100 SXM (llama-7b, bfloat16)")
    stages = {"latency": {"source": source, "describe": describe, "warnings": []},
              "tune": {"buckets": [{"batches": [1], "file": "tree-b1.json", "num_tokens": 12}]}}
    if verify:
        stages["verify"] = {"prompts": 8, "device": "cpu, 1 thread", "runs": {
            "plain": {"measured_speedup": 1.0, "num_tokens": 1},
            "tuned (n=12)": {"measured_speedup": 1.234, "num_tokens": 12,
                             "speedup_interval": [1.1, 1.35]},
            "mc_sim_7b_63": {"measured_speedup": 1.05, "num_tokens": 64}}}
    return stages


ROWS = [{"batch": 1, "num_tokens": 12, "predicted_speedup": 1.72}]


def test_headline_says_measured_or_predicted_once_and_correctly() -> None:
    from treeopt.workflows.report import headline

    no_verify = headline(_stages(), ROWS)
    assert no_verify == ("Predicted speedup at batch 1: **1.72x** with a 12-token tree "
                         "(calibration acceptance x step latencies timed on cpu (stories, "
                         "float32); no decoding was run to check it).")
    assert "measured" not in no_verify.lower()
    gpu = headline(_stages("roofline-model"), ROWS)
    assert gpu.startswith("Predicted speedup at batch 1: **1.72x**") and "measured" not in gpu
    measured = headline(_stages(verify=True), ROWS)
    assert measured == ("Measured speedup on 8 held-out prompts: **1.23x** (95% interval "
                        "1.10-1.35) with the tuned tree (12 tokens/step) over plain decoding "
                        "on cpu, 1 thread (vs mc_sim_7b_63 1.05x).")
    assert "predicted" not in measured.lower()


def test_only_fasterdecodings_trees_are_called_published() -> None:
    from treeopt.workflows.report import _held_out_section

    build = {"budget": 64, "held_out_tokens_per_step": [1.0] * 64,
             "calibration_tokens_per_step": [1.0] * 64, "in_sample_tokens_per_step": 2.0,
             "published": [
                 {"name": "mc_sim_7b_63", "num_tokens": 64, "published": True,
                  "held_out_tokens_per_step": 2.5},
                 {"name": "vicuna-7b", "num_tokens": 64, "published": False,
                  "held_out_tokens_per_step": 2.6}]}
    text = "\n".join(_held_out_section(build, {"held_out": "held-out.png"}))
    assert "| published mc_sim_7b_63, 64 tokens |" in text
    assert "| treeopt's shipped tuned tree vicuna-7b, 64 tokens |" in text
    assert "published vicuna-7b" not in text


def test_report_has_a_step_latency_table_per_size_with_spreads() -> None:
    from treeopt.core.latency import LatencyTable
    from treeopt.workflows.report import _latency_section

    table = LatencyTable({(1, 20, 1): 0.002, (1, 20, 2): 0.0025}, source="measured",
                         device="cpu", dtype="float32", arch="stories",
                         method={"max_spread": 0.05, "rounds": 4, "repeats": 10},
                         spreads={(1, 20, 1): 0.03, (1, 20, 2): 0.12})
    lines = _latency_section(_stages()["latency"], table)
    assert "| 1 | 20 | 1 | 2 | 3.0% |" in lines and "| 1 | 20 | 2 | 2.5 | 12.0% |" in lines
    assert any("fastest sample (min)" in line and "**not reached**" in line for line in lines)


def test_speedup_interval_is_a_seeded_paired_bootstrap() -> None:
    from treeopt.core.bootstrap import speedup_interval

    tokens, seconds = [10, 20, 30, 40], [1.0, 1.0, 1.0, 1.0]
    base_tokens, base_seconds = [10, 10, 10, 10], [1.0, 1.0, 1.0, 1.0]
    low, high = speedup_interval(tokens, seconds, base_tokens, base_seconds, seed=3)
    assert (low, high) == speedup_interval(tokens, seconds, base_tokens, base_seconds, seed=3)
    assert 1.0 <= low < 2.5 < high <= 4.0  # the point estimate, 2.5x, lies inside
    assert speedup_interval([5], [1.0], [5], [2.0]) == (2.0, 2.0)


# ------------------------------------------------------------------ item 5
def test_a_spread_that_stayed_above_the_target_is_a_warning() -> None:
    from treeopt.core.latency import LatencyTable, latency_warnings

    table = LatencyTable({(1, 20, 1): 0.002, (1, 20, 2): 0.0025}, source="measured",
                         device="cpu", dtype="float32", arch="stories",
                         method={"max_spread": 0.05, "rounds": 4},
                         spreads={(1, 20, 1): 0.057, (1, 20, 2): 0.287})
    assert latency_warnings(table) == [
        "batch 1, context 20: timing spread above the 5% target after 4 round(s) "
        "(n=1: 6%, n=2: 29%): not reached, the latencies are that noisy (a busy machine?)"]


def test_overhead_and_autotune_keep_one_statistic_and_say_which() -> None:
    import inspect

    from treeopt.core.latency import TIMING_STATISTIC
    from treeopt.model.measure import measure_latency

    assert TIMING_STATISTIC == "min"
    assert inspect.signature(measure_latency).parameters["statistic"].default == "min"
    text = " ".join(runner.invoke(app, ["overhead", "--help"]).stdout.split())
    assert "fastest" in text and "(min)" in text and "median is kept" not in text
    source = Path(__file__).resolve().parents[1] / "treeopt" / "workflows" / "autotune.py"
    assert 'statistic="median"' not in source.read_text()


# ------------------------------------------------------------------ item 6
@pytest.mark.skipif(not STORIES.is_dir(), reason="needs ../shared/models/stories260K")
def test_overhead_clips_default_contexts_to_the_model_and_checks_before_timing(
        tmp_path: Path) -> None:
    pytest.importorskip("torch")
    common = ["overhead", "--model", str(STORIES), "--device", "cpu", "--dtype", "fp32",
              "--batch", "1", "--sizes", "1,2", "--warmup", "0", "--repeats", "1",
              "-q", "-o", str(tmp_path / "lat.json")]
    result = runner.invoke(app, common)
    assert result.exit_code == 0, result.output
    assert "note: default contexts 1024, 4096 do not fit a 2-token step" in result.stderr
    rows = json.loads((tmp_path / "lat.json").read_text())["measurements"]
    assert sorted({row["context"] for row in rows}) == [128]
    given = runner.invoke(app, [*common[:-2], "--context", "128,1024", "-o",
                                str(tmp_path / "given.json")])
    assert given.exit_code == 2
    assert given.stderr.splitlines()[-1] == (
        "error: --context 1024 leave(s) no room for a 2-token step in the model's 512 "
        "positions: use contexts <= 510")
    assert "timing verification steps" not in given.stderr
    assert not (tmp_path / "given.json").exists()


def test_the_study_measures_plain_decoding_as_its_baseline(capsys) -> None:
    """Issue 25 item 4: `tune --measure` reported tokens/s with nothing to compare to."""
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    from medusa_runtime.heads import MedusaConfig, MedusaHeads
    from treeopt.core.profile import Profile
    from treeopt.model.study import StudyConfig, run_study

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, vocab_size=64, max_position_embeddings=256)).eval()
    heads = MedusaHeads(MedusaConfig(3, 1, 32, 64)).eval()
    profile = Profile.from_cumulative_accuracy([[0.6, 0.7, 0.75], [0.4, 0.5, 0.55]])
    outcome = run_study(model, heads, [[1, 5, 9, 13], [2, 4, 6]], profile,
                        StudyConfig(trials=1, seed=0, max_budget=4, max_new_tokens=4),
                        show_progress=False)
    assert outcome.plain_tokens_per_second > 0
    assert outcome.measured_speedup == pytest.approx(
        outcome.tokens_per_second / outcome.plain_tokens_per_second)
    err = capsys.readouterr().err
    assert "plain decoding: " in err and "tokens/s on the same 2 prompts" in err
    assert f"measured speedup {outcome.measured_speedup:.3f}x" in err
