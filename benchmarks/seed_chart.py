"""The seed's chart: predicted speedup for Vicuna-7B/13B/33B, tuned tree vs published trees.

For each model: the bundled acceptance profile (from the published head
accuracies) gives E[accept] for the builder's nested trees and for the published
trees; a latency table for the matching Llama shape gives the step overhead;
speedup = E[accept] / overhead. The latency is MEASURED with random-weight
models on this GPU when run with ``--device cuda``, otherwise PREDICTED by the
roofline model for ``--gpu`` (datasheet ceilings, so a lower bound on step
time and an optimistic overhead), and the output says which.

    python benchmarks/seed_chart.py --gpu a100-80gb-sxm            # predicted
    python benchmarks/seed_chart.py --device cuda                  # measured (GPU)

Writes ``benchmarks/results/seed_chart_<device>.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from treeopt.core.atomic import atomic_write_text
from treeopt.core.latency import LatencyTable
from treeopt.core.timestamps import utc_now
from treeopt.cost.arch import get_arch
from treeopt.files.profile_file import load_profile
from treeopt.files.shipped import trees_root
from treeopt.files.tree_file import load_tree
from treeopt.optimize.acceptance_models import expected_accept_length
from treeopt.optimize.build import build_tree
from treeopt.optimize.tune import tune_size

RESULTS = Path(__file__).resolve().parent / "results"
# (bundled profile, Llama shape, published trees, the seed's speedup on an A100)
MODELS = (
    ("vicuna-7b", "llama-7b", ("vicuna_7b_stage1", "vicuna_7b_stage2", "mc_sim_7b_63"), 2.83),
    ("vicuna-13b", "llama-13b", ("vicuna_13b_stage1", "vicuna_13b_stage2"), 2.83),
    ("vicuna-33b", "llama-33b", ("vicuna_33b_stage1", "vicuna_33b_stage2"), 2.35),
)
SEED_DEVICE = "A100"
MAX_BUDGET = 256
# Measured sweeps time these sizes (tune interpolates between them); predictions
# are cheap, so they cover every size.
MEASURED_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 56, 64, 72, 80, 96, 128, 160, 192, 256)


def latency_table(arch_name: str, args: argparse.Namespace) -> LatencyTable:
    """Step latency of ``arch_name`` at (batch, context): measured on CUDA, else predicted."""
    arch = get_arch(arch_name)
    if args.device == "cuda":
        import torch

        from medusa_runtime.heads import MedusaConfig, MedusaHeads
        from medusa_runtime.timing import random_weight_model
        from treeopt.model.measure import measure_latency

        model = random_weight_model(arch.to_hf_config_dict(), torch.bfloat16, "cuda")
        heads = MedusaHeads(MedusaConfig(args.heads, 1, arch.hidden_size, arch.vocab_size))
        heads = heads.to(device="cuda", dtype=torch.bfloat16).eval()
        table = measure_latency(model, heads, arch.name, [args.batch], [args.context],
                                list(MEASURED_SIZES), "cuda", "bfloat16", args.warmup,
                                args.repeats)
        del model, heads
        torch.cuda.empty_cache()
        return table
    from treeopt.cost.gpus import get_gpu
    from treeopt.cost.predict import predict_latency

    return predict_latency(arch, get_gpu(args.gpu), [args.batch], [args.context],
                           list(range(1, MAX_BUDGET + 1)), "bf16")


def chart_rows(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """One row per model (tuned tree) and one per published tree, plus each latency's metadata."""
    rows, latencies = [], []
    for profile_name, arch_name, published, seed_speedup in MODELS:
        profile = load_profile(profile_name)
        table = latency_table(arch_name, args)
        latencies.append({"arch": arch_name, "source": table.source, "device": table.device,
                          "description": table.describe()})
        overhead = table.overhead_curve(args.batch, args.context)
        built = build_tree(profile, min(MAX_BUDGET, max(overhead)))
        best = tune_size(list(built.curve), table, args.batch, args.context).best
        rows.append({
            "model": profile_name, "arch": arch_name, "tree": f"tuned (n*={best.num_tokens})",
            "num_tokens": best.num_tokens, "expected_accept_length": best.expected_accept_length,
            "overhead": best.overhead, "speedup": best.speedup, "seed_speedup": seed_speedup,
            "latency_source": table.source,
        })
        for name in published:
            tree = load_tree(trees_root() / "reference" / f"{name}.json")
            accept = expected_accept_length(tree, profile)
            cost = overhead[tree.num_tokens]
            rows.append({
                "model": profile_name, "arch": arch_name, "tree": name,
                "num_tokens": tree.num_tokens, "expected_accept_length": accept,
                "overhead": cost, "speedup": accept / cost, "seed_speedup": seed_speedup,
                "latency_source": table.source,
            })
    return rows, latencies


def markdown(rows: list[dict]) -> str:
    """The chart as a Markdown table."""
    lines = [
        f"| model | tree | tokens/step | E[accept] | overhead | predicted speedup | "
        f"seed ({SEED_DEVICE}) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['tree']} | {row['num_tokens']} | "
            f"{row['expected_accept_length']:.3f} | {row['overhead']:.3f} | "
            f"{row['speedup']:.2f}x | {row['seed_speedup']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("predict", "cuda"), default="predict",
                        help="cuda: measure random-weight models here; predict: roofline model")
    parser.add_argument("--gpu", default="a100-80gb-sxm", help="GPU to predict for")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--context", type=int, default=1024,
                        help="KV positions cached (the Medusa appendix analyses 1024)")
    parser.add_argument("--heads", type=int, default=5, help="Medusa heads timed (measured)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args(argv)

    rows, latencies = chart_rows(args)
    label = latencies[0]["device"].lower().replace(" ", "-")
    output = args.output or RESULTS / f"seed_chart_{label}.json"
    document = {
        "description": "Predicted speedup = E[accept] under the bundled profile / step overhead",
        "latency_source": latencies[0]["source"],
        "latencies": latencies,
        "batch": args.batch,
        "context": args.context,
        "command": " ".join(["python", "benchmarks/seed_chart.py", *(argv or sys.argv[1:])]),
        "created": utc_now(),
        "rows": rows,
    }
    atomic_write_text(output, json.dumps(document, indent=1) + "\n")
    print(f"latency: {latencies[0]['description']}; batch {args.batch}, context {args.context}")
    print(markdown(rows))
    print(f"wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
