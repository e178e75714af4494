"""benchmarks/seed_chart.py: the seed's four models, predicted per GPU, measured where given."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from treeopt.core.latency import LatencyTable
from treeopt.cost.arch import get_arch
from treeopt.cost.gpus import get_gpu
from treeopt.cost.predict import predict_latency
from treeopt.files.latency_file import write_latency

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "trees" / "profiles" / "vicuna-7b.json"
pytestmark = pytest.mark.skipif(not SHIPPED.is_file(), reason="bundled profiles absent")


def seed_chart():
    spec = importlib.util.spec_from_file_location("seed_chart", ROOT / "benchmarks" /
                                                  "seed_chart.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("seed_chart", module)
    spec.loader.exec_module(module)
    return module


def test_four_models_each_tree_predicted_and_a_measured_table_replaces_its_gpu(tmp_path,
                                                                                 capsys):
    chart = seed_chart()
    predicted = predict_latency(get_arch("llama-7b"), get_gpu("h200"), [1], [1024],
                                range(1, 257), "bf16")
    slower = {setting: seconds * 1.2 for setting, seconds in predicted.measurements.items()}
    write_latency(tmp_path / "latency_llama-7b.json", LatencyTable(
        measurements=slower, source="measured", device="NVIDIA H200", dtype="bfloat16",
        arch="llama-7b"))
    out = tmp_path / "seed.json"
    assert chart.main(["-o", str(out), "--gpus", "a100-80gb-sxm,h200",
                       "--latency-dir", str(tmp_path), "--plot", str(tmp_path / "c.png")]) == 0
    document = json.loads(out.read_text())
    rows = document["rows"]
    assert {row["model"] for row in rows} == {"Vicuna-7B", "Zephyr-7B", "Vicuna-13B",
                                              "Vicuna-33B"}
    by = {(row["gpu"], row["model"], row["tree"]): row for row in rows}
    # The measured H200 table is used for the Vicuna-7B shape on the H200 only.
    assert by["h200", "Vicuna-7B", "vicuna_7b_stage2"]["figure"] == "measured"
    assert by["h200", "Vicuna-13B", "vicuna_13b_stage2"]["figure"] == "predicted"
    assert by["a100-80gb-sxm", "Vicuna-7B", "vicuna_7b_stage2"]["figure"] == "predicted"
    assert by["h200", "Vicuna-7B", "treeopt tuned"]["tokens_per_s_without_medusa"] == \
        pytest.approx(1 / slower[1, 1024, 1])
    zephyr = by["a100-80gb-sxm", "Zephyr-7B", "zephyr_stage2"]
    assert zephyr["arch"] == "zephyr-7b" and "vicuna-7b profile" in zephyr["acceptance"]
    assert "Medusa-1" in by["a100-80gb-sxm", "Vicuna-33B", "treeopt tuned"]["acceptance"]
    for row in rows:
        assert row["speedup"] == pytest.approx(
            row["tokens_per_s_with_medusa"] / row["tokens_per_s_without_medusa"])
    assert document["seed"]["speedup"] == {"Vicuna-7B": 2.83, "Zephyr-7B": 2.66,
                                           "Vicuna-13B": 2.83, "Vicuna-33B": 2.35}
    printed = capsys.readouterr().out
    assert "h200 (measured/predicted)" in printed and "a100-80gb-sxm (predicted)" in printed
    assert (tmp_path / "c.png").stat().st_size > 10_000
