"""Every GPU figure treeopt owes, in one short device call (issue #18).

Four parts run in priority order, each in its own process with its own time cap
(caps add up to 7 minutes), each writing its result file as soon as it has
something and again after every measurement, so a slow part loses only its own
tail and never starves the next:

1. ``gpu_runtime.json``: the runtime's verification-step latency vs tree size
   (q = 1, 4, 16, 32, 64, 128; batch 1, context 1024, Llama-7B shape, random bf16
   weights), CUDA-graph captured, then compiled + captured while time lasts; plain
   decode tokens/s against the HBM roofline of the detected GPU (datasheet) and of
   the measured device-to-device copy bandwidth;
2. ``gpu_roofline_vs_measured.json``: the roofline's predicted step latency
   (datasheet ceilings, and ceilings fitted to single-operator timings) vs the
   measured step on a small (q x batch x context) grid, median and max error; then
   draft-model steps (a 68M-shape draft's passes + the 7B target's verification of a
   gamma chain, gamma 0/1/2/4/8, batch 1/4/16) against the same two predictions, the
   cost side of ``treeopt tune --engine``;
3. ``latency_llama-7b.json``, ``latency_llama-13b.json``, ``latency_llama-33b.json``
   (``treeopt.latency/1``, batch 1; the 7B one also batches 2, 4, 8), which
   ``treeopt tune --latency`` and ``benchmarks/seed_chart.py --latency-dir``
   read, and ``gpu_latency_tables.json`` saying how each went;
4. ``gpu_profile_speed.json``: teacher-forced profiling throughput vs plain
   prefill on the Llama-7B shape.

Every file names the device, the library versions, the shapes, the command and
whether steps were captured/compiled; a failure (out of memory, capture or
compile error, a part stopped by its cap) is recorded in the file, never fatal.
Nothing here imports jsonschema, optuna or graphviz (the GPU image lacks the
first two; ``tests/test_gpu_session.py`` hides all three).

    python benchmarks/gpu_session.py --out DIR            # on the GPU (or gpu_session.sh)
    python benchmarks/gpu_session.py --out DIR --dry-run  # CPU, tiny shapes, < 2 minutes

``--dry-run`` runs the same code on the CPU with tiny shapes and marks every
file ``device: cpu``; CI runs it so the script cannot rot before a GPU is lent.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

# torch.cuda.is_available() through NVML does not initialise CUDA, so the parent stays
# fork-safe even if an import asks (a forked child cannot use a CUDA its parent set up).
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for entry in (str(REPO), str(HERE)):  # a bare GPU box runs this from a checkout
    if entry not in sys.path:
        sys.path.insert(0, entry)

from treeopt.core.atomic import atomic_write_text  # noqa: E402
from treeopt.core.latency import DEFAULT_REPEATS, DEFAULT_WARMUP  # noqa: E402
from treeopt.core.timestamps import utc_now  # noqa: E402
from treeopt.cost.arch import ARCHS, ArchShape  # noqa: E402
from treeopt.errors import first_line  # noqa: E402

PARTS = ("runtime", "roofline", "latency", "profile")
# Seconds per part; with the one-time imports before them (STARTUP_S) they add up to at
# most 7 minutes on the GPU and under 2 minutes in the dry run. Compilation is the slow
# item: part 1 spends what its cap leaves after the captured sweep on compiled sizes,
# most wanted first.
GPU_CAPS_S = {"runtime": 125, "roofline": 110, "latency": 115, "profile": 40}
DRY_CAPS_S = {"runtime": 35, "roofline": 25, "latency": 30, "profile": 15}
STARTUP_S = 30  # importing torch + transformers once, CUDA start-up in each part's own
SESSION_LIMIT_S = 7 * 60
DRY_SESSION_LIMIT_S = 2 * 60
# A part stops starting new measurements this long before its cap, to write its file.
SOFT_MARGIN_S = 8
FILES = {"runtime": "gpu_runtime.json", "roofline": "gpu_roofline_vs_measured.json",
         "latency": "gpu_latency_tables.json", "profile": "gpu_profile_speed.json"}
LOG_FILE = "gpu_session.log"
DRY_RUN_THREADS = 1  # CPU timings on a shared CI machine: one thread is the steady one
# Packages the GPU image may lack; recorded (by metadata, never imported).
OPTIONAL_PACKAGES = ("jsonschema", "optuna", "graphviz")

RUNTIME_SIZES = (1, 4, 16, 32, 64, 128)
# Compiled sizes cost a compilation each: the ratio's two ends first.
COMPILE_ORDER = (1, 64, 16, 128, 4, 32)
# Part 1 times the runtime as decode_speed.py does (its targets are in common.py):
# 4 heads ending in the shared lm_head. Parts 2 and 3 time Medusa-1 heads, each owning
# its vocabulary projection, as the roofline models them.
RUNTIME_HEADS, RUNTIME_HEAD_KIND = 4, "shared"
MEDUSA_HEADS, MEDUSA_HEAD_KIND = 5, "own"
LATENCY_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256)
LATENCY_BATCH_SIZES = (1, 4, 16, 32, 64, 128)
LATENCY_EXTRA_BATCHES = (2, 4, 8)
# Part 2's draft-model steps (issue 27: the cost side of engine knobs): a 68M-shape draft
# (JackFram/llama-68m) drafting chains of gamma tokens for the 7B target, per batch.
DRAFT_ARCH = "llama-68m"
DRAFT_GAMMAS = (1, 2, 4, 8)
DRAFT_BATCHES = (1, 4, 16)

# Dry-run shapes: stories260K-sized stacks, one per seed-chart size.
TINY_ARCHS = {
    "llama-7b": ArchShape("tiny-7b", 64, 172, 2, 8, 8, 8, 512),
    "llama-13b": ArchShape("tiny-13b", 80, 216, 3, 8, 8, 10, 512),
    "llama-33b": ArchShape("tiny-33b", 96, 256, 4, 8, 8, 12, 512),
    DRAFT_ARCH: ArchShape("tiny-68m", 32, 86, 1, 4, 4, 8, 512),
}


@dataclass(frozen=True)
class Plan:
    """What one session measures: the GPU plan, or its tiny CPU rehearsal."""

    dry_run: bool
    device: str
    dtype: str
    context: int
    roofline_batches: tuple[int, ...]
    roofline_contexts: tuple[int, ...]
    roofline_sizes: tuple[int, ...]
    latency_sizes: tuple[int, ...]
    warmup: int
    repeats: int
    decode_tokens: int
    copy_probe_bytes: int
    profile_batch: int
    profile_seq_len: int
    profile_prompt_len: int
    archs: dict[str, ArchShape] = field(default_factory=dict)

    @property
    def caps(self) -> dict[str, int]:
        return DRY_CAPS_S if self.dry_run else GPU_CAPS_S


def make_plan(dry_run: bool) -> Plan:
    """The GPU plan, or (``dry_run``) the same steps on the CPU with tiny shapes."""
    if dry_run:
        return Plan(dry_run=True, device="cpu", dtype="float32", context=64,
                    roofline_batches=(1, 2), roofline_contexts=(32, 96),
                    roofline_sizes=(1, 16, 64), latency_sizes=(1, 2, 4, 8, 16, 64),
                    warmup=1, repeats=3, decode_tokens=16, copy_probe_bytes=1 << 25,
                    profile_batch=2, profile_seq_len=48, profile_prompt_len=8,
                    archs=dict(TINY_ARCHS))
    return Plan(dry_run=False, device="cuda", dtype="bfloat16", context=1024,
                roofline_batches=(1, 4), roofline_contexts=(512, 2048),
                roofline_sizes=(1, 16, 64, 128), latency_sizes=LATENCY_SIZES,
                warmup=DEFAULT_WARMUP, repeats=DEFAULT_REPEATS, decode_tokens=128,
                copy_probe_bytes=1 << 30, profile_batch=4, profile_seq_len=256,
                profile_prompt_len=32,
                archs={name: ARCHS[name]
                       for name in ("llama-7b", "llama-13b", "llama-33b", DRAFT_ARCH)})


# ------------------------------------------------------------------ results
class Clock:
    """Seconds left before a part must stop starting measurements."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def left(self) -> float:
        return self.deadline - time.time()


