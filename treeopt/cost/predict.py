"""Per-step overhead tables: measured with the runtime, or predicted by the roofline model.

Both produce a :class:`~treeopt.core.latency.LatencyTable` (``treeopt.latency/1``).
The measured sweep times the runtime's real verification step
(``medusa_runtime.timing.time_verification_step``: static cache, captured,
warm-up then median of repeats); torch is imported inside the functions that
need it, so ``treeopt overhead --predict`` never loads it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from treeopt.core.latency import OUT_OF_MEMORY, LatencyTable, Setting
from treeopt.cost.roofline import MEMORY_RULE, canonical_dtype
from treeopt.errors import TreeoptError

StepTimer = Callable[[int, int, int], float]  # (batch, context, num_tokens) -> seconds
PREDICTED_OOM_NOTE = MEMORY_RULE  # the note a predicted table gives an out-of-memory setting


def is_out_of_memory(exc: BaseException) -> bool:
    """True for the errors a device raises when a setting does not fit in its memory."""
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    return name == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def sweep(
    time_step: StepTimer,
    batches: Sequence[int],
    contexts: Sequence[int],
    sizes: Sequence[int],
    on_oom: Callable[[], None] = lambda: None,
    progress: Callable[[Setting], None] = lambda setting: None,
) -> tuple[dict[Setting, float | None], dict[Setting, str]]:
    """Time every (batch, context, num_tokens); returns (measurements, notes).

    Sizes go in ascending order per (batch, context). The first size that runs out
    of memory is recorded as ``None`` with note "out of memory" (the limit for
    that setting), ``on_oom`` frees what it can, the larger sizes of that setting
    are skipped (they cannot fit either) and the sweep goes on with the next
    setting. Any other error propagates. ``progress`` is called once per setting
    visited, skipped ones included, so a progress bar ends at its total.
    """
    measurements: dict[Setting, float | None] = {}
    notes: dict[Setting, str] = {}
    for batch in batches:
        for context in contexts:
            out_of_memory = False
            for num_tokens in sorted(sizes):
                setting = (batch, context, num_tokens)
                if not out_of_memory:
                    try:
                        measurements[setting] = float(time_step(batch, context, num_tokens))
                    except Exception as exc:
                        if not is_out_of_memory(exc):
                            raise
                        on_oom()
                        measurements[setting] = None
                        notes[setting] = OUT_OF_MEMORY
                        out_of_memory = True
                progress(setting)
    return measurements, notes


def check_sizes(values: Iterable[int], option: str) -> list[int]:
    """Sorted unique positive ints; one-line error naming ``option`` otherwise."""
    result = sorted(set(values))
    if not result:
        raise TreeoptError(f"{option} needs at least one value")
    bad = [value for value in result if value < 1]
    if bad:
        raise TreeoptError(f"{option} values must be positive integers, not {bad[0]}")
    return result


# ---------------------------------------------------------------- predicted
def predict_latency(
    arch: Any,
    gpu: Any,
    batches: Sequence[int],
    contexts: Sequence[int],
    sizes: Sequence[int],
    dtype: str = "bfloat16",
    device_profile: Any = None,
) -> LatencyTable:
    """The roofline model's step latency for each setting, as a ``roofline-model`` table.

    Each latency is ``treeopt.cost.roofline.predict_step_latency``. A setting whose
    weights plus KV cache (context + num_tokens positions per sequence) exceed
    the GPU's memory is recorded as out of memory, as a measured sweep would
    record it; a GPU given without a capacity (memory 0) never runs out.
    """
    from treeopt.cost.roofline import ceilings, dtype_bytes_of, fits_in_memory, predict_step_latency

    long_name = canonical_dtype(dtype)
    dtype_bytes = dtype_bytes_of(dtype)

    def time_step(batch: int, context: int, num_tokens: int) -> float:
        if not fits_in_memory(arch, gpu, batch, context, num_tokens, dtype_bytes):
            raise MemoryError(PREDICTED_OOM_NOTE)
        return predict_step_latency(arch, gpu, batch, context, num_tokens,
                                    dtype_bytes=dtype_bytes, device_profile=device_profile)

    measurements, notes = sweep(time_step, batches, contexts, sorted(set(sizes) | {1}))
    method: dict[str, Any] = {
        "model": "roofline: sum over operators of max(flops/peak, bytes/bandwidth)",
        "ceilings": ceilings(gpu, dtype_bytes, device_profile).label,
        "oom_rule": PREDICTED_OOM_NOTE,
    }
    if device_profile is not None:
        method["device_profile"] = device_profile.to_json()
    return LatencyTable(
        measurements=measurements,
        notes={setting: PREDICTED_OOM_NOTE for setting in notes},
        source="roofline-model", device=gpu.name, dtype=long_name, arch=arch.name,
        gpu=gpu.as_dict(), method=method,
    )
