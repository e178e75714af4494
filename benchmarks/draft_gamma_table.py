"""Predicted best draft length gamma for Vicuna-7B/13B/33B with 68M/160M/1.1B drafts (A100).

The Medusa paper's speculative-decoding baseline found gamma = 4 best for Vicuna-7B
with Llama-68M, gamma = 3 for 13B (Llama-68M) and gamma = 3 for 33B (Tiny-Vicuna-1B).
Here treeopt predicts it: the roofline times the draft's passes and the target's
verification from the shapes (``treeopt.cost.drafts``), and a chain of gamma tokens
each accepted with probability alpha gains ``(1 - alpha^(gamma+1)) / (1 - alpha)``
tokens a step. Acceptance rates of these pairs are not measured here (no GPU, no
weights), so alpha is swept; per-operator fixed cost is swept too: 0 (datasheet
roofline, a lower bound on step time) and a launch cost per operator, which is what
makes a tiny draft's pass cost more than its bytes.

    python benchmarks/draft_gamma_table.py -o benchmarks/results/draft_gamma_table.json

Prints a Markdown table; writes JSON (predicted figures, labelled so) only to -o.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from treeopt.core.atomic import atomic_write_text
from treeopt.core.timestamps import utc_now
from treeopt.core.tree import Tree
from treeopt.cost.arch import get_arch
from treeopt.cost.drafts import predict_draft_step
from treeopt.cost.gpus import get_gpu
from treeopt.cost.roofline import DeviceProfile
from treeopt.optimize.draft_tune import best_draft_point, chain_accept_length, draft_point

TARGETS = ("llama-7b", "llama-13b", "llama-33b")
DRAFTS = ("llama-68m", "llama-160m", "tinyllama-1.1b")
# (target, draft) -> the Medusa paper's best gamma for that pair.
PAPER_GAMMA = {("llama-7b", "llama-68m"): 4, ("llama-13b", "llama-68m"): 3,
               ("llama-33b", "tinyllama-1.1b"): 3}
ALPHAS = (0.5, 0.6, 0.7, 0.8)
# Fixed cost per operator instance: none (datasheet roofline), and ~10 us, the order of
# an eager PyTorch kernel launch plus dispatch (HF-style decoding, as the paper's baseline).
KERNEL_OVERHEADS_US = (0.0, 10.0)
MAX_GAMMA = 12
CONTEXT = 1024  # tokens in the KV cache (MT-Bench prompt + answer scale)


def table(gpu_name: str, batch: int, context: int) -> list[dict]:
    gpu = get_gpu(gpu_name)
    rows = []
    for kernel_us in KERNEL_OVERHEADS_US:
        device = DeviceProfile(f"{gpu.name} datasheet + {kernel_us:g} us/operator",
                               gpu.peak_tflops, gpu.bandwidth_gbs, kernel_us)
        for target_name in TARGETS:
            for draft_name in DRAFTS:
                target, draft = get_arch(target_name), get_arch(draft_name)
                costs = {g: predict_draft_step(target, draft, Tree.chain(g), None, batch,
                                               context, device_profile=device)
                         for g in range(MAX_GAMMA + 1)}
                plain = costs[0].plain_s
                for alpha in ALPHAS:
                    points = [draft_point(Tree.chain(g), chain_accept_length(alpha, g),
                                          costs[g].step_s, plain)
                              for g in range(MAX_GAMMA + 1)]
                    best = best_draft_point(points)
                    rows.append({
                        "target": target_name, "draft": draft_name, "alpha": alpha,
                        "kernel_overhead_us": kernel_us,
                        "predicted_best_gamma": best.draft_passes,
                        "predicted_speedup": round(best.speedup, 3),
                        "predicted_speedup_by_gamma": [round(p.speedup, 3) for p in points],
                        "draft_pass_ms": round(costs[1].draft_s * 1e3, 4),
                        "plain_step_ms": round(plain * 1e3, 4),
                        "paper_gamma": PAPER_GAMMA.get((target_name, draft_name)),
                    })
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| target | draft | paper gamma | us/op | draft pass / plain step (ms) | "
             + " | ".join(f"alpha {a}" for a in ALPHAS) + " |",
             "|---|---|---|---|---|" + "---|" * len(ALPHAS)]
    keyed = {(r["target"], r["draft"], r["kernel_overhead_us"], r["alpha"]): r for r in rows}
    for kernel_us in KERNEL_OVERHEADS_US:
        for target in TARGETS:
            for draft in DRAFTS:
                first = keyed[(target, draft, kernel_us, ALPHAS[0])]
                cells = [f"{keyed[(target, draft, kernel_us, a)]['predicted_best_gamma']} "
                         f"({keyed[(target, draft, kernel_us, a)]['predicted_speedup']:.2f}x)"
                         for a in ALPHAS]
                lines.append(f"| {target} | {draft} | {first['paper_gamma'] or '-'} | "
                             f"{kernel_us:g} | {first['draft_pass_ms']:.3f} / "
                             f"{first['plain_step_ms']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--gpu", default="a100-80gb-sxm", help="GPU spec name (datasheet).")
    parser.add_argument("--batch", type=int, default=1, help="Sequences per step.")
    parser.add_argument("--context", type=int, default=CONTEXT, help="Cached tokens.")
    parser.add_argument("-o", "--output", type=Path, help="JSON to write (default: none).")
    args = parser.parse_args(argv)
    rows = table(args.gpu, args.batch, args.context)
    print(markdown(rows))
    if args.output is not None:
        document = {
            "command": "python benchmarks/draft_gamma_table.py " + " ".join(
                sys.argv[1:] if argv is None else argv),
            "device": f"{args.gpu} (predicted by the roofline, not measured)",
            "created": utc_now(), "batch": args.batch, "context": args.context,
            "max_gamma": MAX_GAMMA, "acceptance": "independent per token, alpha swept",
            "rows": rows,
        }
        atomic_write_text(args.output, json.dumps(document, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