class Result:
    """One part's result document, rewritten atomically after every change."""

    def __init__(self, path: Path, document: dict[str, Any]) -> None:
        self.path, self.doc, self.started = path, document, time.time()
        self.save()

    def save(self) -> None:
        self.doc["seconds"] = round(time.time() - self.started, 2)
        atomic_write_text(self.path, json.dumps(self.doc, indent=1) + "\n")

    def fail(self, what: str, exc: BaseException) -> None:
        """Record a failure and go on (out of memory frees the cache first)."""
        from treeopt.cost.predict import is_out_of_memory

        oom = is_out_of_memory(exc)
        self.doc["failures"].append({"what": what, "error": first_line(exc),
                                     "kind": "out of memory" if oom else type(exc).__name__})
        free_memory()
        self.save()
        print(f"  {what}: {'out of memory' if oom else first_line(exc)}", flush=True)


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def environment(plan: Plan) -> dict[str, Any]:
    """Device, GPU table entry and versions, for every result file."""
    import torch
    import transformers

    from treeopt.cost.gpus import gpu_for_device_name
    from treeopt.errors import TreeoptError

    if plan.device == "cuda":
        name = torch.cuda.get_device_name()
        try:
            spec = gpu_for_device_name(name).as_dict()
        except TreeoptError as exc:
            spec = {"error": first_line(exc)}
    else:
        name, spec = "cpu", None
    optional = {}
    for package in OPTIONAL_PACKAGES:
        try:
            optional[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            optional[package] = None
    return {
        "device": name,
        "device_type": plan.device,
        "gpu": spec,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__,
                     "cuda": torch.version.cuda if plan.device == "cuda" else None,
                     "optional_packages": optional},
    }


