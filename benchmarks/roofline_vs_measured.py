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
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from treeopt.core.atomic import atomic_write_text
from treeopt.cost.arch import ArchShape, get_arch
from treeopt.cost.gpus import GPUSpec, gpu_for_device_name
from treeopt.cost.roofline import load_device_profile, predict_step_latency
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
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("-o", "--output", type=Path, required=True, help="JSON file to write")
    options = parser.parse_args()

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


if __name__ == "__main__":
    main()
