"""``treeopt roofline`` and ``treeopt simulate`` as one call each.

:func:`roofline_rows`: the roofline rows of a verification step's operators,
predicted, and with ``measure`` also timed on this device and fitted
(:func:`treeopt.cost.roofline.fit_device_profile`). :func:`simulate_speedups`:
the Medusa appendix's simulation, speedup = acceleration rate / roofline
overhead (:func:`treeopt.cost.simulate.simulate`). Both draw their figures when
asked. Torch is imported only to measure (or for ``gpu="auto"``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treeopt.cost.arch import ArchShape
from treeopt.cost.gpus import GPUSpec
from treeopt.cost.roofline import MEDUSA_NUM_HEADS, Ceilings, DeviceProfile
from treeopt.errors import ParameterError, TreeoptError
from treeopt.workflows.devices import gpu_spec

# The Medusa appendix's setting: Vicuna-7B (LLaMA-1 7B shape) on an A100 80GB PCIe.
DEFAULT_ARCH = "llama-7b"
DEFAULT_GPU = "a100-80gb-pcie"
DEFAULT_REPEATS = 10  # timed repeats per operator shape (the median is kept)


def _quiet(line: str) -> None:
    """Progress lines go nowhere unless a caller passes its own ``say``."""


@dataclass(frozen=True)
class GpuChoice:
    """A GPU by table slug (or ``auto``), or a custom one; nothing given: :data:`DEFAULT_GPU`."""

    name: str | None = None
    peak_tflops: float | None = None
    bandwidth_gbs: float | None = None

    @property
    def given(self) -> bool:
        return (self.name, self.peak_tflops, self.bandwidth_gbs) != (None, None, None)

    def spec(self) -> GPUSpec:
        return gpu_spec(self.name if self.given else DEFAULT_GPU, self.peak_tflops,
                        self.bandwidth_gbs)


def _device_profile(path: Path | None) -> DeviceProfile | None:
    if path is None:
        return None
    from treeopt.cost.roofline import load_device_profile

    return load_device_profile(path)


@dataclass(frozen=True)
class RooflineSettings:
    """What :func:`roofline_rows` tabulates, measures and writes."""

    arch: str
    batches: list[int]
    contexts: list[int]
    candidates: list[int]
    gpu: GpuChoice = field(default_factory=GpuChoice)
    dtype: str = "bf16"
    medusa_heads: int = MEDUSA_NUM_HEADS
    measure: bool = False
    repeats: int = DEFAULT_REPEATS
    save_device_profile: Path | None = None
    device_profile: Path | None = None
    plot: Path | None = None
    say: Callable[[str], None] = _quiet  # progress of a measurement
    show_progress: bool = False  # a bar with an ETA while operators are timed


@dataclass(frozen=True)
class RooflineOutcome:
    """The rows (predicted, and measured with ``measure``), the ceilings and files written."""

    shape: ArchShape
    rows: list[dict[str, Any]]
    ceiling: Ceilings
    written: list[Path]


def roofline_rows(settings: RooflineSettings) -> RooflineOutcome:
    """One row per (operator, phase, batch, context, candidates); see ``treeopt roofline``.

    With ``measure`` each row also has the measured time; the prediction columns
    then come from the fitted device profile when no GPU is named (or from
    ``device_profile``), and the fit is written to ``save_device_profile``.
    """
    from treeopt.cost.arch import get_arch
    from treeopt.cost.roofline import ceilings, dtype_bytes_of, operator_rows

    shape = get_arch(settings.arch)
    dtype_bytes = dtype_bytes_of(settings.dtype)
    if settings.repeats < 1:
        raise ParameterError("repeats", f"must be a positive integer, not {settings.repeats}")
    if settings.save_device_profile is not None and not settings.measure:
        raise TreeoptError("--save-device-profile needs --measure")
    profile = _device_profile(settings.device_profile)
    written: list[Path] = []
    if settings.measure:
        from treeopt.model.measure import measurement_device

        # On CUDA the datasheet spec is this GPU's own (auto); on a CPU with no GPU named,
        # the fitted CPU profile is the only ceiling there is.
        gpu = settings.gpu
        on_cuda = measurement_device() == "cuda"
        spec = None
        if gpu.given or on_cuda:
            auto = "auto" if on_cuda and gpu.peak_tflops is None else None
            spec = GpuChoice(gpu.name or auto, gpu.peak_tflops, gpu.bandwidth_gbs).spec()
        rows, fitted = measure_rows(shape, spec, settings)
        if settings.save_device_profile is not None:
            written.append(settings.save_device_profile)
        profile = profile or (fitted if spec is None else None)
    else:
        spec = settings.gpu.spec()
    if not settings.measure or profile is not None:
        predicted = operator_rows(shape, spec, settings.batches, settings.contexts,
                                  settings.candidates, dtype_bytes, profile,
                                  medusa_heads=settings.medusa_heads)
        rows = predicted if not settings.measure else [
            {**row, **{key: value for key, value in timed.items() if key not in row}}
            for row, timed in zip(predicted, rows, strict=True)]
    ceiling = ceilings(spec, dtype_bytes, profile)
    if settings.plot is not None:
        from treeopt.pictures.roofline_plots import plot_roofline

        plot_roofline(rows, ceiling, settings.plot,
                      f"{shape.name} on {ceiling.label} ({settings.dtype})")
        written.append(settings.plot)
    return RooflineOutcome(shape, rows, ceiling, written)


def measure_rows(shape: ArchShape, spec: GPUSpec | None, settings: RooflineSettings
                 ) -> tuple[list[dict[str, Any]], DeviceProfile]:
    """Time every operator shape on this device; the timed rows and the fitted profile."""
    from treeopt.cost.gpus import custom_gpu
    from treeopt.cost.roofline import (
        dtype_bytes_of,
        fit_device_profile,
        operator_rows,
        save_device_profile,
    )
    from treeopt.model.measure import device_label, measure_operators, measurement_device

    device = measurement_device()
    label = device_label(device)
    # Without a spec the prediction columns are placeholders until the fit replaces them.
    rows = operator_rows(shape, spec or custom_gpu(1.0, 1.0, "unfitted"), settings.batches,
                         settings.contexts, settings.candidates, dtype_bytes_of(settings.dtype),
                         medusa_heads=settings.medusa_heads)
    settings.say(f"timing {len(rows)} operators on {label} ...")
    rows = measure_operators(shape, rows, settings.dtype, device, repeats=settings.repeats,
                             medusa_heads=settings.medusa_heads,
                             show_progress=settings.show_progress)
    fitted = fit_device_profile(rows, label, settings.dtype, spec)
    fractions = ""
    if fitted.compute_fraction is not None and spec is not None:
        fractions = (f" ({fitted.compute_fraction:.0%} of {spec.name}'s peak, "
                     f"{fitted.bandwidth_fraction:.0%} of its bandwidth)")
    settings.say(f"fit on {label}: {fitted.peak_tflops:.3g} TFLOP/s, "
                 f"{fitted.bandwidth_gbs:.3g} GB/s, {fitted.kernel_overhead_us:.3g} us/kernel"
                 f"{fractions}; rms relative error {fitted.fit['rms_relative_error']:.0%}")
    if settings.save_device_profile is not None:
        save_device_profile(settings.save_device_profile, fitted)
    return rows, fitted


@dataclass(frozen=True)
class SimulateSettings:
    """What :func:`simulate_speedups` simulates: the acceleration curve comes from ``profile``
    (default: the shipped one) or from ``acceptance`` (``log:A``), not both."""

    batches: list[int]
    contexts: list[int]
    candidates: list[int]
    arch: str = DEFAULT_ARCH
    profile: str | None = None
    acceptance: str | None = None
    gpu: GpuChoice = field(default_factory=GpuChoice)
    dtype: str = "bf16"
    medusa_heads: int = MEDUSA_NUM_HEADS
    device_profile: Path | None = None
    plot: Path | None = None  # a folder for the three appendix figures


@dataclass(frozen=True)
class SimulationOutcome:
    """The simulation's rows, what they are of, and how many settings did not fit."""

    rows: list[dict[str, Any]]
    shape: ArchShape
    gpu: GPUSpec
    source: str
    left_out: int
    written: list[Path]


