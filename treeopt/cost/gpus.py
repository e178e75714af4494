"""GPUs as the roofline model sees them: a compute ceiling and a memory-bandwidth slope.

Every figure is copied from the vendor's datasheet named in the entry's
``source``. ``peak_tflops`` is the DENSE fp16/bf16 tensor-core peak: datasheets
print the 2:4-sparsity figure (twice as large) next to it, marked with an
asterisk, and some LLM roofline tools list that one by mistake. Bandwidth is in
GB/s (10^9 bytes per second), as datasheets print it.

A GPU that is not in the table is described by a small JSON file given where a
GPU name goes (``--gpu my-gpu.json``)::

    {"name": "my-gpu", "peak_tflops": 125, "bandwidth_gbs": 600, "memory_gb": 24,
     "source": "NVIDIA A10 datasheet", "fp8_peak_tflops": null}

Only ``peak_tflops`` (dense fp16/bf16) and ``bandwidth_gbs`` are required;
``memory_gb`` 0 (the default) means "never out of memory".
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
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
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 \
                    or not math.isfinite(value):
                raise TreeoptError(
                    f"GPU {self.name}: {field_name} must be positive and finite, not {value!r}"
                )

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
            "h200-nvl", 835.5, 4800, 141,
            "NVIDIA H200 Tensor Core GPU datasheet (NVL): BF16/FP16 1,671 TFLOPS with sparsity "
            "(835.5 dense), FP8 3,341 sparse, 4.8 TB/s, 141 GB", 1670.5,
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
        GPUSpec(
            "a10g", 70, 600, 24,
            "AWS EC2 G5 (A10G); NVIDIA publishes no A10G datasheet: BF16 tensor 70 TFLOPS "
            "dense, 600 GB/s, 24 GB GDDR6 as compared with the A10 (125) in "
            "baseten.co/blog/nvidia-a10-vs-a10g-for-ml-model-inference",
        ),
        GPUSpec(
            "a10", 125, 600, 24,
            "NVIDIA A10 Tensor Core GPU datasheet: BF16/FP16 Tensor Core 125 dense | 250 sparse "
            "TFLOPS, 600 GB/s, 24 GB GDDR6",
        ),
        GPUSpec(
            "rtx-4090", 165.2, 1008, 24,
            "NVIDIA Ada GPU architecture whitepaper, GeForce RTX 4090: peak FP16/BF16 tensor "
            "TFLOPS with FP32 accumulate 165.2 | 330.4 sparse (FP8 330.3 dense), 1,008 GB/s, "
            "24 GB GDDR6X", 330.3,
        ),
        GPUSpec(
            "b200", 2250, 7700, 180,
            "NVIDIA HGX B200 datasheet, per GPU: FP16/BF16 Tensor Core 4.5 PFLOPS with sparsity "
            "(2.25 dense), FP8 9 PFLOPS sparse (4.5 dense), 180 GB HBM3e, 7.7 TB/s", 4500,
        ),
        GPUSpec(
            "mi300x", 1307.4, 5300, 192,
            "AMD Instinct MI300X datasheet: peak FP16/BF16 matrix 1,307.4 TFLOPS dense "
            "(2,614.9 with sparsity), FP8 2,614.9 dense, 192 GB HBM3, 5.3 TB/s", 2614.9,
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
    (r"h200.*nvl", "h200-nvl"),
    (r"h200", "h200"),
    (r"l40s", "l40s"),
    (r"\bl4\b", "l4"),
    (r"\ba40\b", "a40"),
    (r"rtx a6000", "rtx-a6000"),
    (r"a10g", "a10g"),
    (r"\ba10\b", "a10"),
    (r"rtx 4090", "rtx-4090"),
    (r"\bb200\b", "b200"),
    (r"mi300x", "mi300x"),
)

# What a GPU file must hold, and what it may (the other GPUSpec fields).
GPU_FILE_REQUIRED = ("peak_tflops", "bandwidth_gbs")
GPU_FILE_HINT = ("a GPU JSON file with peak_tflops (dense fp16/bf16) and bandwidth_gbs "
                 "(optional: name, memory_gb, fp8_peak_tflops, source)")


def known_gpus() -> str:
    """The GPU slugs, comma-separated, for error messages and --help."""
    return ", ".join(GPUS)


def load_gpu_file(path: str | Path) -> GPUSpec:
    """A GPU described by a JSON file (see the module docstring); one-line error otherwise."""
    from treeopt.files.jsondoc import read_json

    data = read_json(path, "GPU")
    if not isinstance(data, dict):
        raise TreeoptError(f"GPU file {path} must hold a JSON object: {GPU_FILE_HINT}")
    missing = [key for key in GPU_FILE_REQUIRED if key not in data]
    if missing:
        raise TreeoptError(f"GPU file {path} lacks {', '.join(missing)}: {GPU_FILE_HINT}")
    known = {field.name for field in fields(GPUSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TreeoptError(f"GPU file {path}: unknown field {unknown[0]!r} ({GPU_FILE_HINT})")
    for key in ("memory_gb", "fp8_peak_tflops"):
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or value < 0):
            raise TreeoptError(f"GPU file {path}: {key} must be a number >= 0, not {value!r}")
    try:
        return GPUSpec(
            name=str(data.get("name") or Path(path).stem),
            peak_tflops=data["peak_tflops"],
            bandwidth_gbs=data["bandwidth_gbs"],
            memory_gb=float(data.get("memory_gb") or 0.0),
            source=str(data.get("source") or f"GPU file {path}"),
            fp8_peak_tflops=data.get("fp8_peak_tflops"),
        )
    except TreeoptError as exc:  # content errors name the file read
        raise TreeoptError(f"GPU file {path}: {exc}") from None


def get_gpu(name: str) -> GPUSpec:
    """The GPU with this slug, or the one a GPU JSON file (``*.json``) describes.

    One-line error otherwise. ``auto`` (the visible CUDA device) needs torch:
    :func:`treeopt.model.measure.gpu_auto`.
    """
    if name.lower() == "auto":
        raise TreeoptError("GPU 'auto' means the visible CUDA device: "
                           "use treeopt.model.measure.gpu_auto()")
    if name.lower().endswith(".json"):
        return load_gpu_file(name)
    try:
        return GPUS[name.lower()]
    except KeyError:
        raise TreeoptError(
            f"unknown GPU {name!r}; known: {known_gpus()}, auto, or {GPU_FILE_HINT}"
        ) from None


def gpu_for_device_name(device_name: str) -> GPUSpec:
    """The table entry a CUDA device name (``NVIDIA A100-SXM4-80GB``...) refers to."""
    lowered = device_name.lower()
    for pattern, slug in DEVICE_NAME_PATTERNS:
        if re.search(pattern, lowered):
            return GPUS[slug]
    raise TreeoptError(
        f"GPU {device_name!r} is not in the table ({known_gpus()}); describe it from its "
        f"datasheet with {GPU_FILE_HINT}"
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
