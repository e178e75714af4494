"""The roofline model of a Medusa verification step, and its calibration by measurement.

Conventions (those of the Medusa paper's appendix):

* Every operator is a batched matrix multiply ``[count, m, k] @ [count, k, n]``.
  A multiply-add is 2 FLOPs, so FLOPs = ``2 * count * m * k * n``.
* Each operator reads its inputs and weights once and writes its output once:
  bytes = ``dtype_bytes * count * (m*k + k*n + m*n)`` (2 bytes per element for
  fp16/bf16). Attention is NOT fused: ``qk`` writes the score matrix and ``pv``
  reads it back, which is what makes long contexts expensive.
* Operational intensity = FLOPs / bytes. On a device with peak P (FLOP/s) and
  bandwidth W (bytes/s) an operator takes ``max(flops / P, bytes / W)``, i.e. it
  runs at ``attainable = min(P, intensity * W)``.
* ``context`` s is the number of key/value positions each query attends;
  ``candidates`` q is the number of tokens verified per sequence (the tree's
  ``num_tokens``, root included). Phases: prefill (q = s new tokens), decode
  (q = 1), parallel decode (q > 1 tree tokens).
* Sliding-window attention (Zephyr-7B): a query attends at most the window's
  positions, so ``qk``/``pv`` use ``min(context, window)``.
* GQA: queries of the heads that share a KV head are stacked, so K and V are read
  once per KV head: ``qk`` is ``[b*kv_heads, group*q, head_dim] @ [.., head_dim, s]``.
* Per layer: ``qkv``, ``qk``, ``pv``, ``o``, ``up``, ``gate``, ``down``. Once per
  step: ``lm_head`` and ``medusa_heads`` (each Medusa-1 head is a hidden x hidden
  ResBlock and its own hidden x vocab projection, modelled as one batched matmul
  over the heads), both on every one of the q tokens as Medusa's tree decoding does.
  Norms, RoPE and softmax are element-wise and left out, as in the appendix.

This module imports neither torch nor numpy at import time; :func:`measure_operators`
imports torch and :func:`fit_device_profile` numpy inside.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from treeopt.core.checks import check_int
from treeopt.core.dtypes import (  # noqa: F401  (re-exported: the roofline's dtype names)
    DTYPE_BYTES,
    DTYPE_LONG_NAMES,
    DTYPE_SHORT_NAMES,
    canonical_dtype,
    dtype_bytes_of,
    short_dtype,
)
from treeopt.cost.arch import ArchShape
from treeopt.cost.gpus import GPUSpec
from treeopt.errors import TreeoptError

PHASES = ("prefill", "decode", "parallel_decode")
LAYER_OPERATORS = ("qkv", "qk", "pv", "o", "up", "gate", "down")
STEP_OPERATORS = ("lm_head", "medusa_heads")
OPERATORS = LAYER_OPERATORS + STEP_OPERATORS

# FasterDecoding/medusa-vicuna-7b-v1.3 config.json: medusa_num_heads 5, medusa_num_layers 1.
MEDUSA_NUM_HEADS = 5

DEVICE_PROFILE_FORMAT = "treeopt.device/1"
# What :func:`fits_in_memory` checks, as latency files and messages state it.
MEMORY_RULE = "predicted out of memory: weights + KV cache(context + num_tokens) > memory_gb"

# --measure defaults: untimed warm-up calls, then the median of timed repeats.
# Operators whose operands would take more than this share of free memory are skipped.
MEASURE_MEMORY_SHARE = 0.25


@dataclass(frozen=True)
class MatmulOp:
    """One operator as a batched matmul ``[count, m, k] @ [count, k, n] -> [count, m, n]``.

    ``per_step`` is how many times a verification step runs it (the number of
    layers for per-layer operators, 1 for ``lm_head`` and ``medusa_heads``).
    """

    name: str
    count: int
    m: int
    k: int
    n: int
    per_step: int

    @property
    def flops(self) -> int:
        """2 FLOPs per multiply-add."""
        return 2 * self.count * self.m * self.k * self.n

    def bytes(self, dtype_bytes: float = 2) -> float:
        """Both operands read once, the output written once."""
        return dtype_bytes * self.count * (self.m * self.k + self.k * self.n + self.m * self.n)

    def intensity(self, dtype_bytes: float = 2) -> float:
        """Operational intensity, FLOPs per byte."""
        return self.flops / self.bytes(dtype_bytes)


def step_operators(
    arch: ArchShape, batch: int, context: int, candidates: int,
    medusa_heads: int = MEDUSA_NUM_HEADS,
) -> list[MatmulOp]:
    """The operators of one step verifying ``candidates`` tokens for each of ``batch`` sequences.

    Each query attends ``context`` key/value positions (at most the arch's sliding
    window). ``medusa_heads = 0`` leaves the heads out (a plain model).
    """
    check_int(batch, "batch")
    check_int(context, "context")
    check_int(candidates, "candidates")
    check_int(medusa_heads, "medusa_heads", minimum=0)
    tokens = batch * candidates
    hidden, layers = arch.hidden_size, arch.num_layers
    context = arch.attended_positions(context)
    group = arch.num_attention_heads // arch.num_key_value_heads
    attention_count = batch * arch.num_key_value_heads
    ops = [
        MatmulOp("qkv", 1, tokens, hidden, arch.q_size + 2 * arch.kv_size, layers),
        MatmulOp("qk", attention_count, group * candidates, arch.head_dim, context, layers),
        MatmulOp("pv", attention_count, group * candidates, context, arch.head_dim, layers),
        MatmulOp("o", 1, tokens, arch.q_size, hidden, layers),
        MatmulOp("up", 1, tokens, hidden, arch.intermediate_size, layers),
        MatmulOp("gate", 1, tokens, hidden, arch.intermediate_size, layers),
        MatmulOp("down", 1, tokens, arch.intermediate_size, hidden, layers),
        MatmulOp("lm_head", 1, tokens, hidden, arch.vocab_size, 1),
    ]
    if medusa_heads:
        ops.append(MatmulOp("medusa_heads", medusa_heads, tokens, hidden,
                            hidden + arch.vocab_size, 1))
    return ops


# --------------------------------------------------------------- device profile
@dataclass(frozen=True)
class DeviceProfile:
    """What a device achieves, fitted from ``roofline --measure``.

    ``peak_tflops`` and ``bandwidth_gbs`` are the achieved ceilings (not the
    datasheet's); ``kernel_overhead_us`` is the fixed cost of one operator
    (launch, tails), charged once per operator instance in a step. The fractions
    relate them to the datasheet spec the fit was given, when there was one.

    ``layer_overhead_us``, ``pass_overhead_us`` and ``token_layer_overhead_us`` are
    the time a whole forward pass spends outside the matmuls as the roofline counts
    them (norms, RoPE, softmax, masks, framework dispatch; acceptance and cache
    bookkeeping; weights streamed from memory rather than cache), charged once per
    decoder layer, once per forward pass and once per token per decoder layer. They
    are 0 unless fitted from timed steps (:func:`fit_pass_overheads`), and a
    datasheet GPU never has them.
    """

    device: str
    peak_tflops: float
    bandwidth_gbs: float
    kernel_overhead_us: float = 0.0
    layer_overhead_us: float = 0.0
    pass_overhead_us: float = 0.0
    token_layer_overhead_us: float = 0.0
    compute_fraction: float | None = None
    bandwidth_fraction: float | None = None
    spec: dict[str, Any] | None = None
    dtype: str = "bf16"
    fit: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``treeopt.device/1`` object."""
        return {"format": DEVICE_PROFILE_FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: Any, where: str = "device profile") -> DeviceProfile:
        """Validate a parsed ``treeopt.device/1`` object; one-line TreeoptError on a problem."""
        if not isinstance(data, dict) or data.get("format") != DEVICE_PROFILE_FORMAT:
            raise TreeoptError(f"{where} is not a {DEVICE_PROFILE_FORMAT} object")
        for key in ("peak_tflops", "bandwidth_gbs"):
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
                    or not math.isfinite(value):
                raise TreeoptError(
                    f"{where}: {key} must be positive and finite, not {value!r:.40}")
        for key in ("kernel_overhead_us", "layer_overhead_us", "pass_overhead_us",
                    "token_layer_overhead_us"):
            overhead = data.get(key, 0.0)
            if isinstance(overhead, bool) or not isinstance(overhead, (int, float)) or \
                    not 0 <= overhead < math.inf:
                raise TreeoptError(f"{where}: {key} must be >= 0, not {overhead!r:.40}")
        for key in ("compute_fraction", "bandwidth_fraction"):
            value = data.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value < math.inf):
                raise TreeoptError(f"{where}: {key} must be a number >= 0, not {value!r:.40}")
        if not isinstance(data.get("device"), str):
            raise TreeoptError(f"{where}: device must be a string naming the device")
        for key, kind in (("dtype", str), ("spec", dict), ("fit", dict)):
            value = data.get(key)
            if value is not None and not isinstance(value, kind):
                raise TreeoptError(f"{where}: {key} must be a {kind.__name__}, not {value!r:.40}")
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})


