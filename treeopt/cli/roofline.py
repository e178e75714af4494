"""Verbs ``treeopt roofline`` and ``treeopt simulate``.

Neither imports torch at module level: only ``roofline --measure`` (and
``--gpu auto``) load it. matplotlib is loaded only for ``--plot``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from treeopt.cli.options import (
    output_file,
    output_folder,
    parse_int_list,
    plot_file,
    print_table,
)
from treeopt.cost.roofline import MEDUSA_NUM_HEADS
from treeopt.errors import TreeoptError
from treeopt.workflows.roofline import DEFAULT_ARCH, DEFAULT_GPU, DEFAULT_REPEATS

ROOFLINE_BATCHES = "1,4,16,64"
ROOFLINE_CONTEXTS = "1024"
ROOFLINE_CANDIDATES = "1,16,32,48,64,80,96,112"
SIMULATE_BATCHES = "1,2,4,8,16,32,64"
SIMULATE_CONTEXTS = "128,256,512,1024,2048,4096,8192"
SIMULATE_CANDIDATES = "1,2,4,8,12,16,24,32,48,64,80,96,112,128,160,192,224,256"

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


def _print_gpus(as_json: bool) -> None:
    from rich import box
    from rich.table import Table

    from treeopt.cost.gpus import GPUS

    if as_json:
        typer.echo(json.dumps([spec.as_dict() for spec in GPUS.values()], indent=1))
        return
    # One line a GPU; the datasheet sources (long URLs) are in --json.
    table = Table(title="GPUs (dense fp16/bf16 tensor peak; sources: --list-gpus --json)",
                  box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False)
    for column in ("gpu", "TFLOP/s", "GB/s", "memory GB", "ridge FLOPs/B"):
        table.add_column(column, justify="left" if column == "gpu" else "right", no_wrap=True)
    for spec in GPUS.values():
        table.add_row(spec.name, f"{spec.peak_tflops:g}", f"{spec.bandwidth_gbs:g}",
                      f"{spec.memory_gb:g}", f"{spec.ridge_intensity:.0f}")
    print_table(table)


RooflineArchOption = Annotated[str | None, typer.Option(
    "--arch", help="Model shape: llama-7b, llama-13b, llama-33b, llama-65b, llama-2-70b, "
    "mistral-7b, or an HF config.json / model folder.")]
RooflineBatchOption = Annotated[str, typer.Option("--batch", help="Batch sizes b.")]
RooflineContextOption = Annotated[str, typer.Option(
    "--context", help="Context lengths s: key/value positions each query attends.")]
RooflineCandidatesOption = Annotated[str, typer.Option(
    "--candidates", help="Tokens verified per sequence per step, q (root included; 1 = "
    "decode, >1 = parallel decode). Prefill rows (q = s) are always added.")]
MeasureOperatorsOption = Annotated[bool, typer.Option(
    "--measure", help="Also time every operator shape on this device (CUDA, else CPU) and "
    "fit its achieved bandwidth, peak and per-kernel cost.")]
RepeatsOption = Annotated[int, typer.Option(help="--measure: timed repeats (median kept).")]
SaveDeviceProfileOption = Annotated[Path | None, typer.Option(
    "--save-device-profile", callback=output_file,
    help="--measure: write the fit as a treeopt.device/1 file "
    "that --device-profile (here, in simulate) reads.")]
RowsJsonOption = Annotated[bool, typer.Option(
    "--json", help="Print only a JSON list of rows on stdout.")]
RooflinePlotOption = Annotated[Path | None, typer.Option(
    "--plot", callback=plot_file,
    help="Write a log-log roofline figure here (.png, .svg or .pdf).")]
ListGpusOption = Annotated[bool, typer.Option(
    "--list-gpus", help="Print the GPU table and exit.")]


def roofline(
    arch: RooflineArchOption = None,
    gpu: GpuOption = None,
    peak_tflops: PeakOption = None,
    bandwidth_gbs: BandwidthOption = None,
    batch: RooflineBatchOption = ROOFLINE_BATCHES,
    context: RooflineContextOption = ROOFLINE_CONTEXTS,
    candidates: RooflineCandidatesOption = ROOFLINE_CANDIDATES,
    dtype: DtypeOption = "bf16",
    medusa_heads: MedusaHeadsOption = MEDUSA_NUM_HEADS,
    measure: MeasureOperatorsOption = False,
    repeats: RepeatsOption = DEFAULT_REPEATS,
    save_device_profile: SaveDeviceProfileOption = None,
    device_profile: DeviceProfileOption = None,
    as_json: RowsJsonOption = False,
    plot: RooflinePlotOption = None,
    list_gpus: ListGpusOption = False,
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

      treeopt roofline --arch /path/to/model --measure \\
          --save-device-profile dev.json
    """
    if list_gpus:
        _print_gpus(as_json)
        return
    if arch is None:
        raise TreeoptError("roofline needs --arch (e.g. llama-7b) or --list-gpus")
    from treeopt.workflows.roofline import GpuChoice, RooflineSettings, roofline_rows

    outcome = roofline_rows(RooflineSettings(
        arch=arch, batches=parse_int_list(batch, "--batch"),
        contexts=parse_int_list(context, "--context"),
        candidates=parse_int_list(candidates, "--candidates"),
        gpu=GpuChoice(name=gpu, peak_tflops=peak_tflops, bandwidth_gbs=bandwidth_gbs),
        dtype=dtype, medusa_heads=medusa_heads, measure=measure, repeats=repeats,
        save_device_profile=save_device_profile, device_profile=device_profile, plot=plot,
        say=_silent if as_json else _say, show_progress=not as_json))
    for path in outcome.written:
        typer.echo(f"wrote {path}", err=True)
    if as_json:
        typer.echo(json.dumps(outcome.rows, indent=1))
        return
    shape = outcome.shape
    _print_rows(outcome.rows, f"{shape.name} on {outcome.ceiling.label}, {dtype}: per-operator "
                f"roofline (one layer's instance; x{shape.num_layers} layers per step)")


