"""The GPU table's new entries, GPU JSON files for any other GPU, and Zephyr's sliding window."""

import json
import subprocess
import sys

import pytest

from treeopt.cost.arch import get_arch
from treeopt.cost.gpus import GPUS, get_gpu, gpu_for_device_name
from treeopt.cost.roofline import predict_step_latency, step_operators
from treeopt.errors import TreeoptError


@pytest.mark.parametrize(("slug", "peak", "bandwidth", "memory"), [
    ("a10g", 70, 600, 24), ("l4", 121, 300, 24), ("rtx-4090", 165.2, 1008, 24),
    ("b200", 2250, 7700, 180), ("mi300x", 1307.4, 5300, 192), ("h200", 989.5, 4800, 141),
])
def test_common_gpus_are_in_the_table_with_dense_datasheet_figures(slug, peak, bandwidth, memory):
    spec = GPUS[slug]
    assert (spec.peak_tflops, spec.bandwidth_gbs, spec.memory_gb) == (peak, bandwidth, memory)
    assert spec.source  # every entry names its datasheet


@pytest.mark.parametrize(("device_name", "slug"), [
    ("NVIDIA A10G", "a10g"), ("NVIDIA A10", "a10"), ("NVIDIA GeForce RTX 4090", "rtx-4090"),
    ("NVIDIA B200", "b200"), ("AMD Instinct MI300X", "mi300x"), ("NVIDIA H200", "h200"),
    ("NVIDIA H200 NVL", "h200-nvl"), ("NVIDIA A100-SXM4-80GB", "a100-80gb-sxm"),
])
def test_cuda_device_names_map_to_their_entry(device_name, slug):
    assert gpu_for_device_name(device_name).name == slug


def test_a_gpu_file_describes_any_gpu(tmp_path):
    path = tmp_path / "my-gpu.json"
    path.write_text(json.dumps({"peak_tflops": 100, "bandwidth_gbs": 500, "memory_gb": 16}))
    spec = get_gpu(str(path))
    assert (spec.name, spec.peak_tflops, spec.bandwidth_gbs, spec.memory_gb) == \
        ("my-gpu", 100, 500, 16.0)
    arch = get_arch("llama-7b")
    # Decoding one token is bandwidth-bound: weights / bandwidth is a lower bound.
    assert predict_step_latency(arch, spec, 1, 1024, 1) > arch.weight_bytes() / 500e9


@pytest.mark.parametrize(("content", "message"), [
    ({"bandwidth_gbs": 500}, "lacks peak_tflops"),
    ({"peak_tflops": 100, "bandwidth_gbs": -1}, "bandwidth_gbs must be positive"),
    ({"peak_tflops": 100, "bandwidth_gbs": 5, "tflops": 3}, "unknown field 'tflops'"),
    ({"peak_tflops": 100, "bandwidth_gbs": 5, "memory_gb": "big"}, "memory_gb must be"),
    ([1, 2], "must hold a JSON object"),
])
def test_bad_gpu_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "g.json"
    path.write_text(json.dumps(content))
    with pytest.raises(TreeoptError, match=message):
        get_gpu(str(path))


def test_unknown_gpu_names_the_ways_that_exist():
    with pytest.raises(TreeoptError) as error:
        get_gpu("a10x")
    assert "GPU JSON file" in str(error.value) and "--peak-tflops" not in str(error.value)


def test_overhead_predict_takes_a_gpu_file(tmp_path):
    gpu = tmp_path / "a10g-like.json"
    gpu.write_text(json.dumps({"peak_tflops": 70, "bandwidth_gbs": 600, "memory_gb": 24}))
    out = tmp_path / "lat.json"
    done = subprocess.run(
        [sys.executable, "-m", "treeopt", "overhead", "--predict", "--arch", "llama-7b",
         "--gpu", str(gpu), "--batch", "1", "--context", "1024", "--sizes", "1,8", "-o",
         str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    document = json.loads(out.read_text())
    assert document["gpu"]["name"] == "a10g-like" and document["source"] == "roofline-model"


def test_zephyr_window_caps_attention_only_past_the_window():
    zephyr, mistral = get_arch("zephyr-7b"), get_arch("mistral-7b")
    assert zephyr.sliding_window == 4096 and zephyr.num_key_value_heads == 8
    assert zephyr.num_parameters() == mistral.num_parameters()

    def qk(arch, context):
        return next(op for op in step_operators(arch, 1, context, 4) if op.name == "qk")

    assert qk(zephyr, 1024) == qk(mistral, 1024)
    assert qk(zephyr, 16384).n == 4096 and qk(mistral, 16384).n == 16384


def test_hf_config_window_is_read(tmp_path):
    config = {"hidden_size": 64, "intermediate_size": 100, "num_hidden_layers": 2,
              "num_attention_heads": 4, "vocab_size": 10, "sliding_window": 16}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert get_arch(tmp_path).sliding_window == 16
    config |= {"use_sliding_window": False}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert get_arch(tmp_path).sliding_window is None
