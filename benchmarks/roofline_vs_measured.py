"""Roofline prediction vs the runtime's measured verification-step latency.

On a GPU (the full run, for a session with a lent H100/H200)::

    python benchmarks/roofline_vs_measured.py -o /tmp/roofline_vs_measured.json

times a random-weight Llama-7B-shaped model with Medusa heads through
``treeopt overhead --random-weights`` (q 1..256, b 1..16, s 128..4096), predicts
the same settings with the datasheet roofline of this GPU (``--gpu auto``) and
with a device profile fitted by ``treeopt roofline --measure`` on it, and writes
the per-setting error table to the JSON file ``-o`` names (required). The short
GPU session (``benchmarks/gpu_session.sh``) runs a small grid of the same comparison;
this is the full grid for a longer one.

On a CPU, ``--tiny`` does the same for a tiny shape in seconds (a smoke test of
the pipeline; CPU numbers say nothing about GPUs).
Both use the public CLI through subprocesses, so this script depends only on
the verbs' contracts.

``--cpu`` checks the roofline on this CPU with a draft model, in a few minutes on one
torch thread::

    python benchmarks/roofline_vs_measured.py --cpu \
        -o benchmarks/results/roofline_vs_measured_cpu.json

It fits a device profile with ``treeopt roofline --measure`` (llama-100m's operators,
fp32), times plain steps of the target (llama-100m) and of the draft (llama-68m) to fit
the per-layer and per-pass host overheads into that profile, then times draft-model
steps (the draft's passes + the target's verification of a q-token tree) for q 1..32
and batch 1..8 with ``time_verification_step``, interleaved round by round, and
compares them with ``treeopt.cost.drafts.predict_draft_step`` without and with the
fitted overheads (median and worst relative error of each).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from treeopt.core.atomic import atomic_write_text
from treeopt.cost.arch import ArchShape, get_arch
from treeopt.cost.drafts import draft_pass_tokens, predict_draft_step
from treeopt.cost.gpus import GPUSpec, gpu_for_device_name
from treeopt.cost.roofline import DeviceProfile, load_device_profile, predict_step_latency
from treeopt.files.latency_file import load_latency

FULL = {"arch": "llama-7b", "batch": "1,2,4,8,16", "context": "128,512,1024,2048,4096",
        "sizes": "1,2,4,8,16,32,48,64,96,128,160,192,256", "dtype": "bf16"}
# A stories260K-sized shape (no download needed), timed in fp32 for CPU speed.
TINY_SHAPE = ArchShape("tiny", 64, 172, 5, 8, 4, 8, 512)
TINY = {"batch": "1,4", "context": "32,128", "sizes": "1,4,16,64", "dtype": "fp32"}
MEDUSA_HEADS = 5


def run(args: list[str]) -> str:
    """Run a treeopt verb, fail loudly with its stderr."""
    done = subprocess.run([sys.executable, "-m", "treeopt", *args], capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"treeopt {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shape on CPU (smoke test)")
    parser.add_argument("--cpu", action="store_true",
                        help="draft-model steps of llama-100m + llama-68m on this CPU")
    parser.add_argument("--rounds", type=int, default=4,
                        help="--cpu: interleaved rounds over the grid (min over them)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("-o", "--output", type=Path, required=True, help="JSON file to write")
    options = parser.parse_args()
    if options.cpu:
        cpu_check(options.output, options.rounds, " ".join(sys.argv))
        return

    import torch

    on_cuda = torch.cuda.is_available() and not options.tiny
    settings = dict(TINY if options.tiny else FULL)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        if options.tiny:
            (work / "tiny").mkdir()
            (work / "tiny" / "config.json").write_text(json.dumps(TINY_SHAPE.to_hf_config_dict()))
            settings["arch"] = str(work / "tiny")
        arch = get_arch(settings["arch"])
        device = "cuda" if on_cuda else "cpu"
        measured_path, profile_path = work / "measured.json", work / "device.json"
        run(["overhead", "--random-weights", "--arch", settings["arch"], "--batch",
             settings["batch"], "--context", settings["context"], "--sizes", settings["sizes"],
             "--device", device, "--dtype", settings["dtype"], "--heads", str(MEDUSA_HEADS),
             "--repeats", str(options.repeats), "-o", str(measured_path)])
        gpu_args = ["--gpu", "auto"] if on_cuda else []
        run(["roofline", "--arch", settings["arch"], *gpu_args, "--batch", settings["batch"],
             "--context", settings["context"], "--candidates", settings["sizes"], "--dtype",
             settings["dtype"], "--measure", "--repeats", str(options.repeats), "--json",
             "--save-device-profile", str(profile_path)])
        table = load_latency(measured_path)
        fitted = load_device_profile(profile_path)
    spec: GPUSpec | None = gpu_for_device_name(torch.cuda.get_device_name()) if on_cuda else None
    dtype_bytes = {"bf16": 2, "fp16": 2, "fp32": 4}[settings["dtype"]]

    rows = []
    for (batch, context, q), seconds in sorted(table.measurements.items()):
        if seconds is None:
            continue
        row = {"batch": batch, "context": context, "num_tokens": q, "measured_s": seconds}
        row["fitted_s"] = predict_step_latency(arch, None, batch, context, q, dtype_bytes,
                                               fitted, MEDUSA_HEADS)
        if spec is not None:
            row["datasheet_s"] = predict_step_latency(arch, spec, batch, context, q,
                                                      dtype_bytes, None, MEDUSA_HEADS)
        rows.append(row)
    summary = {}
    for key in ("fitted_s", "datasheet_s"):
        errors = [abs(row[key] / row["measured_s"] - 1) for row in rows if key in row]
        if errors:
            summary[key.removesuffix("_s")] = {"median_abs_rel_error": statistics.median(errors),
                                               "max_abs_rel_error": max(errors)}
    if options.tiny:
        settings["arch"] = TINY_SHAPE.name  # not the scratch folder it was read from
    result = {"device": table.device, "gpu": None if spec is None else spec.as_dict(),
              "arch": arch.as_dict(), "dtype": settings["dtype"], "settings": settings,
              "device_profile": fitted.to_json(), "summary": summary, "rows": rows}
    out = options.output
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"wrote {out}")


# ------------------------------------------------------------------ --cpu mode
CPU_TARGET, CPU_DRAFT = "llama-100m", "llama-68m"
CPU_BATCHES, CPU_SIZES = (1, 2, 4, 8), (1, 2, 4, 8, 16, 32)
CPU_CONTEXT = 256  # cached tokens per sequence while timing a step
# The host-overhead fit sees plain steps and the draft-model steps at these batch sizes;
# the others are held out, so their error is a prediction's.
CPU_FIT_BATCHES = (1, 8)
CPU_DRAFT_DEPTH = 4  # the timed tree: a chain of depth min(4, q - 1), then depth-1 siblings
CPU_FIT_CONTEXT = 32  # the operator fit's context: its prefill rows stay <= 256 tokens
CPU_DTYPE_BYTES = 4  # fp32: CPU matmuls in bf16 are emulated on most x86 cores
BUSY_NOTE = ("measured on a shared CPU that other jobs kept busy (load average up to ~10 on "
             "2 cores): each figure is the minimum over interleaved rounds; re-run on a quiet "
             "machine for final numbers")


def cpu_device_profile(work: Path, env: dict[str, str]) -> DeviceProfile:
    """Fit bandwidth, peak and per-kernel cost on this CPU (one thread) with the CLI."""
    path = work / "device.json"
    sizes = ",".join(map(str, CPU_SIZES))
    done = subprocess.run(
        [sys.executable, "-m", "treeopt", "roofline", "--arch", CPU_TARGET, "--batch",
         ",".join(map(str, CPU_BATCHES)), "--context", str(CPU_FIT_CONTEXT), "--candidates",
         sizes, "--dtype", "fp32", "--medusa-heads", "0", "--measure", "--repeats", "5",
         "--json", "--save-device-profile", str(path)], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"treeopt roofline --measure failed:\n{done.stderr}")
    return load_device_profile(path)


def cpu_settings() -> list[tuple[str, int, int]]:
    """(kind, batch, q): plain steps of target and draft (the overhead fit), then draft steps."""
    plain = [(kind, batch, 1) for kind in ("target", "draft") for batch in CPU_BATCHES]
    return plain + [("drafted", batch, q) for batch in CPU_BATCHES for q in CPU_SIZES]


def time_cpu_grid(rounds: int) -> dict[tuple[str, int, int], list[float]]:
    """Samples of every setting, interleaved: each round visits every setting once."""
    import torch

    from medusa_runtime.drafter import DraftModelDrafter
    from medusa_runtime.timing import (
        random_weight_model,
        representative_tree,
        time_verification_step,
    )

    torch.manual_seed(0)
    models = {name: random_weight_model(get_arch(name).to_hf_config_dict(), torch.float32)
              for name in (CPU_TARGET, CPU_DRAFT)}
    drafter = DraftModelDrafter(models[CPU_DRAFT])
    settings = cpu_settings()
    samples: dict[tuple[str, int, int], list[float]] = {key: [] for key in settings}
    begin = time.perf_counter()
    for index in range(rounds):
        for kind, batch, q in settings[index % 2::] + settings[:index % 2]:
            model = models[CPU_DRAFT if kind == "draft" else CPU_TARGET]
            tree = representative_tree(q, CPU_DRAFT_DEPTH) if kind == "drafted" else None
            result = time_verification_step(
                model, None, q, batch, CPU_CONTEXT, warmup=1, repeats=2, tree=tree,
                drafter=drafter if kind == "drafted" else None)
            samples[(kind, batch, q)].extend(result["samples_s"])
        elapsed = time.perf_counter() - begin
        print(f"round {index + 1}/{rounds} done, {elapsed:.0f} s, ETA "
              f"{elapsed / (index + 1) * (rounds - index - 1):.0f} s", file=sys.stderr)
    return samples


def cpu_predictions(profile: DeviceProfile, batch: int, q: int, kind: str) -> dict[str, float]:
    """Predicted seconds of one timed setting under ``profile``, and its layer/pass counts."""
    from medusa_runtime.timing import representative_tree

    target, draft = get_arch(CPU_TARGET), get_arch(CPU_DRAFT)
    if kind != "drafted":
        arch = draft if kind == "draft" else target
        seconds = predict_step_latency(arch, None, batch, CPU_CONTEXT, q, CPU_DTYPE_BYTES,
                                       profile, medusa_heads=0)
        return {"predicted_s": seconds, "layers": arch.num_layers, "passes": 1,
                "token_layers": arch.num_layers * batch}
    tree = representative_tree(q, CPU_DRAFT_DEPTH)
    cost = predict_draft_step(target, draft, tree, None, batch, CPU_CONTEXT, CPU_DTYPE_BYTES,
                              profile)
    passes = draft_pass_tokens(tree)
    token_layers = batch * (target.num_layers * q + draft.num_layers * sum(passes))
    return {"predicted_s": cost.step_s, "draft_s": cost.draft_s, "verify_s": cost.verify_s,
            "layers": target.num_layers + len(passes) * draft.num_layers,
            "passes": 1 + len(passes), "token_layers": token_layers}


def error_summary(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Median and worst |predicted / measured - 1| of the draft-model steps: all of them,
    and those the overhead fit did not see (its held-out batch sizes)."""
    summary = {}
    for name, held_out in (("all_drafted", False), ("held_out", True)):
        errors = [abs(row[key] / row["measured_s"] - 1) for row in rows
                  if row["kind"] == "drafted" and not (held_out and row["used_in_fit"])]
        summary[name] = {"median_abs_rel_error": statistics.median(errors),
                         "max_abs_rel_error": max(errors), "num_steps": len(errors)}
    return summary


