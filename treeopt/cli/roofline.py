"""Verbs ``treeopt roofline`` and ``treeopt simulate``.

Neither imports torch at module level: only ``roofline --measure`` (and
``--gpu auto``) load it. matplotlib is loaded only for ``--plot``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from treeopt.cli.options import gpu_named, output_file, output_folder, parse_int_list, plot_file
from treeopt.errors import TreeoptError

ROOFLINE_BATCHES = "1,4,16,64"
ROOFLINE_CONTEXTS = "1024"
ROOFLINE_CANDIDATES = "1,16,32,48,64,80,96,112"
SIMULATE_BATCHES = "1,2,4,8,16,32,64"
SIMULATE_CONTEXTS = "128,256,512,1024,2048,4096,8192"
SIMULATE_CANDIDATES = "1,2,4,8,12,16,24,32,48,64,80,96,112,128,160,192,224,256"
# The Medusa appendix's setting: Vicuna-7B (LLaMA-1 7B shape) on an A100 80GB PCIe.
DEFAULT_ARCH = "llama-7b"
DEFAULT_GPU = "a100-80gb-pcie"

ArchOption = Annotated[str, typer.Option(
    "--arch", help="Model shape: llama-7b, llama-13b, llama-33b, llama-65b, llama-2-70b, "
    "mistral-7b, or an HF config.json / model folder.")]
GpuOption = Annotated[str | None, typer.Option(
    "--gpu", help="GPU slug from --list-gpus (a100-80gb-pcie, h100-sxm, ...), 'auto' "
    "(this machine's CUDA device) or a GPU JSON file ({\"peak_tflops\": dense bf16, "
    f"\"bandwidth_gbs\": ..., \"memory_gb\": ...}}). Default: {DEFAULT_GPU}, unless "
    "--peak-tflops/--bandwidth-gbs are given.")]
PeakOption = Annotated[float | None, typer.Option(
    "--peak-tflops", help="Custom GPU: DENSE fp16/bf16 tensor TFLOP/s (not the sparse figure).")]
BandwidthOption = Annotated[float | None, typer.Option(
    "--bandwidth-gbs", help="Custom GPU: memory bandwidth in GB/s (10^9 bytes/s).")]
DtypeOption = Annotated[str, typer.Option(
    "--dtype", help="bf16, fp16 (2 bytes/element), fp32 (4) or fp8 (1; uses the fp8 peak).")]
DeviceProfileOption = Annotated[Path | None, typer.Option(
    "--device-profile", help="A treeopt.device/1 file from 'roofline --measure "
    "--save-device-profile': predict with its fitted ceilings and per-kernel cost.")]
MedusaHeadsOption = Annotated[int, typer.Option(
    "--medusa-heads", help="Medusa heads run once per step on every token (0: none).")]


def _gpu(name: str | None, peak: float | None, bandwidth: float | None) -> Any:
    if name is None and peak is None and bandwidth is None:
        name = DEFAULT_GPU
    return gpu_named(name, peak, bandwidth)


def _device_profile(path: Path | None) -> Any:
    if path is None:
        return None
    from treeopt.cost.roofline import load_device_profile

    return load_device_profile(path)


def _print_gpus(as_json: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from treeopt.cost.gpus import GPUS

    if as_json:
        typer.echo(json.dumps([spec.as_dict() for spec in GPUS.values()], indent=1))
        return
    table = Table(title="GPUs (dense fp16/bf16 tensor peak; datasheet sources)")
    for column in ("gpu", "TFLOP/s", "GB/s", "memory GB", "ridge FLOPs/byte", "source"):
        table.add_column(column, overflow="fold")
    for spec in GPUS.values():
        table.add_row(spec.name, f"{spec.peak_tflops:g}", f"{spec.bandwidth_gbs:g}",
                      f"{spec.memory_gb:g}", f"{spec.ridge_intensity:.0f}", spec.source)
    Console().print(table)


def roofline(
    arch: Annotated[str | None, typer.Option(
        "--arch", help="Model shape: llama-7b, llama-13b, llama-33b, llama-65b, llama-2-70b, "
        "mistral-7b, or an HF config.json / model folder.")] = None,
    gpu: GpuOption = None,
    peak_tflops: PeakOption = None,
    bandwidth_gbs: BandwidthOption = None,
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes b.")] = ROOFLINE_BATCHES,
    context: Annotated[str, typer.Option(
        "--context", help="Context lengths s: key/value positions each query attends.")
    ] = ROOFLINE_CONTEXTS,
    candidates: Annotated[str, typer.Option(
        "--candidates", help="Tokens verified per sequence per step, q (root included; 1 = "
        "decode, >1 = parallel decode). Prefill rows (q = s) are always added.")
    ] = ROOFLINE_CANDIDATES,
    dtype: DtypeOption = "bf16",
    medusa_heads: MedusaHeadsOption = 5,
    measure: Annotated[bool, typer.Option(
        "--measure", help="Also time every operator shape on this device (CUDA, else CPU) and "
        "fit its achieved bandwidth, peak and per-kernel cost.")] = False,
    repeats: Annotated[int, typer.Option(help="--measure: timed repeats (median kept).")] = 10,
    save_device_profile: Annotated[Path | None, typer.Option(
        "--save-device-profile", callback=output_file,
            help="--measure: write the fit as a treeopt.device/1 file "
        "that --device-profile (here, in simulate) reads.")] = None,
    device_profile: DeviceProfileOption = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print only a JSON list of rows on stdout.")] = False,
    plot: Annotated[Path | None, typer.Option(
        "--plot", callback=plot_file,
        help="Write a log-log roofline figure here (.png, .svg or .pdf).")] = None,
    list_gpus: Annotated[bool, typer.Option(
        "--list-gpus", help="Print the GPU table and exit.")] = False,
) -> None:
    """Operator FLOPs, bytes and operational intensity of a verification step, on a roofline.

    One row per (operator, phase, batch, context, candidates) for one layer's
    instance: qkv, qk, pv, o, up, gate, down (x layers per step), lm_head and
    medusa_heads (once per step). A multiply-add is 2 FLOPs; each operator reads
    its inputs and weights once and writes its output once (attention unfused);
    intensity = FLOPs/bytes; attainable = min(peak, intensity x bandwidth);
    predicted_us = max(flops/peak, bytes/bandwidth) (+ fitted per-kernel cost).

    In decoding every operator sits on the bandwidth slope: extra candidates
    raise intensity almost for free, until b x q passes the GPU's ridge point
    (peak/bandwidth, ~161 FLOPs/byte on an A100 80GB PCIe) and the linear layers
    turn compute-bound. Attention scores grow with q x s and stay bandwidth-bound.

    Examples:

      treeopt roofline --list-gpus

      treeopt roofline --arch llama-7b --gpu a100-80gb-pcie --plot roofline.png

      treeopt roofline --arch /path/to/model --measure --save-device-profile dev.json
    """
    if list_gpus:
        _print_gpus(as_json)
        return
    if arch is None:
        raise TreeoptError("roofline needs --arch (e.g. llama-7b) or --list-gpus")
    from treeopt.cost.arch import get_arch
    from treeopt.cost.roofline import ceilings, dtype_bytes_of, operator_rows

    shape = get_arch(arch)
    batches, contexts = parse_int_list(batch, "--batch"), parse_int_list(context, "--context")
    candidate_list = parse_int_list(candidates, "--candidates")
    dtype_bytes = dtype_bytes_of(dtype)
    if repeats < 1:
        raise TreeoptError(f"--repeats must be a positive integer, not {repeats}")
    if save_device_profile is not None and not measure:
        raise TreeoptError("--save-device-profile needs --measure")
    profile = _device_profile(device_profile)
    gpu_given = gpu is not None or peak_tflops is not None or bandwidth_gbs is not None
    if measure:
        from treeopt.model.measure import measurement_device

        # On CUDA the datasheet spec is this GPU's own (auto); on a CPU with no GPU named,
        # the fitted CPU profile is the only ceiling there is.
        on_cuda = measurement_device() == "cuda"
        spec = _gpu(gpu or ("auto" if on_cuda and peak_tflops is None else None),
                    peak_tflops, bandwidth_gbs) if gpu_given or on_cuda else None
        rows, fitted = _measure(shape, spec, batches, contexts, candidate_list, dtype,
                                medusa_heads, repeats, save_device_profile, as_json)
        profile = profile or (fitted if spec is None else None)
    else:
        spec = _gpu(gpu, peak_tflops, bandwidth_gbs)
    if not measure or profile is not None:
        predicted = operator_rows(shape, spec, batches, contexts, candidate_list, dtype_bytes,
                                  profile, medusa_heads=medusa_heads)
        rows = predicted if not measure else [
            {**row, **{key: value for key, value in timed.items() if key not in row}}
            for row, timed in zip(predicted, rows, strict=True)]
    ceiling = ceilings(spec, dtype_bytes, profile)
    if plot is not None:
        from treeopt.pictures.roofline_plots import plot_roofline

        plot_roofline(rows, ceiling, plot, f"{shape.name} on {ceiling.label} ({dtype})")
        typer.echo(f"wrote {plot}", err=True)
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    _print_rows(rows, f"{shape.name} on {ceiling.label}, {dtype}: per-operator roofline "
                      f"(one layer's instance; x{shape.num_layers} layers per step)")


def _measure(shape: Any, spec: Any, batches: list[int], contexts: list[int],
             candidate_list: list[int], dtype: str, medusa_heads: int, repeats: int,
             save_path: Path | None, quiet: bool) -> tuple[list[dict], Any]:
    """Time every operator shape on this device; return the timed rows and the fitted profile."""
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
    rows = operator_rows(shape, spec or custom_gpu(1.0, 1.0, "unfitted"), batches, contexts,
                         candidate_list, dtype_bytes_of(dtype), medusa_heads=medusa_heads)
    if not quiet:
        typer.echo(f"timing {len(rows)} operators on {label} ...", err=True)
    rows = measure_operators(shape, rows, dtype, device, repeats=repeats,
                             medusa_heads=medusa_heads)
    fitted = fit_device_profile(rows, label, dtype, spec)
    if not quiet:
        fractions = ""
        if fitted.compute_fraction is not None:
            fractions = (f" ({fitted.compute_fraction:.0%} of {spec.name}'s peak, "
                         f"{fitted.bandwidth_fraction:.0%} of its bandwidth)")
        typer.echo(f"fit on {label}: {fitted.peak_tflops:.3g} TFLOP/s, "
                   f"{fitted.bandwidth_gbs:.3g} GB/s, {fitted.kernel_overhead_us:.3g} us/kernel"
                   f"{fractions}; rms relative error "
                   f"{fitted.fit['rms_relative_error']:.0%}", err=True)
    if save_path is not None:
        save_device_profile(save_path, fitted)
        typer.echo(f"wrote {save_path}", err=True)
    return rows, fitted


def _maybe(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _print_rows(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    measured = any("measured_us" in row for row in rows)
    table = Table(title=title)
    columns = ["operator", "phase", "b", "s", "q", "GFLOPs", "MB", "FLOPs/byte",
               "attainable TFLOP/s", "predicted us"]
    if measured:
        columns += ["measured TFLOP/s", "measured us"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("operator", "phase") else "right")
    for row in rows:
        cells = [row["operator"], row["phase"], str(row["batch"]), str(row["context"]),
                 str(row["candidates"]), f"{row['flops'] / 1e9:.3g}", f"{row['bytes'] / 1e6:.3g}",
                 f"{row['operational_intensity']:.3g}", f"{row['attainable_tflops']:.3g}",
                 f"{row['predicted_us']:.3g}"]
        if measured:
            cells += [_maybe(row.get("measured_tflops")), _maybe(row.get("measured_us"))]
        table.add_row(*cells)
    Console().print(table)


def simulate(
    profile: Annotated[str | None, typer.Option(
        "--profile", "-p",
        help="Acceptance profile (file or shipped name) whose nested optimal trees "
        "give the acceleration rate. Default: the shipped vicuna-7b.")] = None,
    arch: ArchOption = DEFAULT_ARCH,
    gpu: GpuOption = None,
    peak_tflops: PeakOption = None,
    bandwidth_gbs: BandwidthOption = None,
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes b.")] = SIMULATE_BATCHES,
    context: Annotated[str, typer.Option(
        "--context", help="Context lengths s (key/value positions attended).")
    ] = SIMULATE_CONTEXTS,
    candidates: Annotated[str, typer.Option(
        "--candidates", help="Tree sizes q (tokens verified per step, root included).")
    ] = SIMULATE_CANDIDATES,
    acceptance: Annotated[str | None, typer.Option(
        "--acceptance", help="log:A replaces the profile's curve by the appendix's fit "
        "acc(q) = 1 + A ln(q) (natural log; the 1 is the root's token).")] = None,
    dtype: DtypeOption = "bf16",
    medusa_heads: MedusaHeadsOption = 5,
    device_profile: DeviceProfileOption = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print only a JSON list of {batch, context, candidates, "
        "acceleration_rate, overhead, speedup}.")] = False,
    plot: Annotated[Path | None, typer.Option(
        "--plot", callback=output_folder,
            help="Folder for the three appendix figures: simulate_acceleration.png "
        "(b=1, s=1024), simulate_batch.png (per batch, s=1024), simulate_context.png "
        "(per context, b=4).")] = None,
) -> None:
    """The Medusa appendix's simulation: speedup = acceleration rate / roofline overhead.

    For each (batch, context, candidates q): acceleration_rate = expected accept
    length of the profile's best tree of q tokens (root included; the builder's
    curve), overhead = predicted step latency(q) / latency(1) from the roofline
    model (see 'treeopt roofline'), speedup = acceleration_rate / overhead.
    The human output is the best q per (b, s).

    What it shows: speedup first rises with q (more accepted tokens, almost free
    while bandwidth-bound), then falls once the linear layers turn compute-bound;
    larger batches get there sooner, and long contexts make attention (which
    grows with q x s) cost more, so both shrink the best tree.

    Examples:

      treeopt simulate --gpu a100-80gb-pcie --plot docs/images

      treeopt simulate --gpu h100-sxm --batch 1,8 --context 2048 --json

      treeopt simulate --acceptance log:0.5 --gpu l4
    """
    from treeopt.cost.arch import get_arch
    from treeopt.cost.roofline import dtype_bytes_of
    from treeopt.cost.simulate import (
        best_candidates,
        builder_acceleration_curve,
        log_acceleration_curve,
        parse_acceptance,
    )
    from treeopt.cost.simulate import simulate as run_simulation

    shape = get_arch(arch)
    spec = _gpu(gpu, peak_tflops, bandwidth_gbs)
    batches, contexts = parse_int_list(batch, "--batch"), parse_int_list(context, "--context")
    candidate_list = parse_int_list(candidates, "--candidates")
    dtype_bytes = dtype_bytes_of(dtype)
    fitted = _device_profile(device_profile)
    if acceptance is not None:
        if profile is not None:
            raise TreeoptError("give --profile or --acceptance log:A, not both")
        curve = log_acceleration_curve(parse_acceptance(acceptance), max(candidate_list))
        source = f"acc = 1 + {parse_acceptance(acceptance):g} ln q"
    else:
        from treeopt.files.shipped import DEFAULT_PROFILE

        name = profile or DEFAULT_PROFILE
        curve = builder_acceleration_curve(name, max(candidate_list))
        source = f"profile {name}"
    rows = run_simulation(curve, shape, spec, batches, contexts, candidate_list, dtype_bytes,
                          fitted, medusa_heads)
    if not rows:
        raise TreeoptError(f"no setting fits in {spec.name}'s {spec.memory_gb:g} GB (weights + "
                           "KV cache): smaller --batch or --context?")
    left_out = len(batches) * len(contexts) * len(candidate_list) - len(rows)
    if left_out:
        typer.echo(f"left out {left_out} settings that do not fit in {spec.name}'s "
                   f"{spec.memory_gb:g} GB (weights + KV cache)", err=True)
    if plot is not None:
        from treeopt.pictures.roofline_plots import plot_simulation

        for path in plot_simulation(rows, plot, f"{shape.name} on {spec.name} ({source})"):
            typer.echo(f"wrote {path}", err=True)
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    _print_best(best_candidates(rows), f"best candidates per (batch, context): {shape.name} on "
                                       f"{spec.name}, {source}")


def _print_best(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("batch", "context", "best q", "acceleration", "overhead", "speedup"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["batch"]), str(row["context"]), str(row["candidates"]),
                      f"{row['acceleration_rate']:.3f}", f"{row['overhead']:.3f}",
                      f"{row['speedup']:.3f}")
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add ``roofline`` and ``simulate`` to the treeopt app."""
    app.command("roofline")(roofline)
    app.command("simulate")(simulate)
