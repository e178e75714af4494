"""Devices: the one ``--device`` default rule (:func:`device_choice`), and the GPU a
prediction is for: a table slug, ``auto`` (the visible CUDA device) or a custom one."""

from __future__ import annotations

from treeopt.cost.gpus import GPUSpec


def gpu_spec(name: str | None, peak_tflops: float | None = None,
             bandwidth_gbs: float | None = None) -> GPUSpec:
    """A GPU by table slug, ``auto`` (the visible CUDA device; imports torch), or a custom
    one from its peak TFLOP/s and bandwidth GB/s; one-line error otherwise."""
    from treeopt.cost.gpus import resolve_gpu

    if name is not None and name.lower() == "auto":
        from treeopt.model.measure import gpu_auto

        return gpu_auto()
    return resolve_gpu(name, peak_tflops, bandwidth_gbs)


def device_choice(device: str) -> str:
    """The one device rule of every verb that runs a model: ``auto`` is ``cuda`` when a
    CUDA device is visible, else ``cpu`` (imports torch only then); anything else as given.
    """
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