def cpu_check(output: Path, rounds: int, command: str) -> None:
    """The ``--cpu`` mode: fit, time, predict, compare, write ``output``."""
    import os
    import platform

    import torch

    from treeopt.cost.roofline import fit_pass_overheads

    torch.set_num_threads(1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        matmuls = cpu_device_profile(Path(scratch), env)
    samples = time_cpu_grid(rounds)
    rows = []
    for (kind, batch, q), seconds in samples.items():
        row = {"kind": kind, "batch": batch, "num_tokens": q, "measured_s": min(seconds),
               "median_s": statistics.median(seconds), "num_samples": len(seconds)}
        predicted = cpu_predictions(matmuls, batch, q, kind)
        row.update(layers=predicted["layers"], passes=predicted["passes"],
                   token_layers=predicted["token_layers"], roofline_s=predicted["predicted_s"],
                   used_in_fit=kind != "drafted" or batch in CPU_FIT_BATCHES)
        rows.append(row)
    calibration = [{"measured_s": row["measured_s"], "matmul_s": row["roofline_s"],
                    "layers": row["layers"], "passes": row["passes"],
                    "token_layers": row["token_layers"]} for row in rows if row["used_in_fit"]]
    fitted = fit_pass_overheads(matmuls, calibration)
    for row in rows:
        row["fitted_s"] = cpu_predictions(fitted, row["batch"], row["num_tokens"],
                                          row["kind"])["predicted_s"]
    summary = {"roofline_matmuls_only": error_summary(rows, "roofline_s"),
               "with_host_overheads": error_summary(rows, "fitted_s")}
    result = {
        "command": command, "device": f"cpu ({platform.processor() or platform.machine()})",
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "note": BUSY_NOTE, "load_average": os.getloadavg(),
        "target": get_arch(CPU_TARGET).as_dict(), "draft": get_arch(CPU_DRAFT).as_dict(),
        "dtype": "fp32", "context": CPU_CONTEXT, "draft_tree_depth": CPU_DRAFT_DEPTH,
        "fit_batches": CPU_FIT_BATCHES,
        "rounds": rounds, "wall_s": time.perf_counter() - begin,
        "device_profile": fitted.to_json(), "summary": summary, "rows": rows}
    atomic_write_text(output, json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
