"""Roofline operator model: FLOPs, bytes and intensity checked against hand computation."""

import math

import pytest

from treeopt.cost.arch import ArchShape, get_arch
from treeopt.cost.gpus import GPUS, custom_gpu, get_gpu, gpu_for_device_name, resolve_gpu
from treeopt.cost.roofline import (
    DeviceProfile,
    ceilings,
    fit_device_profile,
    operator_rows,
    predict_step_latency,
    step_operators,
)
from treeopt.errors import TreeoptError

A100 = GPUS["a100-80gb-pcie"]


def ops(arch, batch, context, q, heads=5):
    return {op.name: op for op in step_operators(get_arch(arch), batch, context, q, heads)}


# ---------------------------------------------------------------- MHA (llama-7b)
def test_mha_decode_qkv_by_hand():
    op = ops("llama-7b", 1, 1024, 1)["qkv"]
    # x[1, 4096] @ W[4096, 3*4096]: 2*4096*12288 FLOPs; read x and W, write 12288.
    assert op.flops == 100_663_296
    assert op.bytes(2) == 2 * (4096 + 4096 * 12288 + 12288) == 100_696_064
    assert op.intensity(2) == pytest.approx(100_663_296 / 100_696_064)
    assert op.per_step == 32


def test_mha_decode_attention_by_hand():
    named = ops("llama-7b", 1, 1024, 1)
    # 32 heads, 1 query of 128 against 1024 keys: 2*32*128*1024 FLOPs.
    # Bytes: Q 32*128 + K 32*128*1024 + scores 32*1024 elements, 2 bytes each.
    assert named["qk"].flops == 8_388_608
    assert named["qk"].bytes(2) == 2 * (4096 + 4_194_304 + 32_768) == 8_462_336
    # pv reads the scores and V, writes 32*128: the same total here.
    assert named["pv"].flops == 8_388_608
    assert named["pv"].bytes(2) == 8_462_336


def test_mha_parallel_decode_attention_by_hand():
    op = ops("llama-7b", 2, 1024, 64)["qk"]
    # 2 sequences x 32 heads, 64 queries each, 1024 keys.
    assert op.flops == 2 * 2 * 32 * 64 * 128 * 1024 == 1_073_741_824
    elements = 2 * 32 * (64 * 128 + 128 * 1024 + 64 * 1024)
    assert op.bytes(2) == 2 * elements == 26_214_400
    assert op.intensity(2) == pytest.approx(40.96)


def test_mha_prefill_by_hand():
    named = ops("llama-7b", 1, 128, 128)
    assert named["qkv"].flops == 2 * 128 * 4096 * 12288 == 12_884_901_888
    assert named["qkv"].bytes(2) == 104_857_600
    assert named["qkv"].intensity(2) == pytest.approx(122.88)
    assert named["qk"].flops == 2 * 32 * 128**3
    assert named["qk"].intensity(2) == pytest.approx(2 * 32 * 128**3 / (2 * 32 * 3 * 128**2))


def test_mlp_lm_head_and_medusa_heads_by_hand():
    named = ops("llama-7b", 1, 1024, 4)
    assert named["up"].flops == named["gate"].flops == 2 * 4 * 4096 * 11008
    assert named["down"].bytes(2) == 2 * (4 * 11008 + 11008 * 4096 + 4 * 4096)
    assert named["lm_head"].flops == 2 * 4 * 4096 * 32000 and named["lm_head"].per_step == 1
    # 5 heads, each a 4096x4096 ResBlock plus its own 4096x32000 projection.
    assert named["medusa_heads"].flops == 2 * 5 * 4 * 4096 * (4096 + 32000)
    assert "medusa_heads" not in ops("llama-7b", 1, 1024, 4, heads=0)


# ----------------------------------------------------------- GQA (llama-2-70b)
def test_gqa_decode_attention_reads_kv_heads_once():
    named = ops("llama-2-70b", 1, 1024, 1)
    # 64 query heads share 8 KV heads: FLOPs follow query heads, K bytes follow KV heads.
    assert named["qk"].flops == 2 * 64 * 128 * 1024 == 16_777_216
    elements = 64 * 128 + 8 * 128 * 1024 + 64 * 1024
    assert named["qk"].bytes(2) == 2 * elements == 2_244_608
    assert named["qkv"].flops == 2 * 8192 * (8192 + 2 * 1024)


def test_gqa_parallel_decode_and_prefill():
    named = ops("llama-2-70b", 1, 512, 16)
    elements = 64 * 16 * 128 + 8 * 512 * 128 + 64 * 16 * 512
    assert named["pv"].bytes(2) == 2 * elements
    assert named["pv"].flops == 2 * 64 * 16 * 512 * 128
    prefill = ops("llama-2-70b", 1, 256, 256)["qk"]
    assert prefill.bytes(2) == 2 * (64 * 256 * 128 + 8 * 128 * 256 + 64 * 256 * 256)


def test_dtype_scales_bytes_not_flops():
    op = ops("mistral-7b", 1, 1024, 1)["up"]
    assert op.bytes(1) * 4 == op.bytes(4) and op.bytes(1) * 2 == op.bytes(2)


