"""The seed's chart, all four rows: tokens/s without and with Medusa for Vicuna-7B, Zephyr-7B,
Vicuna-13B and Vicuna-33B, the published tree and treeopt's tuned tree, per GPU.

The Medusa paper's headline chart (A100, Medusa-2 models, measured) shows 2.83x, 2.66x,
2.83x and 2.35x. This script predicts the same bars: for each model, the acceptance
profile gives E[accept] for the builder's nested trees and for the published trees; a
latency table for the model's shape gives step latency; then

    tokens/s without Medusa = 1 / latency(1)
    tokens/s with a tree    = E[accept](tree) / latency(tree's tokens)
    speedup                 = E[accept] / overhead, overhead = latency(n) / latency(1)

at batch 1, context 1024. Latency is PREDICTED by the roofline model from each GPU's
datasheet (a lower bound on step time, so tokens/s are optimistic) unless
``--latency-dir`` holds tables measured by ``benchmarks/gpu_session.sh``
(``latency_<arch>.json``), which then replace the prediction for their GPU. Every
figure and the picture say which.

Acceptance: Vicuna rows use the bundled profiles built from FasterDecoding's
published Medusa-1 top-5 head accuracies (the seed measured Medusa-2 heads, which
accept more). Zephyr-7B has no published accuracies: its row uses the vicuna-7b
profile, labelled so, on the Zephyr (Mistral-7B, GQA, sliding window 4096) shape.

    python benchmarks/seed_chart.py -o /tmp/seed.json --plot docs/images/seed_chart.png
    python benchmarks/seed_chart.py -o /tmp/seed.json --latency-dir /tmp/gpu --gpus h200
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treeopt.core.atomic import atomic_write_text
from treeopt.core.latency import LatencyTable
from treeopt.core.timestamps import utc_now
from treeopt.cost.arch import get_arch
from treeopt.cost.gpus import get_gpu
from treeopt.cost.predict import predict_latency
from treeopt.files.latency_file import load_latency
from treeopt.files.profile_file import load_profile
from treeopt.files.shipped import trees_root
from treeopt.files.tree_file import load_tree
from treeopt.optimize.acceptance_models import expected_accept_length
from treeopt.optimize.build import build_tree
from treeopt.optimize.tune import tune_size


@dataclass(frozen=True)
class SeedModel:
    """One bar group of the seed's chart."""

    label: str
    profile: str  # bundled acceptance profile
    arch: str  # model shape whose step is timed or predicted
    published: tuple[str, ...]  # Medusa's own trees for it; the first is drawn
    seed_speedup: float  # the Medusa paper's measured figure (A100, Medusa-2)
    acceptance: str  # where E[accept] comes from, said in every row


MEDUSA1_ACCURACIES = "published Medusa-1 top-5 head accuracies ({})"
MODELS = (
    SeedModel("Vicuna-7B", "vicuna-7b", "llama-7b",
              ("vicuna_7b_stage2", "vicuna_7b_stage1", "mc_sim_7b_63"), 2.83,
              MEDUSA1_ACCURACIES.format("vicuna-7b")),
    SeedModel("Zephyr-7B", "vicuna-7b", "zephyr-7b", ("zephyr_stage2",), 2.66,
              "vicuna-7b profile (Zephyr has no published head accuracies)"),
    SeedModel("Vicuna-13B", "vicuna-13b", "llama-13b",
              ("vicuna_13b_stage2", "vicuna_13b_stage1"), 2.83,
              MEDUSA1_ACCURACIES.format("vicuna-13b")),
    SeedModel("Vicuna-33B", "vicuna-33b", "llama-33b",
              ("vicuna_33b_stage2", "vicuna_33b_stage1"), 2.35,
              MEDUSA1_ACCURACIES.format("vicuna-33b")),
)
SEED_GPU = "a100-80gb-sxm"  # the seed's chart was measured on an A100
DEFAULT_GPUS = f"{SEED_GPU},h100-sxm,h200"
MAX_BUDGET = 256
BATCH = 1
CONTEXT = 1024  # the context the Medusa appendix analyses tree size at
PREDICTED = "predicted"