def save_device_profile(path: str | os.PathLike[str], profile: DeviceProfile) -> None:
    """Write ``profile`` as ``treeopt.device/1`` JSON, atomically."""
    import json

    from treeopt.core.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(profile.to_json(), indent=1) + "\n")


def load_device_profile(path: str | os.PathLike[str]) -> DeviceProfile:
    """Read a ``treeopt.device/1`` file."""
    from treeopt.files.jsondoc import read_json

    return DeviceProfile.from_json(read_json(path, "device profile"), f"device profile {path}")


@dataclass(frozen=True)
class Ceilings:
    """The numbers a prediction uses: FLOP/s, bytes/s, seconds per operator instance,
    per decoder layer and per forward pass (the last two 0 for a datasheet GPU)."""

    peak_flops: float
    bandwidth: float
    kernel_overhead_s: float
    label: str
    layer_overhead_s: float = 0.0
    pass_overhead_s: float = 0.0
    token_layer_overhead_s: float = 0.0


def ceilings(gpu: GPUSpec | None, dtype_bytes: float = 2,
             device_profile: DeviceProfile | None = None) -> Ceilings:
    """Datasheet ceilings of ``gpu`` (no fixed cost), or a fitted profile's, which wins."""
    if device_profile is not None:
        return Ceilings(device_profile.peak_tflops * 1e12, device_profile.bandwidth_gbs * 1e9,
                        device_profile.kernel_overhead_us * 1e-6,
                        f"{device_profile.device} (fitted)",
                        device_profile.layer_overhead_us * 1e-6,
                        device_profile.pass_overhead_us * 1e-6,
                        device_profile.token_layer_overhead_us * 1e-6)
    if gpu is None:
        raise TreeoptError("a prediction needs a GPU spec or a device profile")
    return Ceilings(gpu.peak_flops_for(dtype_bytes), gpu.bandwidth_bytes_per_s, 0.0, gpu.name)