def new_result(plan: Plan, part: str, out: Path, command: str) -> Result:
    return Result(out / FILES[part], {
        "benchmark": f"gpu_session/{part}",
        "status": "running",
        "dry_run": plan.dry_run,
        **environment(plan),
        "dtype": plan.dtype,
        "command": command,
        "cap_s": plan.caps[part],
        "created": utc_now(),
        "failures": [],
    })


def build_model(arch: ArchShape, plan: Plan, heads: int, kind: str) -> tuple[Any, Any]:
    """A random-weight model of ``arch`` and ``heads`` random Medusa heads, on the device."""
    import torch
    from common import synthetic_heads

    from medusa_runtime.timing import random_weight_model

    torch.manual_seed(0)
    model = random_weight_model(arch.to_hf_config_dict(), getattr(torch, plan.dtype), plan.device)
    return model, synthetic_heads(model, heads, kind)


def time_step(model: Any, heads: Any, q: int, batch: int, context: int, plan: Plan,
              compile_step: bool = False) -> dict[str, Any]:
    """One verification step's timing, as recorded in the files."""
    from medusa_runtime.timing import time_verification_step

    timing = time_verification_step(model, heads, q, batch=batch, context=context,
                                    warmup=plan.warmup, repeats=plan.repeats,
                                    compile_step=compile_step)
    return {key: timing[key] for key in ("median_s", "min_s", "max_s", "cuda_graph", "compiled",
                                         "capture_error") if key in timing}


def shape_fields(arch: ArchShape, heads: int, kind: str) -> dict[str, Any]:
    return {"arch": arch.as_dict(), "heads": {"num_heads": heads, "kind": kind}}