def latency_for(model: SeedModel, gpu_name: str, latency_dir: Path | None) -> LatencyTable:
    """A measured table for the model's shape when ``latency_dir`` has one, else predicted.

    A measured table belongs to the GPU it was measured on, so it replaces the
    prediction only for the GPU its device name matches.
    """
    if latency_dir is not None:
        path = latency_dir / f"latency_{model.arch}.json"
        if path.is_file():
            table = load_latency(path)
            from treeopt.cost.gpus import gpu_for_device_name
            from treeopt.errors import TreeoptError

            try:
                if gpu_for_device_name(table.device).name == gpu_name:
                    return table
            except TreeoptError:
                pass
    return predict_latency(get_arch(model.arch), get_gpu(gpu_name), [BATCH], [CONTEXT],
                           list(range(1, MAX_BUDGET + 1)), "bf16")


def chart_rows(gpus: list[str], latency_dir: Path | None) -> list[dict[str, Any]]:
    """One row per (GPU, model, tree): plain decoding, the published trees, the tuned tree."""
    rows = []
    for gpu_name in gpus:
        for model in MODELS:
            profile = load_profile(model.profile)
            table = latency_for(model, gpu_name, latency_dir)
            figure = "measured" if table.source == "measured" else PREDICTED
            latencies = table.latency_curve(BATCH, CONTEXT)
            overhead = table.overhead_curve(BATCH, CONTEXT)
            plain_tps = 1.0 / latencies[1]
            common = {"gpu": gpu_name, "model": model.label, "arch": model.arch,
                      "acceptance": model.acceptance, "latency": table.describe(),
                      "figure": figure, "tokens_per_s_without_medusa": plain_tps,
                      "seed_speedup_a100_medusa2": model.seed_speedup}
            built = build_tree(profile, min(MAX_BUDGET, max(overhead)))
            best = tune_size(list(built.curve), table, BATCH, CONTEXT).best
            trees = [("treeopt tuned", best.num_tokens, best.expected_accept_length)]
            for name in model.published:
                tree = load_tree(trees_root() / "reference" / f"{name}.json")
                trees.append((name, tree.num_tokens, expected_accept_length(tree, profile)))
            for name, tokens, accept in trees:
                cost = overhead[tokens]
                rows.append({**common, "tree": name, "num_tokens": tokens,
                             "expected_accept_length": accept, "overhead": cost,
                             "tokens_per_s_with_medusa": accept * plain_tps / cost,
                             "speedup": accept / cost})
    return rows


def markdown(rows: list[dict[str, Any]], gpus: list[str]) -> str:
    """Speedups per model and tree, one column per GPU, beside the seed's measured figure."""
    header = ["model", "tree", "tokens/step", "E[accept]",
              *[f"{gpu} ({rows_figure(rows, gpu)})" for gpu in gpus], "seed (A100, Medusa-2)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 2)]
    keys = dict.fromkeys((row["model"], row["tree"]) for row in rows)
    for model, tree in keys:
        cells = {row["gpu"]: row for row in rows if (row["model"], row["tree"]) == (model, tree)}
        first = next(iter(cells.values()))
        lines.append("| " + " | ".join([
            model, tree, str(first["num_tokens"]), f"{first['expected_accept_length']:.2f}",
            *[f"{cells[gpu]['speedup']:.2f}x" for gpu in gpus],
            f"{first['seed_speedup_a100_medusa2']:.2f}x"]) + " |")
    return "\n".join(lines)


def markdown_tokens_per_s(rows: list[dict[str, Any]], gpus: list[str]) -> str:
    """Tokens/s without Medusa, with the first published tree and with the tuned tree."""
    header = ["model", *[f"{gpu}: w/o / published / tuned ({rows_figure(rows, gpu)})"
                         for gpu in gpus]]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(gpus)]
    for model in MODELS:
        cells = []
        for gpu in gpus:
            mine = {row["tree"]: row for row in rows
                    if row["gpu"] == gpu and row["model"] == model.label}
            published, tuned = mine[model.published[0]], mine["treeopt tuned"]
            cells.append(f"{published['tokens_per_s_without_medusa']:.0f} / "
                         f"{published['tokens_per_s_with_medusa']:.0f} / "
                         f"{tuned['tokens_per_s_with_medusa']:.0f}")
        lines.append("| " + " | ".join([model.label, *cells]) + " |")
    return "\n".join(lines)


def rows_figure(rows: list[dict[str, Any]], gpu: str) -> str:
    figures = sorted({row["figure"] for row in rows if row["gpu"] == gpu})
    return "/".join(figures)