def operator_seconds(op: MatmulOp, ceiling: Ceilings, dtype_bytes: float = 2) -> float:
    """One instance of ``op``: max(compute time, memory time) + the fixed per-operator cost."""
    return (max(op.flops / ceiling.peak_flops, op.bytes(dtype_bytes) / ceiling.bandwidth)
            + ceiling.kernel_overhead_s)


def predict_step_latency(
    arch: ArchShape, gpu: GPUSpec | None, batch: int, context: int, num_tokens: int,
    dtype_bytes: float = 2, device_profile: DeviceProfile | None = None,
    medusa_heads: int = MEDUSA_NUM_HEADS,
) -> float:
    """Predicted seconds of one verification step of ``num_tokens`` tokens per sequence.

    Sum over layers and operators (+ LM head + Medusa heads) of
    ``max(flops / peak, bytes / bandwidth)``, plus fixed costs: the device
    profile's ``kernel_overhead_us`` for each operator instance, its
    ``layer_overhead_us`` for each decoder layer, its ``pass_overhead_us`` once and
    its ``token_layer_overhead_us`` for each of the ``batch * num_tokens`` tokens in
    each layer (all 0 with datasheet values, which therefore give a lower bound).
    """
    ceiling = ceilings(gpu, dtype_bytes, device_profile)
    matmuls = sum(op.per_step * operator_seconds(op, ceiling, dtype_bytes)
                  for op in step_operators(arch, batch, context, num_tokens, medusa_heads))
    per_layer = ceiling.layer_overhead_s + batch * num_tokens * ceiling.token_layer_overhead_s
    return matmuls + arch.num_layers * per_layer + ceiling.pass_overhead_s


def fits_in_memory(arch: ArchShape, gpu: GPUSpec | None, batch: int, context: int,
                   num_tokens: int, dtype_bytes: float) -> bool:
    """The one memory-fit rule (:data:`MEMORY_RULE`) of a predicted step.

    True when the weights plus a KV cache of ``context + num_tokens`` positions per
    sequence fit in ``gpu``'s memory. A GPU given without a capacity (``memory_gb``
    0, or none) always fits.
    """
    capacity = float(getattr(gpu, "memory_gb", 0.0) or 0.0) * 1e9
    if not capacity:
        return True
    positions = context + num_tokens
    return arch.weight_bytes(dtype_bytes) + arch.kv_cache_bytes(batch, positions, dtype_bytes) \
        <= capacity