def _say(line: str) -> None:
    typer.echo(line, err=True)


def _silent(line: str) -> None:
    """--json: stdout is the rows only, and stderr stays quiet."""


def _maybe(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _print_rows(rows: list[dict], title: str) -> None:
    from rich import box
    from rich.table import Table

    measured = any("measured_us" in row for row in rows)
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False)
    # Short headers, so the table reads whole at 80 columns.
    columns = ["operator", "phase", "b", "s", "q", "GFLOPs", "MB", "FLOP/B",
               "attain TF/s", "pred us"]
    if measured:
        columns += ["meas TF/s", "meas us"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("operator", "phase") else "right",
                         no_wrap=True)
    for row in rows:
        cells = [row["operator"], row["phase"], str(row["batch"]), str(row["context"]),
                 str(row["candidates"]), f"{row['flops'] / 1e9:.3g}", f"{row['bytes'] / 1e6:.3g}",
                 f"{row['operational_intensity']:.3g}", f"{row['attainable_tflops']:.3g}",
                 f"{row['predicted_us']:.3g}"]
        if measured:
            cells += [_maybe(row.get("measured_tflops")), _maybe(row.get("measured_us"))]
        table.add_row(*cells)
    print_table(table)


SimulateProfileOption = Annotated[str | None, typer.Option(
    "--profile", "-p",
    help="Acceptance profile (file or shipped name) whose nested optimal trees "
    "give the acceleration rate. Default: the shipped vicuna-7b.")]
SimulateContextOption = Annotated[str, typer.Option(
    "--context", help="Context lengths s (key/value positions attended).")]
SimulateCandidatesOption = Annotated[str, typer.Option(
    "--candidates", help="Tree sizes q (tokens verified per step, root included).")]
LogAcceptanceOption = Annotated[str | None, typer.Option(
    "--acceptance", help="log:A replaces the profile's curve by the appendix's fit "
    "acc(q) = 1 + A ln(q) (natural log; the 1 is the root's token).")]
SimulationJsonOption = Annotated[bool, typer.Option(
    "--json", help="Print only a JSON list of {batch, context, candidates, "
    "acceleration_rate, overhead, speedup}.")]
FiguresFolderOption = Annotated[Path | None, typer.Option(
    "--plot", callback=output_folder,
    help="Folder for the three appendix figures: simulate_acceleration.png "
    "(b=1, s=1024), simulate_batch.png (per batch, s=1024), simulate_context.png "
    "(per context, b=4).")]


def simulate(
    profile: SimulateProfileOption = None,
    arch: ArchOption = DEFAULT_ARCH,
    gpu: GpuOption = None,
    peak_tflops: PeakOption = None,
    bandwidth_gbs: BandwidthOption = None,
    batch: RooflineBatchOption = SIMULATE_BATCHES,
    context: SimulateContextOption = SIMULATE_CONTEXTS,
    candidates: SimulateCandidatesOption = SIMULATE_CANDIDATES,
    acceptance: LogAcceptanceOption = None,
    dtype: DtypeOption = "bf16",
    medusa_heads: MedusaHeadsOption = MEDUSA_NUM_HEADS,
    device_profile: DeviceProfileOption = None,
    as_json: SimulationJsonOption = False,
    plot: FiguresFolderOption = None,
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
    from treeopt.cost.simulate import best_candidates
    from treeopt.workflows.roofline import GpuChoice, SimulateSettings, simulate_speedups

    outcome = simulate_speedups(SimulateSettings(
        batches=parse_int_list(batch, "--batch"), contexts=parse_int_list(context, "--context"),
        candidates=parse_int_list(candidates, "--candidates"), arch=arch, profile=profile,
        acceptance=acceptance,
        gpu=GpuChoice(name=gpu, peak_tflops=peak_tflops, bandwidth_gbs=bandwidth_gbs),
        dtype=dtype, medusa_heads=medusa_heads, device_profile=device_profile, plot=plot))
    spec = outcome.gpu
    if outcome.left_out:
        typer.echo(f"left out {outcome.left_out} settings that do not fit in {spec.name}'s "
                   f"{spec.memory_gb:g} GB (weights + KV cache)", err=True)
    for path in outcome.written:
        typer.echo(f"wrote {path}", err=True)
    if as_json:
        typer.echo(json.dumps(outcome.rows, indent=1))
        return
    _print_best(best_candidates(outcome.rows), f"best candidates per (batch, context): "
                f"{outcome.shape.name} on {spec.name}, {outcome.source}")


def _print_best(rows: list[dict], title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in ("batch", "context", "best q", "acceleration", "overhead", "speedup"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["batch"]), str(row["context"]), str(row["candidates"]),
                      f"{row['acceleration_rate']:.3f}", f"{row['overhead']:.3f}",
                      f"{row['speedup']:.3f}")
    print_table(table)


def register(app: typer.Typer) -> None:
    """Add ``roofline`` and ``simulate`` to the treeopt app."""
    app.command("roofline")(roofline)
    app.command("simulate")(simulate)