# -------------------------------------------------------------------- parts
def part_runtime(plan: Plan, result: Result, clock: Clock, compile_steps: bool) -> None:
    """Part 1: step latency vs tree size (captured, then compiled), plain decode vs roofline."""
    import torch
    from common import measure_copy_gbs

    from medusa_runtime.decode import generate
    from treeopt.core.tree import Tree

    doc = result.doc
    arch = plan.archs["llama-7b"]
    doc.update(shape_fields(arch, RUNTIME_HEADS, RUNTIME_HEAD_KIND))
    doc.update({"batch": 1, "context": plan.context, "sizes": list(RUNTIME_SIZES),
                "execution": {"captured": "latency.captured: CUDA graph on a GPU (eager on a "
                                          "CPU), per-size cuda_graph says what ran",
                              "compiled": "latency.compiled: torch.compile(fullgraph) then "
                                          "captured"}})
    doc["copy_bandwidth_gbs"] = measure_copy_gbs(plan.device, plan.copy_probe_bytes)
    result.save()
    model, heads = build_model(arch, plan, RUNTIME_HEADS, RUNTIME_HEAD_KIND)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    latency: dict[str, dict[str, Any]] = {"captured": {}, "compiled": {}}
    doc["latency"] = latency
    for q in RUNTIME_SIZES:
        if clock.left() < 0:
            doc["failures"].append({"what": f"captured q={q}", "error": "time cap"})
            break
        try:
            latency["captured"][str(q)] = time_step(model, heads, q, 1, plan.context, plan)
            print(f"  captured q={q}: {latency['captured'][str(q)]['median_s'] * 1e3:.3f} ms",
                  flush=True)
        except Exception as exc:  # recorded; the next size goes on
            result.fail(f"captured q={q}", exc)
        result.save()

    # Plain decoding end to end, captured on CUDA (eager on the CPU).
    use_graph = None if plan.device == "cuda" else False
    spec = doc["gpu"] if doc["gpu"] and "bandwidth_gbs" in doc["gpu"] else None
    plain: dict[str, Any] = {"weight_bytes": weight_bytes,
                             "weight_bytes_note": "every base-model parameter once",
                             "datasheet_bandwidth_gbs": spec and spec["bandwidth_gbs"],
                             "copy_bandwidth_gbs": doc["copy_bandwidth_gbs"]}
    doc["plain_decode"] = plain
    try:
        prompt = torch.randint(0, arch.vocab_size, (1, plan.context))
        run = generate(model, None, Tree.empty(), prompt, plan.decode_tokens,
                       cuda_graph=use_graph)
        plain.update({"decode_tokens_per_s": run.decode_tokens_per_second,
                      "end_to_end_tokens_per_s": run.tokens_per_second,
                      "new_tokens": len(run.tokens), "cuda_graph": run.cuda_graph,
                      "compiled": run.compiled})
    except Exception as exc:
        result.fail("plain decode", exc)
    summarize_runtime(doc)
    result.save()

    if not compile_steps:
        doc["compiled_note"] = "skipped: --no-compile"
    for q in COMPILE_ORDER if compile_steps else ():
        spent = [entry["setup_s"] for entry in latency["compiled"].values() if "setup_s" in entry]
        needed = max(spent, default=0.0)  # the slowest compilation so far
        if clock.left() < needed:
            doc["compiled_note"] = f"stopped before q={q}: {clock.left():.0f} s left, a " \
                                   f"compilation took up to {needed:.0f} s"
            doc["failures"].append({"what": f"compiled q={q}", "error": "time cap"})
            break
        begin = time.time()
        latency["compiled"][str(q)] = {"status": "compiling (a cap kill leaves this)"}
        result.save()
        try:
            entry = time_step(model, heads, q, 1, plan.context, plan, compile_step=True)
            entry["setup_s"] = round(time.time() - begin, 2)
            latency["compiled"][str(q)] = entry
            print(f"  compiled q={q}: {entry['median_s'] * 1e3:.3f} ms "
                  f"({entry['setup_s']:.0f} s with compilation)", flush=True)
        except Exception as exc:
            result.fail(f"compiled q={q}", exc)
            latency["compiled"][str(q)] = {"setup_s": round(time.time() - begin, 2),
                                           "error": first_line(exc)}
        summarize_runtime(doc)
        result.save()


def summarize_runtime(doc: dict[str, Any]) -> None:
    """The two targets from what part 1 has so far (compiled figures win when present)."""
    from common import LATENCY_RATIO_TARGET, ROOFLINE_FRACTION_TARGET

    latency, plain = doc["latency"], doc["plain_decode"]
    add_rooflines(plain, latency, plain["weight_bytes"])
    ratios = {mode: ratio_64_over_1(latency[mode]) for mode in ("captured", "compiled")}
    doc["latency_ratio_64_over_1"] = ratios
    best_ratio = ratios["compiled"] if ratios["compiled"] is not None else ratios["captured"]
    fraction = plain.get("fraction_of_datasheet_roofline")
    doc["targets"] = {
        "latency_ratio_64_over_1": {"target": LATENCY_RATIO_TARGET, "value": best_ratio,
                                    "met": best_ratio is not None
                                    and best_ratio <= LATENCY_RATIO_TARGET},
        "plain_decode_fraction_of_roofline": {
            "target": ROOFLINE_FRACTION_TARGET, "value": fraction,
            "met": fraction is not None and fraction >= ROOFLINE_FRACTION_TARGET},
    }


def ratio_64_over_1(times: dict[str, dict[str, Any]]) -> float | None:
    if "median_s" in times.get("64", {}) and "median_s" in times.get("1", {}):
        return times["64"]["median_s"] / times["1"]["median_s"]
    return None


def add_rooflines(plain: dict[str, Any], latency: dict[str, Any], weight_bytes: int) -> None:
    """Plain decode against ``bandwidth / weight bytes``, datasheet and measured copy."""
    steps = {mode: 1.0 / latency[mode]["1"]["median_s"]
             for mode in ("captured", "compiled") if "median_s" in latency[mode].get("1", {})}
    plain["step_tokens_per_s"] = steps
    for label in ("datasheet", "copy"):
        bandwidth = plain.get(f"{label}_bandwidth_gbs")
        if not bandwidth:
            continue
        roofline = bandwidth * 1e9 / weight_bytes
        plain[f"{label}_roofline_tokens_per_s"] = roofline
        if "decode_tokens_per_s" in plain:
            plain[f"fraction_of_{label}_roofline"] = plain["decode_tokens_per_s"] / roofline
        best_step = max(steps.values(), default=None)
        if best_step:
            plain[f"step_fraction_of_{label}_roofline"] = best_step / roofline