# ----------------------------------------------------------------------- rows
def phase_settings(context: int, candidates: list[int]) -> list[tuple[str, int]]:
    """(phase, q) pairs for one context: prefill (q = s), decode (q = 1), parallel decode."""
    settings = [("prefill", context), ("decode", 1)]
    settings += [("parallel_decode", q) for q in sorted(set(candidates)) if q > 1]
    return settings


def operator_rows(
    arch: ArchShape, gpu: GPUSpec | None, batches: list[int], contexts: list[int],
    candidates: list[int], dtype_bytes: float = 2, device_profile: DeviceProfile | None = None,
    phases: tuple[str, ...] = PHASES, medusa_heads: int = MEDUSA_NUM_HEADS,
) -> list[dict[str, Any]]:
    """One row per (operator, phase, batch, context, candidates), for one operator instance.

    ``flops``/``bytes`` are of one instance (one layer); ``per_step`` says how many
    instances a step runs. ``attainable_tflops = min(peak, intensity * bandwidth)``.
    """
    ceiling = ceilings(gpu, dtype_bytes, device_profile)
    rows = []
    for batch in batches:
        for context in contexts:
            for phase, q in phase_settings(context, candidates):
                if phase not in phases:
                    continue
                for op in step_operators(arch, batch, context, q, medusa_heads):
                    num_bytes = op.bytes(dtype_bytes)
                    intensity = op.flops / num_bytes
                    attainable = min(ceiling.peak_flops, intensity * ceiling.bandwidth)
                    rows.append({
                        "operator": op.name, "phase": phase, "batch": batch,
                        "context": context, "candidates": q,
                        "flops": op.flops, "bytes": num_bytes,
                        "operational_intensity": intensity,
                        "attainable_tflops": attainable / 1e12,
                        "predicted_us": operator_seconds(op, ceiling, dtype_bytes) * 1e6,
                        "per_step": op.per_step,
                    })
    return rows


def row_operator(arch: ArchShape, row: dict[str, Any],
                 medusa_heads: int = MEDUSA_NUM_HEADS) -> MatmulOp:
    """The :class:`MatmulOp` a row describes."""
    ops = step_operators(arch, row["batch"], row["context"], row["candidates"], medusa_heads)
    return next(op for op in ops if op.name == row["operator"])


# ------------------------------------------------------------------------ fit
# Ridge intensities tried by the fit span the measured intensities widened by this factor.
FIT_RIDGE_SPAN = 4.0
FIT_RIDGE_STEPS = 400


def fit_device_profile(
    rows: list[dict[str, Any]], device: str, dtype: str = "bf16", spec: GPUSpec | None = None,
) -> DeviceProfile:
    """Fit achieved peak, bandwidth and per-operator cost to measured rows.

    Model: ``t = c + max(F / P, B / W)`` per operator. For a fixed ridge
    intensity r = P / W this is linear in (1 / P, c), ``t = c + max(F, r B) / P``;
    it is solved by least squares on relative error (numpy) for each r on a
    log grid, and the best r kept. Ties (when no measured operator is
    compute-bound, P is not identified) go to the smallest r, so P is then the
    highest FLOP/s actually seen; ``fit["compute_identified"]`` says so. ``c`` is
    constrained to be >= 0.
    """
    import numpy as np

    usable = [row for row in rows if row.get("measured_us")]
    if len(usable) < 2:
        raise TreeoptError("fitting a device profile needs at least two measured operators")
    flops = np.array([row["flops"] for row in usable], dtype=float)
    nbytes = np.array([row["bytes"] for row in usable], dtype=float)
    seconds = np.array([row["measured_us"] for row in usable], dtype=float) * 1e-6
    intensity = flops / nbytes
    ridges = np.geomspace(intensity.min() / FIT_RIDGE_SPAN, intensity.max() * FIT_RIDGE_SPAN,
                          FIT_RIDGE_STEPS)
    best: tuple[float, float, float, float] | None = None  # (error, r, inv_peak, c)
    for ridge in ridges:
        work = np.maximum(flops, ridge * nbytes)
        inv_peak, overhead = _fit_line(work, seconds)
        if inv_peak <= 0:
            continue
        error = float(np.sqrt(np.mean(((inv_peak * work + overhead) / seconds - 1) ** 2)))
        if best is None or error < best[0] * (1 - 1e-9):
            best = (error, float(ridge), inv_peak, overhead)
    if best is None:
        raise TreeoptError("could not fit a device profile: timings do not grow with work")
    error, ridge, inv_peak, overhead = best
    peak = 1 / inv_peak
    bandwidth = peak / ridge
    return DeviceProfile(
        device=device,
        peak_tflops=peak / 1e12,
        bandwidth_gbs=bandwidth / 1e9,
        kernel_overhead_us=overhead * 1e6,
        compute_fraction=None if spec is None else peak / spec.peak_flops,
        bandwidth_fraction=None if spec is None else bandwidth / spec.bandwidth_bytes_per_s,
        spec=None if spec is None else spec.as_dict(),
        dtype=dtype,
        fit={"num_points": len(usable), "rms_relative_error": error,
             "ridge_intensity": ridge,
             "compute_identified": bool((intensity > ridge).any()),
             "bandwidth_identified": bool((intensity < ridge).any())},
    )