def plot(rows: list[dict[str, Any]], gpus: list[str], path: Path) -> Path:
    """The seed's bars per GPU: tokens/s without Medusa, with the published and tuned trees."""
    from treeopt.pictures.roofline_plots import _pyplot, _save

    plt = _pyplot()
    figure, axes = plt.subplots(1, len(gpus), figsize=(4.6 * len(gpus), 4.2), squeeze=False)
    bars = (("w/o Medusa", "#999999"), ("published tree", "#0072b2"),
            ("treeopt tuned", "#d55e00"))
    width = 0.27
    for axis, gpu in zip(axes[0], gpus, strict=True):
        groups = [model.label for model in MODELS]
        top = 0.0
        for index, model in enumerate(MODELS):
            mine = [row for row in rows if row["gpu"] == gpu and row["model"] == model.label]
            published = next(row for row in mine if row["tree"] == model.published[0])
            tuned = next(row for row in mine if row["tree"] == "treeopt tuned")
            heights = (published["tokens_per_s_without_medusa"],
                       published["tokens_per_s_with_medusa"], tuned["tokens_per_s_with_medusa"])
            for offset, ((label, colour), height) in enumerate(zip(bars, heights, strict=True)):
                x = index + (offset - 1) * width
                axis.bar(x, height, width, color=colour, label=label if index == 0 else None)
                if offset:  # the speedup over the grey bar, above each Medusa bar
                    axis.annotate(f"{height / heights[0]:.2f}x", (x, height), xytext=(0, 2),
                                  textcoords="offset points", ha="center", va="bottom",
                                  rotation=90, fontsize=7)
            top = max(top, *heights)
        axis.set_xticks(range(len(groups)), groups, fontsize=8)
        axis.set_ylim(0, top * 1.25)
        figures = rows_figure(rows, gpu)
        axis.set_title(f"{gpu} ({figures})", fontsize=9)
        axis.set_ylabel(f"tokens/s, batch {BATCH}, context {CONTEXT} ({figures})", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="upper right")
    kinds = {row["figure"] for row in rows}
    how = ("PREDICTED by treeopt's roofline model (datasheet ceilings)" if kinds == {PREDICTED}
           else "latency measured or predicted as each panel says")
    figure.suptitle(f"Medusa speedup on the seed's four models: {how}; Zephyr uses the "
                    f"vicuna-7b acceptance profile", fontsize=9)
    figure.text(0.5, -0.02, "Seed (Medusa paper, A100, Medusa-2, measured): Vicuna-7B 2.83x, "
                "Zephyr-7B 2.66x, Vicuna-13B 2.83x, Vicuna-33B 2.35x. Acceptance here: "
                "published Medusa-1 top-5 head accuracies.", ha="center", fontsize=7)
    figure.tight_layout()
    return _save(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n  python benchmarks/seed_chart.py -o /tmp/seed.json "
               "--plot docs/images/seed_chart.png\n  python benchmarks/seed_chart.py "
               "-o /tmp/seed.json --latency-dir /tmp/gpu --gpus h200",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", default=DEFAULT_GPUS,
                        help=f"GPUs, comma-separated (default {DEFAULT_GPUS}): table slugs or "
                             "GPU JSON files")
    parser.add_argument("--latency-dir", type=Path,
                        help="folder of latency_<arch>.json tables measured by gpu_session.sh; "
                             "each replaces the prediction for the GPU it was measured on")
    parser.add_argument("-o", "--output", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--plot", type=Path, help="picture to draw (.png, .svg or .pdf)")
    args = parser.parse_args(argv)
    gpus = [gpu for gpu in args.gpus.split(",") if gpu]
    for gpu in gpus:
        get_gpu(gpu)  # a bad name fails before any work
    if args.latency_dir is not None and not args.latency_dir.is_dir():
        parser.error(f"--latency-dir {args.latency_dir} is not a folder")

    rows = chart_rows(gpus, args.latency_dir)
    document = {
        "description": "tokens/s without and with Medusa at batch 1, context 1024; "
                       "speedup = E[accept] / step overhead",
        "figures": {gpu: rows_figure(rows, gpu) for gpu in gpus},
        "batch": BATCH, "context": CONTEXT, "gpus": gpus,
        "seed": {"gpu": "A100", "heads": "Medusa-2", "figure": "measured",
                 "speedup": {model.label: model.seed_speedup for model in MODELS}},
        "command": " ".join(["python", "benchmarks/seed_chart.py",
                             *(sys.argv[1:] if argv is None else argv)]),
        "created": utc_now(),
        "rows": rows,
    }
    atomic_write_text(args.output, json.dumps(document, indent=1) + "\n")
    print(markdown(rows, gpus))
    print()
    print(markdown_tokens_per_s(rows, gpus))
    if args.plot is not None:
        print(f"drew {plot(rows, gpus, args.plot)}", file=sys.stderr)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
