"""The ``treeopt.latency/1`` format: verification-step latency per setting.

One file holds the latency of one tree-verification step, in seconds, for each
(batch, context, num_tokens) it covers, measured on a device (``treeopt
overhead``) or predicted by the roofline model (``treeopt overhead --predict``):

.. code-block:: json

    {"format": "treeopt.latency/1", "source": "measured",
     "device": "NVIDIA H100 80GB HBM3", "dtype": "bfloat16", "arch": "llama-7b",
     "created": "2025-01-01T00:00:00Z",
     "versions": {"torch": "2.5.1", "transformers": "4.46.0"},
     "gpu": null, "method": {"warmup": 3, "repeats": 10},
     "measurements": [
       {"batch": 1, "context": 1024, "num_tokens": 1, "latency_s": 0.0123},
       {"batch": 64, "context": 4096, "num_tokens": 256, "latency_s": null,
        "note": "out of memory"}]}

``num_tokens`` counts the root (1 = plain decoding). ``latency_s: null`` means
the setting did not fit: it is the limit for that batch and context, and every
larger size there counts as unavailable too. The JSON Schema ships as
``treeopt/schemas/latency.schema.json``.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

from treeopt.core.checks import is_integer
from treeopt.core.timestamps import utc_now
from treeopt.errors import TreeoptError

# The context the Medusa appendix analyses tree size at: what tuning uses when a
# table has several and none is asked for (the nearest covered one).
DEFAULT_CONTEXT = 1024

FORMAT = "treeopt.latency/1"
SOURCES = ("measured", "roofline-model")
OUT_OF_MEMORY = "out of memory"
# Timing defaults of every measured table (the runtime's timer and the operator timer):
# steps are fixed-shape replays, so the median of a few repeats after a short warm-up
# is stable.
DEFAULT_WARMUP = 3
DEFAULT_REPEATS = 10
# Relative spread of a setting's samples, (q3 - q1) / median: a measured sweep
# repeats a setting until its spread is at most this (steady timings on a quiet
# device are within a few percent; a busy CPU is not) ...
MAX_SPREAD = 0.05
# ... up to this many rounds of ``repeats`` samples, then keeps what it has (and
# :func:`latency_warnings` says the spread was not reached).
MAX_TIMING_ROUNDS = 4
# The one statistic every measured table keeps of a setting's samples: the fastest.
# Load from other work only ever adds time to a fixed-shape step (on a shared CPU
# most of all), so the minimum is the step's own cost, for plain decoding and every
# tree alike; on a quiet GPU it is within the spread of the median.
TIMING_STATISTIC = "min"
TIMING_STATISTIC_TEXT = "the fastest sample (min) of each size is kept"
# A larger tree's step may look faster than a smaller one's by timing noise; only a
# drop beyond this fraction (or the recorded spread, when larger) is flagged.
MONOTONE_TOLERANCE = 0.05

Setting = tuple[int, int, int]  # (batch, context, num_tokens)


@dataclass(frozen=True)
class LatencyTable:
    """Verification-step latency (seconds) per (batch, context, num_tokens).

    Attributes:
        measurements: ``(batch, context, num_tokens) -> seconds``, or ``None`` where
            the setting ran out of memory (the limit for that batch and context).
        source: ``"measured"`` or ``"roofline-model"``.
        device: the device measured (``"cpu"`` on CPU) or the GPU predicted for.
        dtype: weights' and activations' dtype (``"bfloat16"``...).
        arch: the model shape (``"llama-7b"``, a config or model path).
        created: UTC ISO-8601 time the table was made.
        versions: library versions of a measured run (torch, transformers, cuda).
        gpu: the GPU spec a roofline prediction used; None for measurements.
        method: free-form description of how the numbers were obtained.
        notes: ``setting -> why its latency is None`` (e.g. ``"out of memory"``).
        spreads: ``setting -> (q3 - q1) / median`` of its timing samples (measured
            tables; empty for predictions and older files).
    """

    measurements: dict[Setting, float | None]
    source: str
    device: str
    dtype: str
    arch: str
    created: str = field(default_factory=utc_now)
    versions: dict[str, str | None] = field(default_factory=dict)
    gpu: dict[str, Any] | None = None
    method: dict[str, Any] = field(default_factory=dict)
    notes: dict[Setting, str] = field(default_factory=dict)
    spreads: dict[Setting, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise TreeoptError(
                f"latency source {self.source!r} is not one of {', '.join(SOURCES)}"
            )
        for setting, seconds in self.measurements.items():
            _check_setting(setting)
            if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
                batch, context, num_tokens = setting
                raise TreeoptError(
                    f"latency at batch {batch}, context {context}, num_tokens {num_tokens} "
                    f"is {seconds!r}: must be a positive number of seconds or null (out of memory)"
                )

    # ---------------------------------------------------------------- queries
    @property
    def batches(self) -> list[int]:
        """Batch sizes the table covers, ascending."""
        return sorted({batch for batch, _, _ in self.measurements})

    @property
    def contexts(self) -> list[int]:
        """Context lengths the table covers, ascending."""
        return sorted({context for _, context, _ in self.measurements})

    def settings(self) -> list[tuple[int, int]]:
        """The (batch, context) pairs the table covers, ascending."""
        return sorted({(batch, context) for batch, context, _ in self.measurements})

    def describe(self) -> str:
        """One line naming where the numbers come from, for users and provenance."""
        if self.source == "measured":
            return f"measured on {self.device} ({self.arch}, {self.dtype})"
        return f"roofline-model prediction for {self.device} ({self.arch}, {self.dtype})"

    def _row(self, batch: int, context: int) -> dict[int, float | None]:
        """``num_tokens -> seconds or None`` at one setting; one-line error if absent."""
        row = {
            num_tokens: seconds
            for (b, s, num_tokens), seconds in self.measurements.items()
            if b == batch and s == context
        }
        if not row:
            raise TreeoptError(
                f"latency table has no batch {batch} at context {context} (it covers batches "
                f"{', '.join(map(str, self.batches))} and contexts "
                f"{', '.join(map(str, self.contexts))})"
            )
        return row

    def oom_limit(self, batch: int, context: int) -> int | None:
        """The smallest num_tokens that ran out of memory at this setting, or None."""
        failed = [n for n, seconds in self._row(batch, context).items() if seconds is None]
        return min(failed) if failed else None

    def measured_sizes(self, batch: int, context: int) -> list[int]:
        """Sizes with a latency at this setting below its out-of-memory limit, ascending."""
        limit = self.oom_limit(batch, context)
        return sorted(
            n for n, seconds in self._row(batch, context).items()
            if seconds is not None and (limit is None or n < limit)
        )

    def max_num_tokens(self, batch: int, context: int) -> int:
        """The largest size the overhead curve covers here (no extrapolation past it)."""
        sizes = self.measured_sizes(batch, context)
        if not sizes:
            raise TreeoptError(
                f"latency table has no usable size at batch {batch}, context {context} "
                f"(every size ran out of memory)"
            )
        return sizes[-1]

    def latency_curve(self, batch: int, context: int) -> dict[int, float]:
        """Step latency in seconds for every integer num_tokens from 1 to the largest size.

        Rule for sizes between measured ones: the latency is interpolated linearly
        in num_tokens between the two nearest measured sizes (step time is close to
        piecewise linear in the token count between kernel-tile boundaries, and a
        straight line never invents a minimum that was not measured). Sizes above
        the largest usable measured size (the last one below an out-of-memory
        limit) are absent: nothing is extrapolated. num_tokens 1 must be measured,
        since every overhead is relative to it.
        """
        row = self._row(batch, context)
        sizes = self.measured_sizes(batch, context)
        if 1 not in sizes:
            reason = "ran out of memory" if row.get(1, 0.0) is None else "is not in the table"
            raise TreeoptError(
                f"latency at batch {batch}, context {context}, num_tokens 1 {reason}: "
                f"overheads are relative to plain decoding (num_tokens 1)"
            )
        latencies = [row[n] for n in sizes]
        curve: dict[int, float] = {}
        for n in range(1, sizes[-1] + 1):
            right = bisect.bisect_left(sizes, n)
            if sizes[right] == n:
                curve[n] = float(latencies[right])  # type: ignore[arg-type]
                continue
            n0, n1 = sizes[right - 1], sizes[right]
            t0, t1 = latencies[right - 1], latencies[right]
            curve[n] = t0 + (t1 - t0) * (n - n0) / (n1 - n0)  # type: ignore[operator]
        return curve

    def overhead_curve(self, batch: int, context: int) -> dict[int, float]:
        """``num_tokens -> latency(num_tokens) / latency(1)`` at this setting.

        Covers every integer size from 1 to :meth:`max_num_tokens`, with the
        interpolation rule of :meth:`latency_curve`; overhead(1) is exactly 1.
        Raises a one-line TreeoptError listing the covered settings when the
        batch/context is not in the table.
        """
        latencies = self.latency_curve(batch, context)
        base = latencies[1]
        return {n: seconds / base for n, seconds in latencies.items()}

    def setting(self, batch: int | None = None, context: int | None = None) -> tuple[int, int]:
        """``(batch, context)`` with the defaults filled in: the smallest batch, the
        context nearest :data:`DEFAULT_CONTEXT`."""
        return (self.batches[0] if batch is None else batch,
                self.nearest_context(DEFAULT_CONTEXT) if context is None else context)

    def nearest_context(self, context: int) -> int:
        """The covered context closest to ``context`` (ties go to the longer one)."""
        return min(self.contexts, key=lambda s: (abs(s - context), -s))


# A predicted step faster than this is below what launching the kernels of one forward
# pass costs (several kernels a layer, a few microseconds each): launch-bound.
LAUNCH_BOUND_SECONDS = 20e-6


def launch_bound_warning(table: LatencyTable) -> str | None:
    """One line when a roofline prediction's fastest step is under LAUNCH_BOUND_SECONDS:
    the model is so small that kernel launches, not FLOPs or bytes, set its step time,
    so the datasheet figures are only a lower bound. None otherwise (and for measurements).
    """
    if table.source != "roofline-model":
        return None
    known = [seconds for seconds in table.measurements.values() if seconds is not None]
    if not known or min(known) >= LAUNCH_BOUND_SECONDS:
        return None
    return (f"predicted step of {min(known) * 1e6:.3g} us: a model this small is launch-bound "
            "(each kernel launch costs microseconds), so the roofline's datasheet numbers are "
            "a lower bound, not a forecast; measure it (treeopt overhead --model)")


def latency_warnings(table: LatencyTable, tolerance: float = MONOTONE_TOLERANCE) -> list[str]:
    """Reasons not to trust ``table``, one line each; empty when it looks sane.

    A verification step over more tokens does at least the work of one over fewer,
    so at each (batch, context) latency should not fall as num_tokens grows. Flags
    (1) a size slower than a larger one by more than the noise (``tolerance``, or
    the two settings' recorded spreads when larger) and (2) overhead below 1 at
    n > 1 (a tree step faster than plain decoding), which makes every predicted
    speedup meaningless: typically a busy machine, or CPU threads left at torch's
    default while timing.
    """
    launch_bound = launch_bound_warning(table)
    problems = [] if launch_bound is None else [launch_bound]
    for batch, context in table.settings():
        try:
            curve = {n: table.measurements[(batch, context, n)]
                     for n in table.measured_sizes(batch, context)}
        except TreeoptError:
            continue
        sizes = sorted(curve)
        if 1 in curve:
            faster = [n for n in sizes if n > 1 and curve[n] < curve[1] * (1 - tolerance)]
            if faster:
                n = faster[0]
                problems.append(
                    f"batch {batch}, context {context}: overhead {curve[n] / curve[1]:.3f} < 1 "
                    f"at n={n} (a {n}-token step timed faster than plain decoding): the "
                    "timings are noise; measure on a quiet machine with threads set")
        for index, small in enumerate(sizes):
            for large in sizes[index + 1:]:
                noise = max(tolerance, table.spreads.get((batch, context, small), 0.0),
                            table.spreads.get((batch, context, large), 0.0))
                if curve[large] < curve[small] * (1 - noise):
                    problems.append(
                        f"batch {batch}, context {context}: n={large} timed "
                        f"{curve[large] * 1e3:.4g} ms, faster than n={small} "
                        f"({curve[small] * 1e3:.4g} ms) beyond the noise ({noise:.0%})")
                    break
            else:
                continue
            break
    return problems + spread_warnings(table)


def spread_warnings(table: LatencyTable) -> list[str]:
    """One line per (batch, context) whose timings never got within the table's target
    spread (``method["max_spread"]``, e.g. 5 %) in the rounds it had: the repeats did not
    reach it, and the figures are that noisy."""
    target = table.method.get("max_spread") if table.method else None
    if not target:
        return []
    rounds = table.method.get("rounds")
    lines = []
    for batch, context in table.settings():
        wide = {n: spread for (b, s, n), spread in sorted(table.spreads.items())
                if b == batch and s == context and spread > target}
        if wide:
            shown = ", ".join(f"n={n}: {spread:.0%}" for n, spread in wide.items())
            lines.append(f"batch {batch}, context {context}: timing spread above the "
                         f"{target:.0%} target after {rounds} round(s) ({shown}): not reached, "
                         "the latencies are that noisy (a busy machine?)")
    return lines


def _check_setting(setting: Setting) -> None:
    for name, value in zip(("batch", "context", "num_tokens"), setting, strict=True):
        if not is_integer(value) or value < 1:
            raise TreeoptError(f"latency {name} {value!r} is not a positive integer")