def _fit_line(work: Any, seconds: Any) -> tuple[float, float]:
    """Least squares of ``seconds ~ a * work + c`` on relative error, with c >= 0."""
    import numpy as np

    design = np.stack([work / seconds, 1 / seconds], axis=1)
    (slope, intercept), *_ = np.linalg.lstsq(design, np.ones_like(seconds), rcond=None)
    if intercept < 0:
        ratio = work / seconds
        slope, intercept = float(ratio.sum() / (ratio * ratio).sum()), 0.0
    return float(slope), float(intercept)


def fit_pass_overheads(
    profile: DeviceProfile, steps: list[dict[str, float]],
) -> DeviceProfile:
    """``profile`` with its per-layer, per-pass and per-token-layer terms fitted to timed steps.

    Each of ``steps`` is a timed step: ``measured_s``, ``matmul_s`` (what
    ``profile`` predicts for it without these terms: its operators only),
    ``layers`` (decoder layers it ran, summed over its forward passes), ``passes``
    (its forward passes) and ``token_layers`` (tokens times layers, summed over its
    passes; 0 if absent). Model: ``measured = matmul + layers * L + passes * P +
    token_layers * T`` with ``L, P, T >= 0``, fitted by least squares on relative
    error (so fast and slow steps weigh alike). The fit's RMS relative error before
    and after goes into ``fit["pass_overheads"]``.
    """
    import dataclasses

    import numpy as np

    if len(steps) < 2:
        raise TreeoptError("fitting pass overheads needs at least two timed steps")
    measured = np.array([step["measured_s"] for step in steps], dtype=float)
    matmul = np.array([step["matmul_s"] for step in steps], dtype=float)
    counts = np.array([[step["layers"], step["passes"], step.get("token_layers", 0)]
                       for step in steps], dtype=float)
    if not (measured > 0).all():
        raise TreeoptError("timed steps must have positive measured_s")
    design, target = counts / measured[:, None], 1 - matmul / measured
    solution = _nonnegative_least_squares(design, target)
    before = float(np.sqrt(np.mean((matmul / measured - 1) ** 2)))
    after = float(np.sqrt(np.mean(((matmul + counts @ solution) / measured - 1) ** 2)))
    fit = {**profile.fit, "pass_overheads": {
        "num_steps": len(steps), "rms_relative_error_before": before,
        "rms_relative_error_after": after}}
    return dataclasses.replace(profile, layer_overhead_us=float(solution[0]) * 1e6,
                               pass_overhead_us=float(solution[1]) * 1e6,
                               token_layer_overhead_us=float(solution[2]) * 1e6, fit=fit)


def _nonnegative_least_squares(design: Any, target: Any) -> Any:
    """argmin ||design @ x - target|| over x >= 0, for two or three columns (active sets)."""
    import itertools

    import numpy as np

    columns = design.shape[1]
    best, best_error = np.zeros(columns), float(np.sum(target ** 2))
    for size in range(1, columns + 1):
        for chosen in itertools.combinations(range(columns), size):
            part, *_ = np.linalg.lstsq(design[:, chosen], target, rcond=None)
            if (part < 0).any():
                continue
            candidate = np.zeros(columns)
            candidate[list(chosen)] = part
            error = float(np.sum((design @ candidate - target) ** 2))
            if error < best_error:
                best, best_error = candidate, error
    return best