# --------------------------------------------------------------- rows, latency
def test_rows_attainable_and_predicted():
    rows = operator_rows(get_arch("llama-7b"), A100, [1], [1024], [1, 64])
    assert {row["phase"] for row in rows} == {"prefill", "decode", "parallel_decode"}
    decode_qkv = next(r for r in rows if r["phase"] == "decode" and r["operator"] == "qkv")
    assert decode_qkv["attainable_tflops"] == pytest.approx(
        decode_qkv["operational_intensity"] * 1935e9 / 1e12)
    assert decode_qkv["predicted_us"] == pytest.approx(100_696_064 / 1935e9 * 1e6)
    prefill_up = next(r for r in rows if r["phase"] == "prefill" and r["operator"] == "up")
    assert prefill_up["attainable_tflops"] == pytest.approx(312)  # compute-bound


def test_decode_step_is_about_weights_over_bandwidth():
    arch = get_arch("llama-7b")
    # Everything but the input embeddings is read once per decode step.
    weights = 2 * (arch.num_parameters() - arch.vocab_size * arch.hidden_size)
    seconds = predict_step_latency(arch, A100, 1, 16, 1, medusa_heads=0)
    assert seconds == pytest.approx(weights / 1935e9, rel=0.01)


def test_step_latency_is_sum_of_operators_plus_kernel_cost():
    arch = get_arch("llama-13b")
    rows = operator_rows(arch, A100, [2], [512], [32], phases=("parallel_decode",))
    total = sum(row["predicted_us"] * row["per_step"] for row in rows) * 1e-6
    assert predict_step_latency(arch, A100, 2, 512, 32) == pytest.approx(total)
    profile = DeviceProfile("x", 100.0, 1000.0, kernel_overhead_us=5.0)
    kernels = 7 * arch.num_layers + 2
    plain = DeviceProfile("x", 100.0, 1000.0)
    assert predict_step_latency(arch, None, 2, 512, 32, device_profile=profile) == pytest.approx(
        predict_step_latency(arch, None, 2, 512, 32, device_profile=plain) + kernels * 5e-6)


def test_fp8_uses_fp8_peak():
    h100 = get_gpu("h100-sxm")
    assert ceilings(h100, 1).peak_flops == 1979e12
    assert ceilings(h100, 2).peak_flops == 989.5e12
    assert ceilings(get_gpu("a100-80gb-pcie"), 1).peak_flops == 312e12


def test_latency_table_is_roofline_source():
    from treeopt.cost.predict import predict_latency

    table = predict_latency(get_arch("llama-7b"), A100, [1], [1024], [16, 64], "bf16")
    assert table.source == "roofline-model" and table.gpu["name"] == "a100-80gb-pcie"
    assert set(table.measurements) == {(1, 1024, 1), (1, 1024, 16), (1, 1024, 64)}


# ------------------------------------------------------------------- hardware
def test_dense_not_sparse_peaks():
    assert GPUS["h100-sxm"].peak_tflops == 989.5  # the datasheet's 1979 is with sparsity
    assert GPUS["a100-80gb-sxm"].peak_tflops == 312
    assert all(spec.source for spec in GPUS.values())
    assert A100.ridge_intensity == pytest.approx(312e12 / 1935e9)


def test_device_names_match():
    assert gpu_for_device_name("NVIDIA A100-SXM4-80GB").name == "a100-80gb-sxm"
    assert gpu_for_device_name("NVIDIA A100 80GB PCIe").name == "a100-80gb-pcie"
    assert gpu_for_device_name("NVIDIA H100 PCIe").name == "h100-pcie"
    assert gpu_for_device_name("NVIDIA H100 80GB HBM3").name == "h100-sxm"
    assert gpu_for_device_name("NVIDIA L40S").name == "l40s"
    assert gpu_for_device_name("NVIDIA L4").name == "l4"


@pytest.mark.parametrize("call", [
    lambda: get_gpu("a100"),
    lambda: resolve_gpu(None, 100.0, None),
    lambda: resolve_gpu("l4", 100.0, 10.0),
    lambda: custom_gpu(0.0, 10.0),
    lambda: step_operators(get_arch("llama-7b"), 0, 1, 1),
    lambda: step_operators(get_arch("llama-7b"), 1, 1, -3),
])
def test_bad_input_is_one_line(call):
    with pytest.raises(TreeoptError) as info:
        call()
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------ fit
def test_fit_recovers_a_known_device():
    arch = ArchShape("t", 256, 688, 2, 4, 2, 64, 1000)
    true = DeviceProfile("true", peak_tflops=2.0, bandwidth_gbs=50.0, kernel_overhead_us=3.0)
    rows = operator_rows(arch, None, [1, 8, 64], [64, 512], [1, 16, 128], device_profile=true)
    for row in rows:
        row["measured_us"] = row["predicted_us"]
    fitted = fit_device_profile(rows, "synthetic", spec=custom_gpu(4.0, 100.0))
    assert fitted.peak_tflops == pytest.approx(2.0, rel=0.02)
    assert fitted.bandwidth_gbs == pytest.approx(50.0, rel=0.02)
    assert fitted.kernel_overhead_us == pytest.approx(3.0, rel=0.05)
    assert fitted.compute_fraction == pytest.approx(0.5, rel=0.02)
    assert math.isclose(fitted.fit["rms_relative_error"], 0.0, abs_tol=0.02)


def test_dtype_names_either_way():
    from treeopt.cost.roofline import canonical_dtype, dtype_bytes_of, short_dtype

    assert [short_dtype(name) for name in ("bf16", "BFloat16", "float32", "fp8")] == [
        "bf16", "bf16", "fp32", "fp8"]
    assert canonical_dtype("fp16") == canonical_dtype("float16") == "float16"
    assert dtype_bytes_of("bfloat16") == dtype_bytes_of("bf16") == 2
    with pytest.raises(TreeoptError, match=r"^unknown dtype 'int3'"):
        short_dtype("int3")
