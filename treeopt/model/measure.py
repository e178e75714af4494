"""Measurements on this machine (imports torch inside functions): the runtime's
verification step swept over settings, single operators for the roofline fit, the
current GPU's table entry.

Every timing goes through one timer, :func:`medusa_runtime.timing.time_call`.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from typing import Any

from treeopt.core.latency import (
    DEFAULT_REPEATS,
    DEFAULT_WARMUP,
    MAX_SPREAD,
    MAX_TIMING_ROUNDS,
    TIMING_STATISTIC,
    LatencyTable,
    Setting,
)
from treeopt.cost.arch import ArchShape
from treeopt.cost.gpus import GPUSpec, gpu_for_device_name
from treeopt.cost.predict import sweep
from treeopt.cost.roofline import (
    DTYPE_LONG_NAMES,
    MEASURE_MEMORY_SHARE,
    MEDUSA_NUM_HEADS,
    MatmulOp,
    canonical_dtype,
    dtype_bytes_of,
    row_operator,
    short_dtype,
)
from treeopt.errors import ParameterError, TreeoptError

# Threads for CPU timing when none are asked for: torch's default (every core) lets
# other processes' load into each step, so a busy machine gave a non-monotone table
# (issue 16); one thread times steadily and is what a 1-sequence decode uses anyway.
CPU_TIMING_THREADS = 1
TIMING_STATISTICS = {"median": statistics.median, "min": min}


# ----------------------------------------------------------------- measured
def measure_latency(
    model: Any,
    heads: Any,
    arch_name: str,
    batches: Sequence[int],
    contexts: Sequence[int],
    sizes: Sequence[int],
    device: str,
    dtype: str,
    warmup: int,
    repeats: int,
    show_progress: bool = True,
    compile_step: bool = False,
    threads: int | None = None,
    max_spread: float = MAX_SPREAD,
    max_rounds: int = MAX_TIMING_ROUNDS,
    statistic: str = TIMING_STATISTIC,
) -> LatencyTable:
    """Time the runtime's verification step for every setting on ``device``.

    Uses ``medusa_runtime.timing.time_verification_step`` (warm-up, then
    ``repeats`` samples per setting). The sweep over every setting is one round;
    while some setting's samples spread more than ``max_spread`` ((q3 - q1) /
    median), another round times every setting again, up to ``max_rounds``, and each
    setting keeps ``statistic`` of all its samples. Rounds interleave the sizes, so a
    burst of load on a shared machine lands on all of them rather than on a few (a
    non-monotone table). Size 1 is timed without heads, as plain decoding runs.
    Each setting's final spread is recorded in the table. On
    CPU, torch runs on ``threads`` threads (default :data:`CPU_TIMING_THREADS`)
    while timing, restored afterwards, and the table's method says how many.
    Out-of-memory is recorded as the limit and the sweep goes on (see
    :func:`sweep`). ``compile_step`` times the ``torch.compile``d step. The table
    names the device (``"cpu"`` on CPU), dtype and library versions.

    ``statistic``: :data:`treeopt.core.latency.TIMING_STATISTIC` (``min``: load only
    ever adds time, so the fastest sample is the step's own cost, plain decoding's and
    the tree's alike), or ``median``. A spread still above ``max_spread`` after
    ``max_rounds`` is kept and recorded; :func:`treeopt.core.latency.latency_warnings`
    says so.
    """
    import torch
    import transformers

    summary = _checked_timing(model, contexts, sizes, statistic, max_rounds)
    is_cuda = str(device).startswith("cuda")
    cpu_threads = None if is_cuda else (threads or CPU_TIMING_THREADS)
    samples: dict[Setting, list[float]] = {}

    time_step = _step_timer(model, heads, samples, summary, warmup, repeats, device,
                            compile_step)

    def free_memory() -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    previous_threads = torch.get_num_threads()
    if cpu_threads is not None:
        torch.set_num_threads(cpu_threads)
    try:
        measurements, notes, spreads, rounds = _timing_rounds(
            time_step, samples, batches, contexts, sizes, max_rounds, max_spread,
            show_progress, free_memory)
    finally:
        torch.set_num_threads(previous_threads)
    device_name = torch.cuda.get_device_name(torch.device(device)) if is_cuda else "cpu"
    return LatencyTable(
        measurements=measurements, notes=notes, source="measured",
        device=device_name, dtype=canonical_dtype(dtype), arch=arch_name,
        versions={"torch": torch.__version__, "transformers": transformers.__version__,
                  "cuda": torch.version.cuda if is_cuda else None},
        method={"timer": "medusa_runtime.timing.time_verification_step",
                "statistic": statistic, "warmup": warmup, "repeats": repeats,
                "rounds": rounds, "max_rounds": max_rounds, "max_spread": max_spread,
                "spread": "(q3 - q1) / median of the samples",
                "cpu_threads": cpu_threads, "compiled_step": compile_step},
        spreads=spreads,
    )


def _checked_timing(model: Any, contexts: Sequence[int], sizes: Sequence[int], statistic: str,
                    max_rounds: int) -> Any:
    """The statistic's function, once the settings are checked (before any timing)."""
    if statistic not in TIMING_STATISTICS:
        raise ParameterError("statistic", f"must be one of {', '.join(TIMING_STATISTICS)}, "
                             f"not {statistic!r}")
    if max_rounds < 1:
        raise ParameterError("max_rounds", f"must be >= 1, not {max_rounds}")
    check_contexts_fit(model, contexts, sizes)
    return TIMING_STATISTICS[statistic]


def _step_timer(model: Any, heads: Any, samples: dict[Setting, list[float]], summary: Any,
                warmup: int, repeats: int, device: str, compile_step: bool) -> Any:
    """``time_step(batch, context, num_tokens)``: one more timing of a setting, pooled into
    ``samples``; the statistic of all its samples so far."""
    from medusa_runtime.timing import time_verification_step

    def time_step(batch: int, context: int, num_tokens: int) -> float:
        # n = 1 is plain decoding, which runs no heads (generate without a tree): timed
        # with them it is ~25% slower on a small model, and every overhead too low.
        step_heads = None if num_tokens == 1 else heads
        result = time_verification_step(model, step_heads, num_tokens=num_tokens, batch=batch,
                                        context=context, warmup=warmup, repeats=repeats,
                                        device=device, compile_step=compile_step)
        pooled = samples.setdefault((batch, context, num_tokens), [])
        pooled += [float(value) for value in result["samples_s"]]
        return summary(pooled)

    return time_step


def _timing_rounds(time_step: Any, samples: dict[Setting, list[float]],
                   batches: Sequence[int], contexts: Sequence[int], sizes: Sequence[int],
                   max_rounds: int, max_spread: float, show_progress: bool,
                   free_memory: Any) -> tuple[Any, Any, dict[Setting, float], int]:
    """Sweep every setting, round after round, until every spread is within ``max_spread``
    or ``max_rounds`` ran; (measurements, notes, spreads, rounds run). A bar with an ETA
    grows by one round each time another is needed."""
    from tqdm import tqdm

    per_round = len(batches) * len(contexts) * len(sizes)
    with tqdm(total=per_round, desc="timing verification steps", unit="step",
              disable=not show_progress) as bar:
        for round_index in range(max_rounds):
            def advance(setting: Setting, round_index: int = round_index) -> None:
                bar.set_postfix_str(f"round {round_index + 1} b={setting[0]} "
                                    f"s={setting[1]} n={setting[2]}")
                bar.update()

            measurements, notes = sweep(time_step, batches, contexts, sizes,
                                        on_oom=free_memory, progress=advance)
            spreads = {setting: relative_spread(samples[setting])
                       for setting, seconds in measurements.items() if seconds is not None}
            if all(spread <= max_spread for spread in spreads.values()):
                break
            if round_index + 1 < max_rounds:  # another round: the bar grows by one
                bar.total += per_round
                bar.refresh()
    return measurements, notes, spreads, round_index + 1


def context_room(model: Any, sizes: Sequence[int]) -> int | None:
    """The longest context a step of ``max(sizes)`` tokens fits after (None: no limit)."""
    from medusa_runtime.architectures import position_limit

    limit = position_limit(model)
    return None if limit is None else limit - max(sizes)


def check_contexts_fit(model: Any, contexts: Sequence[int], sizes: Sequence[int]) -> None:
    """ParameterError naming ``context`` when a context leaves no room for the largest size
    in the model's positions (so it fails before timing, not after some of it)."""
    room = context_room(model, sizes)
    too_long = [context for context in contexts if room is not None and context > room]
    if too_long:
        from medusa_runtime.architectures import position_limit

        raise ParameterError("context", f"{', '.join(map(str, too_long))} leave(s) no room "
                             f"for a {max(sizes)}-token step in the model's "
                             f"{position_limit(model)} positions: use contexts <= {room}")


def fitting_contexts(model: Any, contexts: Sequence[int], sizes: Sequence[int]
                     ) -> tuple[list[int], list[int]]:
    """``(kept, dropped)``: default contexts clipped to what the model holds with the
    largest size; when none fits, the longest that does (``kept`` is never empty unless
    even the largest size alone does not fit)."""
    room = context_room(model, sizes)
    if room is None:
        return list(contexts), []
    kept = [context for context in contexts if context <= room]
    dropped = [context for context in contexts if context > room]
    if not kept and room >= 1:
        kept = [room]
    return kept, dropped


def relative_spread(samples: Sequence[float]) -> float:
    """(q3 - q1) / median of ``samples``: 0 for fewer than two or a zero median."""
    if len(samples) < 2:
        return 0.0
    q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return (q3 - q1) / median if median > 0 else 0.0


# -------------------------------------------------------------------- measure
def measurement_device() -> str:
    """``cuda`` when a CUDA device is visible, else ``cpu`` (imports torch)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_label(device: str) -> str:
    """A human name of the device timings come from, e.g. ``NVIDIA H100 80GB HBM3`` or ``cpu``."""
    import platform

    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _free_bytes(device: str) -> float:
    import torch

    if device == "cuda":
        free, _total = torch.cuda.mem_get_info()
        return float(free)
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return math.inf


def time_matmul(op: MatmulOp, dtype: str = "bf16", device: str = "cpu",
                warmup: int = DEFAULT_WARMUP, repeats: int = DEFAULT_REPEATS) -> float:
    """Median seconds of one ``op`` on ``device`` (CUDA events on GPU, perf_counter on CPU)."""
    import torch

    dtype = short_dtype(dtype)
    if dtype == "fp8":
        raise TreeoptError("--measure does not time fp8 (torch has no plain fp8 matmul); "
                           "use bf16 or fp16")
    torch_dtype = getattr(torch, DTYPE_LONG_NAMES[dtype])
    left = torch.randn(op.count, op.m, op.k, dtype=torch_dtype, device=device)
    right = torch.randn(op.count, op.k, op.n, dtype=torch_dtype, device=device)
    out = torch.empty(op.count, op.m, op.n, dtype=torch_dtype, device=device)
    from medusa_runtime.timing import time_samples

    def run() -> None:
        torch.matmul(left, right, out=out)

    with torch.inference_mode():
        samples = time_samples(run, device, warmup, repeats)
    return statistics.median(samples)


def measure_operators(
    arch: ArchShape, rows: list[dict[str, Any]], dtype: str = "bf16", device: str | None = None,
    warmup: int = DEFAULT_WARMUP, repeats: int = DEFAULT_REPEATS,
    medusa_heads: int = MEDUSA_NUM_HEADS, progress: Any = None, show_progress: bool = False,
) -> list[dict[str, Any]]:
    """Copies of ``rows`` with ``measured_us`` and ``measured_tflops`` timed on this device.

    Identical shapes are timed once. ``show_progress`` draws a bar with an ETA on
    stderr (one tick per row); ``progress`` is called after each row. An operator
    whose operands would take more than :data:`MEASURE_MEMORY_SHARE` of free memory
    gets ``None`` and a ``note``.
    """
    device = device or measurement_device()
    dtype_bytes = dtype_bytes_of(dtype)
    budget = MEASURE_MEMORY_SHARE * _free_bytes(device)
    cache: dict[tuple[int, int, int, int], float | None] = {}
    measured = []
    from tqdm import tqdm

    for row in tqdm(rows, desc=f"timing operators on {device}", unit="op",
                    disable=not show_progress):
        op = row_operator(arch, row, medusa_heads)
        key = (op.count, op.m, op.k, op.n)
        if key not in cache:
            cache[key] = (None if op.bytes(dtype_bytes) > budget
                          else time_matmul(op, dtype, device, warmup, repeats))
        seconds = cache[key]
        result = dict(row)
        result["measured_us"] = None if seconds is None else seconds * 1e6
        result["measured_tflops"] = None if seconds is None else op.flops / seconds / 1e12
        if seconds is None:
            result["note"] = "skipped: operands exceed the memory share for measuring"
        measured.append(result)
        if progress is not None:
            progress()
    return measured



def gpu_auto() -> GPUSpec:
    """The current CUDA device's table entry, matched by its name (imports torch)."""
    import torch

    if not torch.cuda.is_available():
        raise TreeoptError("--gpu auto needs a CUDA device and none is visible; name a GPU")
    return gpu_for_device_name(torch.cuda.get_device_name())