def simulate_speedups(settings: SimulateSettings) -> SimulationOutcome:
    """One row per (batch, context, candidates) that fits in the GPU; the figures if asked.

    Raises TreeoptError when no setting fits (weights + KV cache > memory).
    """
    from treeopt.cost.arch import get_arch
    from treeopt.cost.roofline import dtype_bytes_of
    from treeopt.cost.simulate import (
        builder_acceleration_curve,
        log_acceleration_curve,
        parse_acceptance,
        simulate,
    )

    shape, spec = get_arch(settings.arch), settings.gpu.spec()
    dtype_bytes = dtype_bytes_of(settings.dtype)
    fitted = _device_profile(settings.device_profile)
    largest = max(settings.candidates)
    if settings.acceptance is not None:
        if settings.profile is not None:
            raise TreeoptError("give --profile or --acceptance log:A, not both")
        coefficient = parse_acceptance(settings.acceptance)
        curve = log_acceleration_curve(coefficient, largest)
        source = f"acc = 1 + {coefficient:g} ln q"
    else:
        from treeopt.files.shipped import DEFAULT_PROFILE

        name = settings.profile or DEFAULT_PROFILE
        curve = builder_acceleration_curve(name, largest)
        source = f"profile {name}"
    rows = simulate(curve, shape, spec, settings.batches, settings.contexts, settings.candidates,
                    dtype_bytes, fitted, settings.medusa_heads)
    if not rows:
        raise TreeoptError(f"no setting fits in {spec.name}'s {spec.memory_gb:g} GB (weights + "
                           "KV cache): smaller --batch or --context?")
    settings_count = len(settings.batches) * len(settings.contexts) * len(settings.candidates)
    written: list[Path] = []
    if settings.plot is not None:
        from treeopt.pictures.roofline_plots import plot_simulation

        written = list(plot_simulation(rows, settings.plot,
                                       f"{shape.name} on {spec.name} ({source})"))
    return SimulationOutcome(rows, shape, spec, source, settings_count - len(rows), written)