def part_roofline(plan: Plan, result: Result, clock: Clock) -> None:
    """Part 2: roofline-predicted vs measured step latency on a small grid."""
    from treeopt.cost.gpus import GPUSpec, custom_gpu
    from treeopt.cost.roofline import (
        dtype_bytes_of,
        fit_device_profile,
        operator_rows,
        predict_step_latency,
        short_dtype,
    )
    from treeopt.model.measure import measure_operators

    doc = result.doc
    arch = plan.archs["llama-7b"]
    doc.update(shape_fields(arch, MEDUSA_HEADS, MEDUSA_HEAD_KIND))
    doc["execution"] = {"captured": plan.device == "cuda", "compiled": False}
    doc["grid"] = {"batch": list(plan.roofline_batches), "context": list(plan.roofline_contexts),
                   "num_tokens": list(plan.roofline_sizes)}
    dtype_bytes = dtype_bytes_of(plan.dtype)
    spec_fields = doc["gpu"] if doc["gpu"] and "peak_tflops" in doc["gpu"] else None
    spec = GPUSpec(**spec_fields) if spec_fields else None
    rows: list[dict[str, Any]] = []
    doc["rows"] = rows
    model, heads = build_model(arch, plan, MEDUSA_HEADS, MEDUSA_HEAD_KIND)
    for batch in plan.roofline_batches:
        for context in plan.roofline_contexts:
            for q in plan.roofline_sizes:
                if clock.left() < 0:
                    doc["failures"].append({"what": f"b={batch} s={context} q={q}",
                                            "error": "time cap"})
                    break
                try:
                    timing = time_step(model, heads, q, batch, context, plan)
                except Exception as exc:
                    result.fail(f"step b={batch} s={context} q={q}", exc)
                    break  # larger q at this setting cannot fit either
                row = {"batch": batch, "context": context, "num_tokens": q,
                       "measured_s": timing["median_s"], "cuda_graph": timing["cuda_graph"]}
                if spec is not None:
                    row["datasheet_s"] = predict_step_latency(arch, spec, batch, context, q,
                                                              dtype_bytes, None, MEDUSA_HEADS)
                rows.append(row)
                result.save()
    del model, heads
    free_memory()
    if clock.left() > 0 and rows:
        try:
            grid_rows = operator_rows(arch, spec or custom_gpu(1.0, 1.0, "unfitted"),
                                      list(plan.roofline_batches), list(plan.roofline_contexts),
                                      list(plan.roofline_sizes), dtype_bytes,
                                      phases=("decode", "parallel_decode"),
                                      medusa_heads=MEDUSA_HEADS)
            timed = measure_operators(arch, grid_rows, short_dtype(plan.dtype), plan.device,
                                      plan.warmup, plan.repeats, MEDUSA_HEADS)
            fitted = fit_device_profile(timed, doc["device"], short_dtype(plan.dtype), spec)
            doc["device_profile"] = fitted.to_json()
            for row in rows:
                row["fitted_s"] = predict_step_latency(
                    arch, None, row["batch"], row["context"], row["num_tokens"], dtype_bytes,
                    fitted, MEDUSA_HEADS)
        except Exception as exc:
            result.fail("operator fit", exc)
    doc["summary"] = error_summary(rows)
    print(f"  roofline error: {json.dumps(doc['summary'])}", flush=True)
    if clock.left() > 0:
        fitted = doc.get("device_profile")
        time_draft_steps(plan, result, clock, spec, fitted)


