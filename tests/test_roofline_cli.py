"""treeopt roofline / simulate: JSON-only stdout, --measure on CPU, one-line errors."""

import json

import pytest
from typer.testing import CliRunner

from treeopt.cli import app
from treeopt.cost.arch import ArchShape

TINY = ArchShape("tiny", 64, 172, 2, 8, 4, 8, 512)


def invoke(*args):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def test_roofline_json_is_only_a_list():
    result = invoke("roofline", "--arch", "llama-7b", "--batch", "1", "--context", "128",
                    "--candidates", "1,16", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 3 * 9  # prefill, decode, parallel decode x 9 operators
    assert {"operator", "phase", "batch", "context", "candidates", "flops", "bytes",
            "operational_intensity", "attainable_tflops", "predicted_us"} <= set(rows[0])


def test_roofline_measure_on_cpu_and_saved_profile(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY.to_hf_config_dict()))
    profile = tmp_path / "device.json"
    result = invoke("roofline", "--arch", config, "--batch", "1,2", "--context", "32,128",
                    "--candidates", "1,8", "--dtype", "fp32", "--repeats", "3", "--measure",
                    "--json", "--save-device-profile", profile)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert all(row["measured_us"] > 0 and row["measured_tflops"] > 0 for row in rows)
    saved = json.loads(profile.read_text())
    assert saved["format"] == "treeopt.device/1" and saved["peak_tflops"] > 0
    again = invoke("simulate", "--arch", config, "--device-profile", profile, "--acceptance",
                   "log:0.3", "--batch", "1", "--context", "64", "--candidates", "1,4", "--json")
    assert again.exit_code == 0, again.output
    assert len(json.loads(again.stdout)) == 2


def test_simulate_json_keys_and_plots(tmp_path):
    result = invoke("simulate", "--gpu", "a100-80gb-pcie", "--acceptance", "log:0.3",
                    "--batch", "1,4", "--context", "1024", "--candidates", "1,16,64",
                    "--json", "--plot", tmp_path)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert set(rows[0]) == {"batch", "context", "candidates", "acceleration_rate", "overhead",
                            "speedup"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "simulate_acceleration.png", "simulate_batch.png", "simulate_context.png"]


def test_roofline_plot(tmp_path):
    path = tmp_path / "r.png"
    result = invoke("roofline", "--arch", "llama-7b", "--batch", "1", "--plot", path)
    assert result.exit_code == 0, result.output
    assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, message", [
    (["roofline", "--arch", "llama-9b"], "unknown arch"),
    (["roofline", "--arch", "llama-7b", "--gpu", "a100"], "unknown GPU"),
    (["roofline", "--arch", "llama-7b", "--batch", "0"], "positive"),
    (["roofline", "--arch", "llama-7b", "--context", "-5"], "positive"),
    (["roofline", "--arch", "llama-7b", "--dtype", "int3"], "unknown dtype"),
    (["roofline", "--arch", "llama-7b", "--peak-tflops", "100"], "go together"),
    (["roofline", "--arch", "llama-7b", "--save-device-profile", "x.json"], "needs --measure"),
    (["simulate", "--acceptance", "log:-2"], "A > 0"),
    (["simulate", "--gpu", "tpu"], "unknown GPU"),
    (["roofline"], "needs --arch"),
])
def test_bad_input_exit_2_one_line(args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_config_missing_fields(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 4}))
    result = invoke("roofline", "--arch", path)
    assert result.exit_code == 2 and "lacks" in result.stderr


def test_simulate_makes_a_new_plot_folder_and_refuses_when_nothing_fits(tmp_path):
    folder = tmp_path / "figs"
    result = CliRunner().invoke(app, ["simulate", "--gpu", "a100-80gb-sxm", "--batch", "1",
                                      "--context", "1024", "--plot", str(folder)])
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in folder.iterdir()) == [
        "simulate_acceleration.png", "simulate_batch.png", "simulate_context.png"]
    result = CliRunner().invoke(app, ["simulate", "--arch", "llama-65b", "--gpu", "l4",
                                      "--plot", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: no setting fits in l4's 24 GB (weights + KV cache): smaller --batch or "
        "--context?"]
    assert not (tmp_path / "none").exists()
