"""GPUs as the roofline model sees them: a compute ceiling and a memory-bandwidth slope.

Every figure is copied from the vendor's datasheet named in the entry's
``source``. ``peak_tflops`` is the DENSE fp16/bf16 tensor-core peak: datasheets
print the 2:4-sparsity figure (twice as large) next to it, marked with an
asterisk, and some LLM roofline tools list that one by mistake. Bandwidth is in
GB/s (10^9 bytes per second), as datasheets print it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from treeopt.errors import TreeoptError

A100_DATASHEET = (
    "NVIDIA A100 Tensor Core GPU datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4), "
    "BF16/FP16 Tensor Core 312 TFLOPS dense (624 sparse)"
)
H100_DATASHEET = (
    "NVIDIA H100 Tensor Core GPU datasheet (h100-datasheet-2430615), BF16/FP16 Tensor Core "
    "1,979 (SXM) / 1,513 (PCIe) TFLOPS are with sparsity; dense is half"
)


@dataclass(frozen=True)
class GPUSpec:
    """A device's roofline: dense fp16/bf16 tensor peak, memory bandwidth, capacity.

    ``fp8_peak_tflops`` is the dense fp8 tensor peak, None where the GPU has no fp8
    tensor cores; ``--dtype fp8`` uses it as the compute ceiling.
    """

    name: str
    peak_tflops: float
    bandwidth_gbs: float
    memory_gb: float
    source: str
    fp8_peak_tflops: float | None = None

    def __post_init__(self) -> None:
        for field_name in ("peak_tflops", "bandwidth_gbs"):
            value = getattr(self, field_name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise TreeoptError(f"GPU {self.name}: {field_name} must be positive, not {value!r}")

    @property
    def peak_flops(self) -> float:
        """Dense fp16/bf16 peak in FLOP/s."""
        return self.peak_tflops * 1e12

    @property
    def bandwidth_bytes_per_s(self) -> float:
        """Memory bandwidth in bytes/s."""
        return self.bandwidth_gbs * 1e9

    @property
    def ridge_intensity(self) -> float:
        """FLOPs per byte above which an operator is compute-bound on this GPU."""
        return self.peak_flops / self.bandwidth_bytes_per_s

    def peak_flops_for(self, dtype_bytes: float) -> float:
        """The compute ceiling for an element size: the fp8 peak for 1-byte elements if known."""
        if dtype_bytes == 1 and self.fp8_peak_tflops is not None:
            return self.fp8_peak_tflops * 1e12
        return self.peak_flops

    def as_dict(self) -> dict[str, Any]:
        """Plain fields, for JSON output (the ``gpu`` field of a latency file)."""
        return asdict(self)


GPUS: dict[str, GPUSpec] = {
    spec.name: spec
    for spec in (
        GPUSpec("a100-40gb-sxm", 312, 1555, 40, A100_DATASHEET + "; 40GB SXM 1,555 GB/s"),
        GPUSpec("a100-80gb-pcie", 312, 1935, 80, A100_DATASHEET + "; 80GB PCIe 1,935 GB/s"),
        GPUSpec("a100-80gb-sxm", 312, 2039, 80, A100_DATASHEET + "; 80GB SXM 2,039 GB/s"),
        GPUSpec("h100-pcie", 756.5, 2000, 80, H100_DATASHEET + "; PCIe 2 TB/s", 1513),
        GPUSpec("h100-sxm", 989.5, 3350, 80, H100_DATASHEET + "; SXM 3.35 TB/s", 1979),
        GPUSpec(
            "h200", 989.5, 4800, 141,
            "NVIDIA H200 Tensor Core GPU datasheet (SXM): BF16/FP16 1,979 TFLOPS with sparsity "
            "(989.5 dense), 4.8 TB/s, 141 GB", 1979,
        ),
        GPUSpec(
            "l4", 121, 300, 24,
            "NVIDIA L4 Tensor Core GPU datasheet: BF16/FP16 242 TFLOPS with sparsity "
            "(121 dense), 300 GB/s, 24 GB", 242.5,
        ),
        GPUSpec(
            "l40s", 362.05, 864, 48,
            "NVIDIA L40S GPU datasheet: BF16/FP16 Tensor Core 362.05 dense | 733 sparse TFLOPS, "
            "864 GB/s, 48 GB", 733,
        ),
        GPUSpec(
            "a40", 149.7, 696, 48,
            "NVIDIA A40 datasheet: BF16/FP16 Tensor Core 149.7 dense | 299.4 sparse TFLOPS, "
            "696 GB/s, 48 GB",
        ),
        GPUSpec(
            "rtx-a6000", 154.8, 768, 48,
            "NVIDIA RTX A6000 datasheet: Tensor performance 309.7 TFLOPS with sparsity "
            "(154.8 dense fp16), 768 GB/s, 48 GB",
        ),
    )
}

# torch.cuda.get_device_name() spellings, most specific first (an "H100 PCIe" must not
# match the SXM pattern; SXM parts report e.g. "NVIDIA H100 80GB HBM3").
DEVICE_NAME_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"a100.*pcie.*80|a100.*80.*pcie", "a100-80gb-pcie"),
    (r"a100.*sxm.*80|a100.*80gb", "a100-80gb-sxm"),
    (r"a100", "a100-40gb-sxm"),
    (r"h100.*pcie", "h100-pcie"),
    (r"h100", "h100-sxm"),
    (r"h200", "h200"),
    (r"l40s", "l40s"),
    (r"\bl4\b", "l4"),
    (r"\ba40\b", "a40"),
    (r"rtx a6000", "rtx-a6000"),
)


def known_gpus() -> str:
    """The GPU slugs, comma-separated, for error messages and --help."""
    return ", ".join(GPUS)


def get_gpu(name: str) -> GPUSpec:
    """The GPU with this slug; one-line error otherwise.

    ``auto`` (the visible CUDA device) needs torch: :func:`treeopt.model.measure.gpu_auto`.
    """
    if name.lower() == "auto":
        raise TreeoptError("GPU 'auto' means the visible CUDA device: "
                           "use treeopt.model.measure.gpu_auto()")
    try:
        return GPUS[name.lower()]
    except KeyError:
        raise TreeoptError(
            f"unknown GPU {name!r}; known: {known_gpus()}, auto, or give --peak-tflops and "
            f"--bandwidth-gbs"
        ) from None


def gpu_for_device_name(device_name: str) -> GPUSpec:
    """The table entry a CUDA device name (``NVIDIA A100-SXM4-80GB``...) refers to."""
    lowered = device_name.lower()
    for pattern, slug in DEVICE_NAME_PATTERNS:
        if re.search(pattern, lowered):
            return GPUS[slug]
    raise TreeoptError(
        f"GPU {device_name!r} is not in the table ({known_gpus()}); give --peak-tflops and "
        f"--bandwidth-gbs from its datasheet"
    )


def custom_gpu(peak_tflops: float, bandwidth_gbs: float, name: str = "custom") -> GPUSpec:
    """A GPU given by its two roofline numbers (dense fp16/bf16 TFLOPS, GB/s)."""
    return GPUSpec(name, peak_tflops, bandwidth_gbs, 0.0,
                   f"user-given: {peak_tflops} TFLOPS, {bandwidth_gbs} GB/s")


def resolve_gpu(
    name: str | None, peak_tflops: float | None = None, bandwidth_gbs: float | None = None
) -> GPUSpec:
    """The spec the CLI options describe: ``--gpu`` or both ``--peak-tflops``/``--bandwidth-gbs``.

    Exactly one of the two ways must be used; a one-line TreeoptError otherwise.
    """
    custom = (peak_tflops, bandwidth_gbs)
    if name is not None and any(value is not None for value in custom):
        raise TreeoptError("give either --gpu or --peak-tflops with --bandwidth-gbs, not both")
    if name is not None:
        return get_gpu(name)
    if all(value is None for value in custom):
        raise TreeoptError(f"name a GPU with --gpu ({known_gpus()}, auto) or give --peak-tflops "
                           f"and --bandwidth-gbs")
    if any(value is None for value in custom):
        raise TreeoptError("--peak-tflops and --bandwidth-gbs go together: give both")
    return custom_gpu(float(peak_tflops), float(bandwidth_gbs))  # type: ignore[arg-type]