def time_draft_steps(plan: Plan, result: Result, clock: Clock, spec: Any,
                     fitted_json: dict[str, Any] | None) -> None:
    """Draft-model steps (the draft's passes + the target's verification of a gamma chain)
    measured next to the roofline's prediction of the same step, per batch."""
    import torch

    from medusa_runtime.drafter import DraftModelDrafter
    from medusa_runtime.timing import random_weight_model, time_verification_step
    from treeopt.core.tree import Tree
    from treeopt.cost.drafts import predict_draft_step
    from treeopt.cost.roofline import DeviceProfile, dtype_bytes_of

    doc = result.doc
    target_arch, draft_arch = plan.archs["llama-7b"], plan.archs[DRAFT_ARCH]
    rows: list[dict[str, Any]] = []
    doc["draft_steps"] = {"target": target_arch.as_dict(), "draft": draft_arch.as_dict(),
                          "context": plan.context, "rows": rows}
    fitted = DeviceProfile.from_json(fitted_json) if fitted_json else None
    torch.manual_seed(0)
    dtype = getattr(torch, plan.dtype)
    target = random_weight_model(target_arch.to_hf_config_dict(), dtype, plan.device)
    drafter = DraftModelDrafter(random_weight_model(draft_arch.to_hf_config_dict(), dtype,
                                                    plan.device))
    for batch in DRAFT_BATCHES:
        for gamma in (0, *DRAFT_GAMMAS):
            if clock.left() < 0:
                doc["failures"].append({"what": f"draft b={batch} gamma={gamma}",
                                        "error": "time cap"})
                return
            tree = Tree.chain(gamma)
            try:
                timing = time_verification_step(
                    target, None, tree.num_tokens, batch=batch, context=plan.context,
                    warmup=plan.warmup, repeats=plan.repeats, tree=tree,
                    drafter=drafter if gamma else None)
            except Exception as exc:
                result.fail(f"draft step b={batch} gamma={gamma}", exc)
                break  # a longer chain at this batch cannot fit either
            row = {"batch": batch, "gamma": gamma, "measured_s": timing["median_s"],
                   "cuda_graph": timing["cuda_graph"]}
            for label, gpu, profile in (("datasheet", spec, None), ("fitted", None, fitted)):
                if gpu is not None or profile is not None:
                    cost = predict_draft_step(target_arch, draft_arch, tree, gpu, batch,
                                              plan.context, dtype_bytes_of(plan.dtype), profile)
                    row[f"{label}_s"] = cost.step_s
            rows.append(row)
            result.save()
    doc["draft_steps"]["summary"] = error_summary(rows)
    print(f"  draft-step error: {json.dumps(doc['draft_steps']['summary'])}", flush=True)


