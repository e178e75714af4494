"""The overhead sweep: out-of-memory limits, errors, and the CLI's input checks."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from treeopt.cli import app
from treeopt.core.latency import OUT_OF_MEMORY, LatencyTable
from treeopt.cost.predict import is_out_of_memory, sweep
from treeopt.cost.roofline import canonical_dtype
from treeopt.errors import TreeoptError


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError, which the sweep recognizes by name."""


def fake_timer(calls):
    def time_step(batch, context, num_tokens):
        calls.append((batch, context, num_tokens))
        if batch * num_tokens >= 32:  # "memory" runs out at 32 tokens in flight
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return 0.01 * (1 + batch * num_tokens / 16)
    return time_step


def test_oom_is_the_limit_and_the_sweep_goes_on():
    calls, visited, freed = [], [], []
    measurements, notes = sweep(fake_timer(calls), batches=[1, 4], contexts=[128],
                                sizes=[16, 1, 8, 32], on_oom=lambda: freed.append(1),
                                progress=visited.append)
    assert measurements[(1, 128, 16)] == pytest.approx(0.02)
    assert measurements[(1, 128, 32)] is None
    assert measurements[(4, 128, 1)] == pytest.approx(0.0125)
    assert measurements[(4, 128, 8)] is None  # 4 x 8 = 32 tokens: the limit at batch 4
    assert (4, 128, 16) not in measurements  # past the limit: not even tried
    assert (4, 128, 16) not in calls and (4, 128, 32) not in calls
    assert notes == {(1, 128, 32): OUT_OF_MEMORY, (4, 128, 8): OUT_OF_MEMORY}
    assert len(freed) == 2
    assert len(visited) == 8  # a progress bar reaches its total
    table = LatencyTable(measurements, source="measured", device="cpu", dtype="float32",
                         arch="fake", notes=notes)
    assert table.max_num_tokens(4, 128) == 1


def test_other_errors_propagate():
    def broken(batch, context, num_tokens):
        raise ValueError("shape mismatch")

    with pytest.raises(ValueError, match="shape mismatch"):
        sweep(broken, [1], [1], [1])


def test_out_of_memory_recognition():
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("[enforce fail] DefaultCPUAllocator: out of memory"))
    assert not is_out_of_memory(RuntimeError("size mismatch"))


def test_dtype_names():
    assert canonical_dtype("bf16") == "bfloat16"
    with pytest.raises(TreeoptError, match="unknown dtype 'int3'"):
        canonical_dtype("int3")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give --model M, or --random-weights --arch A, or --predict"),
        (["--predict", "--arch", "llama-7b"], "--predict needs --arch"),
        (["--random-weights"], "--random-weights needs --arch"),
        (["--predict", "--arch", "llama-7b", "--gpu", "h100-sxm", "--sizes", "2,4"],
         "--sizes must include 1"),
        (["--random-weights", "--arch", "llama-7b", "--batch", "1,x"],
         "--batch takes comma-separated integers"),
        (["--random-weights", "--arch", "llama-7b", "--context", "0"],
         "--context values must be positive integers, not 0"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, args, message):
    result = CliRunner().invoke(app, ["overhead", "-o", str(tmp_path / "lat.json"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "lat.json").exists()


def test_predict_marks_settings_that_do_not_fit():
    from treeopt.cost.arch import get_arch
    from treeopt.cost.gpus import get_gpu
    from treeopt.cost.predict import PREDICTED_OOM_NOTE, predict_latency

    arch, gpu = get_arch("llama-7b"), get_gpu("a100-80gb-sxm")
    table = predict_latency(arch, gpu, [1, 64], [4096], [2, 16], "bf16")
    assert table.source == "roofline-model" and table.device == "a100-80gb-sxm"
    assert (1, 4096, 1) in table.measurements  # plain decoding is always predicted
    # 64 x 4096 positions of llama-7b KV cache (2 x 32 layers x 4096 x 2 B) = 137 GB > 80 GB
    assert table.measurements[(64, 4096, 1)] is None
    assert table.notes[(64, 4096, 1)] == PREDICTED_OOM_NOTE
    assert table.overhead_curve(1, 4096)[16] > 1.0
