"""The Medusa appendix's speedup simulations: acceleration rate over roofline overhead.

For a batch b, context s and candidates q (tokens verified per step, root
included): ``acceleration_rate`` = expected accept length of the best tree of q
tokens (root's token included; 1.0 at q = 1), ``overhead`` = predicted step
latency(q) / latency(1) from :mod:`treeopt.cost.roofline`, and ``speedup`` =
acceleration_rate / overhead: tokens per second over plain decoding's.

Pure functions; the acceleration curve is an input, so the builder is only
needed by the CLI.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from treeopt.cost.arch import ArchShape
from treeopt.cost.gpus import GPUSpec
from treeopt.cost.roofline import (
    MEDUSA_NUM_HEADS,
    DeviceProfile,
    fits_in_memory,
    predict_step_latency,
)
from treeopt.errors import ParameterError, TreeoptError
from treeopt.optimize.tune import points_at

# The keys of one simulation row, in output order.
SIMULATION_KEYS = ("batch", "context", "candidates", "acceleration_rate", "overhead", "speedup")
LOG_ACCEPTANCE_PREFIX = "log:"


def log_acceleration_curve(coefficient: float, max_candidates: int) -> list[float]:
    """The appendix's logarithmic fit, ``acc(q) = 1 + A * ln(q)``, for q = 1..max_candidates.

    Natural logarithm; the 1 is the root's own token, so q = 1 (plain decoding)
    accepts exactly one token per step, as every curve in treeopt does.
    """
    if not (math.isfinite(coefficient) and coefficient > 0):
        raise TreeoptError(f"log acceptance coefficient must be positive, not {coefficient!r}")
    return [1.0 + coefficient * math.log(q) for q in range(1, max_candidates + 1)]


def parse_acceptance(text: str) -> float:
    """``"log:0.3"`` -> 0.3; one-line error for anything else."""
    if not text.startswith(LOG_ACCEPTANCE_PREFIX):
        raise ParameterError("acceptance", f"takes log:A (acc = 1 + A ln q), not {text!r}")
    try:
        coefficient = float(text[len(LOG_ACCEPTANCE_PREFIX):])
    except ValueError:
        raise ParameterError("acceptance", f"log:A needs a number A, not {text!r}") from None
    if not (math.isfinite(coefficient) and coefficient > 0):
        raise ParameterError("acceptance", f"log:A needs A > 0, not {text!r}")
    return coefficient


def simulate(
    acceleration: Sequence[float], arch: ArchShape, gpu: GPUSpec | None,
    batches: Sequence[int], contexts: Sequence[int], candidates: Sequence[int],
    dtype_bytes: float = 2, device_profile: DeviceProfile | None = None,
    medusa_heads: int = MEDUSA_NUM_HEADS,
) -> list[dict[str, Any]]:
    """One row per (batch, context, candidates) with exactly :data:`SIMULATION_KEYS`.

    ``acceleration[q - 1]`` is the acceleration rate at q candidates
    (``acceleration[0]`` = 1.0). Rows are ordered by batch, context, candidates.
    A setting whose weights plus KV cache (context + q positions per sequence)
    exceed the GPU's memory has no row, as ``treeopt overhead --predict`` marks it
    out of memory.
    """
    if not acceleration or abs(acceleration[0] - 1.0) > 1e-9:
        raise TreeoptError("an acceleration curve starts at 1.0 (plain decoding, q = 1)")
    too_many = [q for q in candidates if q > len(acceleration)]
    if too_many:
        raise TreeoptError(
            f"candidates {max(too_many)} exceeds the acceleration curve's {len(acceleration)} "
            f"sizes"
        )
    rows = []
    for batch in batches:
        for context in contexts:
            if not fits_in_memory(arch, gpu, batch, context, 1, dtype_bytes):
                continue
            base = predict_step_latency(arch, gpu, batch, context, 1, dtype_bytes,
                                        device_profile, medusa_heads)
            overhead = {
                q: predict_step_latency(arch, gpu, batch, context, q, dtype_bytes,
                                        device_profile, medusa_heads) / base
                for q in candidates if fits_in_memory(arch, gpu, batch, context, q, dtype_bytes)
            }
            rows += [{"batch": batch, "context": context, "candidates": point.num_tokens,
                      "acceleration_rate": point.expected_accept_length,
                      "overhead": point.overhead, "speedup": point.speedup}
                     for point in points_at(acceleration, overhead, overhead)]
    return rows


def best_candidates(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (batch, context), the simulation row with the highest speedup (fewest q on ties)."""
    best: dict[tuple[int, int], dict[str, Any]] = {}
    for row in rows:
        key = (row["batch"], row["context"])
        if key not in best or row["speedup"] > best[key]["speedup"]:
            best[key] = row
    return [best[key] for key in sorted(best)]


def builder_acceleration_curve(profile_name: str, max_candidates: int) -> list[float]:
    """Expected accept length of the profile's nested optimal trees, num_tokens 1..max."""
    from treeopt.files.profile_file import load_profile
    from treeopt.optimize.build import MIN_BUDGET, build_tree

    profile = load_profile(profile_name)
    if max_candidates < MIN_BUDGET:
        return [1.0]  # only plain decoding asked for: nothing to build
    try:
        curve = list(build_tree(profile, max_candidates).curve)
    except TreeoptError as exc:
        raise ParameterError("candidates", f"up to {max_candidates}: {exc}") from None
    if len(curve) < max_candidates:
        raise ParameterError(
            "candidates", f"up to {max_candidates}: profile {profile_name} supports trees of at "
            f"most {len(curve)} tokens"
        )
    return curve[:max_candidates]