def error_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and max |predicted / measured - 1| per prediction (datasheet, fitted)."""
    summary = {}
    for key in ("datasheet", "fitted"):
        errors = [abs(row[f"{key}_s"] / row["measured_s"] - 1) for row in rows
                  if f"{key}_s" in row]
        if errors:
            summary[key] = {"median_abs_rel_error": statistics.median(errors),
                            "max_abs_rel_error": max(errors), "settings": len(errors)}
    return summary


def part_latency(plan: Plan, result: Result, clock: Clock, out: Path) -> None:
    """Part 3: ``treeopt.latency/1`` tables of the 7B/13B/33B shapes (+ 7B batches)."""
    from treeopt.core.latency import LatencyTable
    from treeopt.files.latency_file import write_latency
    from treeopt.model.measure import measure_latency

    doc = result.doc
    doc["heads"] = {"num_heads": MEDUSA_HEADS, "kind": MEDUSA_HEAD_KIND}
    doc["context"] = plan.context
    doc["execution"] = {"captured": plan.device == "cuda", "compiled": False}
    tables: list[dict[str, Any]] = []
    doc["tables"] = tables
    jobs = [(name, (1,), plan.latency_sizes) for name in ("llama-7b", "llama-13b", "llama-33b")]
    jobs.append(("llama-7b", LATENCY_EXTRA_BATCHES,
                 tuple(size for size in plan.latency_sizes if size in LATENCY_BATCH_SIZES)))
    done: dict[str, LatencyTable] = {}
    loaded: tuple[str, Any, Any] | None = None
    for name, batches, sizes in jobs:
        entry: dict[str, Any] = {"arch": name, "batches": list(batches), "sizes": list(sizes),
                                 "file": f"latency_{name}.json"}
        tables.append(entry)
        if clock.left() < 0:
            entry["status"] = "skipped: time cap"
            doc["failures"].append({"what": f"latency {name} batch "
                                            f"{','.join(map(str, batches))}", "error": "time cap"})
            result.save()
            continue
        begin = time.time()
        try:
            if loaded is None or loaded[0] != name:
                loaded = None
                free_memory()
                loaded = (name, *build_model(plan.archs[name], plan, MEDUSA_HEADS,
                                             MEDUSA_HEAD_KIND))
            table = measure_latency(loaded[1], loaded[2], plan.archs[name].name, list(batches),
                                    [plan.context],
                                    list(sizes), plan.device, plan.dtype, plan.warmup,
                                    plan.repeats, show_progress=False)
        except Exception as exc:
            loaded = None
            entry["status"] = "failed"
            result.fail(f"latency {name} batch {','.join(map(str, batches))}", exc)
            continue
        method = {**table.method, "heads": doc["heads"], "cuda_graph": plan.device == "cuda",
                  "shape": plan.archs[name].as_dict(), "command": doc["command"],
                  "dry_run": plan.dry_run}
        if plan.device == "cuda":
            method["cuda_graph_note"] = ("each step captured; the runtime falls back to eager "
                                         "for a size whose capture fails")
        if name in done:  # the 7B batch sweep joins the batch-1 table
            measurements = {**done[name].measurements, **table.measurements}
            notes = {**done[name].notes, **table.notes}
        else:
            measurements, notes = dict(table.measurements), dict(table.notes)
        table = LatencyTable(measurements=measurements, notes=notes, source=table.source,
                             device=table.device, dtype=table.dtype, arch=table.arch,
                             versions=table.versions, method=method)
        done[name] = table
        write_latency(out / entry["file"], table)
        entry.update({"status": "complete", "seconds": round(time.time() - begin, 2),
                      "out_of_memory": sum(value is None for value in measurements.values()),
                      "latency_1_s": measurements.get((batches[0], plan.context, 1))})
        print(f"  wrote {entry['file']} ({len(measurements)} settings)", flush=True)
        result.save()


def part_profile(plan: Plan, result: Result, clock: Clock) -> None:
    """Part 4: profiling throughput vs plain prefill, Llama-7B shape."""
    import torch
    from common import hf_config, profile_vs_prefill, random_llama

    arch = plan.archs["llama-7b"]
    shape = hf_config("llama-7b", 4096) if not plan.dry_run else {
        "hidden_size": arch.hidden_size, "intermediate_size": arch.intermediate_size,
        "num_attention_heads": arch.num_attention_heads,
        "num_key_value_heads": arch.num_key_value_heads, "head_dim": arch.head_dim,
        "vocab_size": arch.vocab_size, "max_position_embeddings": 4096}
    doc = result.doc
    doc["shape"] = {"num_layers": arch.num_layers, **shape}
    doc["execution"] = {"captured": False, "compiled": False}  # eager forward passes
    torch.manual_seed(0)
    model = random_llama(arch.num_layers, getattr(torch, plan.dtype), plan.device, shape)
    figures = profile_vs_prefill(model, plan.profile_batch, plan.profile_seq_len,
                                 plan.profile_prompt_len, plan.device)
    figures.pop("device")  # the environment's name for it stays (cpu in the dry run)
    doc.update(figures)
    print(f"  profiling / prefill = {figures['profiling_over_prefill']}", flush=True)


def run_part(part: str, plan: Plan, out: Path, deadline: float, command: str,
             compile_steps: bool) -> int:
    """Run one part in this process; its file says how it went."""
    import torch

    if plan.dry_run:
        torch.set_num_threads(DRY_RUN_THREADS)
    result = new_result(plan, part, out, command)
    clock = Clock(deadline)
    try:
        if part == "runtime":
            part_runtime(plan, result, clock, compile_steps)
        elif part == "roofline":
            part_roofline(plan, result, clock)
        elif part == "latency":
            part_latency(plan, result, clock, out)
        else:
            part_profile(plan, result, clock)
        capped = any(item.get("error") == "time cap" for item in result.doc["failures"])
        result.doc["status"] = "partial: time cap" if capped else "complete"
    except Exception as exc:  # the file says what failed; the session goes on
        result.doc["status"] = f"failed: {first_line(exc)}"
        result.fail(part, exc)
    result.doc["measured"] = measured_count(part, result.doc)
    result.save()
    print(f"{part}: {result.doc['status']} in {result.doc['seconds']:.0f} s "
          f"-> {result.path}", flush=True)
    return 0


def measured_count(part: str, doc: dict[str, Any]) -> int:
    """How many figures ``part`` measured (0: the part brought nothing back)."""
    if part == "runtime":
        timed = [entry for mode in doc.get("latency", {}).values() for entry in mode.values()]
        plain = "decode_tokens_per_s" in doc.get("plain_decode", {})
        return sum("median_s" in entry for entry in timed) + int(plain)
    if part == "roofline":
        return len(doc.get("rows", [])) + len(doc.get("draft_steps", {}).get("rows", []))
    if part == "latency":
        return sum(entry.get("status") == "complete" for entry in doc.get("tables", []))
    return int("profiling_over_prefill" in doc)


def session_verdict(out: Path, parts: tuple[str, ...]) -> tuple[int, str]:
    """Exit status and last line: non-zero when any part measured nothing."""
    empty, failures, measured = [], 0, 0
    for part in parts:
        try:
            document = json.loads((out / FILES[part]).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            document = {}
        count = measured_count(part, document)  # a part killed at its cap stored no count
        measured += count
        failures += len(document.get("failures", [])) if document else 1
        if count == 0:
            empty.append(part)
    if empty:
        return 1, (f"== FAILED: {', '.join(empty)} measured nothing ({failures} failures "
                   f"recorded; see {', '.join(FILES[part] for part in empty)})")
    return 0, f"== ok: every part measured ({measured} figures, {failures} failures recorded)"


def mark_stopped(part: str, out: Path, cap: int, rc: int) -> None:
    """A part killed at its cap (or crashed): keep its partial file, say so in it."""
    path = out / FILES[part]
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        document = {"benchmark": f"gpu_session/{part}", "failures": []}
    reason = f"stopped by its {cap} s cap" if rc == -signal.SIGKILL else f"exit status {rc}"
    document["status"] = f"stopped: {reason}"
    document.setdefault("failures", []).append({"what": part, "error": reason})
    atomic_write_text(path, json.dumps(document, indent=1) + "\n")


def preload() -> None:
    """Import what every part needs once, before forking: each part then starts in moments.

    Nothing touches CUDA here, so each forked part initialises it afresh.
    """
    import common  # noqa: F401
    import transformers  # noqa: F401
    from transformers import LlamaForCausalLM  # noqa: F401

    import medusa_runtime.timing  # noqa: F401
    import treeopt.model.measure  # noqa: F401


def run_session(plan: Plan, out: Path, parts: tuple[str, ...], compile_steps: bool,
                command: str, cap_scale: float = 1.0) -> int:
    """Each part in its own forked process under its cap, in priority order.

    A part past its cap is killed with everything it started (compile workers too);
    what it had written stays, marked stopped.
    """
    import multiprocessing

    import torch

    preload()
    # Forked parts start at once; should an import have set CUDA up, spawn fresh ones.
    method = "spawn" if torch.cuda.is_initialized() else "fork"
    context = multiprocessing.get_context(method)
    print(f"== parts start by {method}", flush=True)
    summary = []
    for part in parts:
        cap = plan.caps[part] * cap_scale
        begin = time.time()
        print(f"== part {part} (cap {cap:.0f} s)", flush=True)
        child = context.Process(target=part_process, args=(
            part, plan, out, begin + cap - SOFT_MARGIN_S, command, compile_steps))
        child.start()
        child.join(timeout=cap)
        # Past its cap the part goes; either way nothing it started (compile workers)
        # outlives it to slow the next part down.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        child.join()
        rc = child.exitcode
        if rc != 0:
            mark_stopped(part, out, round(cap), rc)
        summary.append(f"{part}: rc {rc}, {time.time() - begin:.0f} s")
    print("== session: " + "; ".join(summary), flush=True)
    rc, verdict = session_verdict(out, parts)
    print(verdict, flush=True)
    return rc


def part_process(part: str, plan: Plan, out: Path, deadline: float, command: str,
                 compile_steps: bool) -> None:
    """A forked part: its own process group, so a kill at the cap takes its workers too."""
    os.setsid()
    sys.exit(run_part(part, plan, out, deadline, command, compile_steps))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n  python benchmarks/gpu_session.py --out /tmp/gpu\n"
               "  python benchmarks/gpu_session.py --out /tmp/dry --dry-run --no-compile",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for the result files (made if missing)")
    parser.add_argument("--dry-run", action="store_true",
                        help="same steps on the CPU with tiny shapes, files marked device: cpu")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the compiled steps of part 1 (CI: compiling costs minutes "
                             "on a CPU)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"parts to run, in this order (default: {','.join(PARTS)})")
    parser.add_argument("--cap-scale", type=float, default=1.0,
                        help="multiply every part's time cap (a slow shared CI machine); "
                             "default 1")
    args = parser.parse_args(argv)
    parts = tuple(part for part in args.parts.split(",") if part)
    unknown = [part for part in parts if part not in PARTS]
    if unknown:
        parser.error(f"unknown part {unknown[0]!r} (choose from {', '.join(PARTS)})")
    args.parts = parts
    if not args.cap_scale > 0:
        parser.error("--cap-scale must be positive")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is not a folder")
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():  # an NVML check: the parent stays fork-safe
            parser.error("no CUDA device is visible; rehearse on a CPU with --dry-run")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args.dry_run)
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", "benchmarks/gpu_session.py", *(argv or sys.argv[1:])])
    return run_session(plan, args.out, args.parts, not args.no_compile, command, args.cap_scale)


if __name__ == "__main__":
    sys.exit(main())
