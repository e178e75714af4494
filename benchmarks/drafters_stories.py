"""Drafters side by side on stories260K: Medusa heads, EAGLE-1 and EAGLE-3 (measured, CPU).

On ``../shared/models/stories260K`` with the e2e prompt split (``common.prompt_ids``):

1. train, on the same training prompts and the model's same greedy continuations,
   Medusa-1 heads (``train_heads``), an EAGLE-1 and an EAGLE-3 drafter
   (``train_eagle``), each for ``--epochs`` epochs;
2. decode the held-out prompts with the runtime (exact greedy text) at the same
   verification budgets (tokens verified a step, root included): every drafter on
   the static ``mc_sim_7b_63`` tree (64 tokens), and the EAGLE drafters on the
   engine-style ``dynamic:S,K,N`` beam for N in ``--budgets``;
3. report tokens/step and tokens/s (prefill excluded, one thread) beside plain
   decoding, and check every output equals plain greedy decoding's.

Not here yet: tuned static trees per budget, Medusa's ``dynamic:N`` and the draft
model (``benchmarks/draft_stories.py`` measures the draft model with the same split).
Timings on a shared CPU are noisy; tokens/step is not.

    python benchmarks/drafters_stories.py -o benchmarks/results/drafters_stories.json \\
        --plot docs/images/drafters.png
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common as e2e
import torch
from common import decode_speed

from treeopt.core.atomic import atomic_write_text

STATIC_TREE = "mc_sim_7b_63"
BEAM_STEPS, BEAM_TOP_K = 5, 4  # dynamic:5,4,N covers every N <= 69


def _train(model: Any, tokenizer: Any, train_ids: list, work: Path, epochs: int,
            new_tokens: int) -> dict[str, Any]:
    """Medusa heads and EAGLE-1/3 drafters trained on ``train_ids``; their folders."""
    from treeopt.model.train_eagle import EagleSettings, train_eagle
    from treeopt.model.train_heads import TrainSettings, train_heads

    targets = work / "targets.json"  # one greedy-continuation cache for all three
    common = dict(epochs=epochs, max_new_tokens=new_tokens, held_out_fraction=0.05)
    reports = {"medusa": train_heads(model, tokenizer, train_ids, work / "medusa",
                                     TrainSettings(num_heads=5, **common), "stories260K",
                                     progress=False, targets_file=targets)}
    for version in (1, 3):
        reports[f"eagle{version}"] = train_eagle(
            model, tokenizer, train_ids, work / f"eagle{version}",
            EagleSettings(eagle_version=version, **common), "stories260K", progress=False,
            targets_file=targets)
    return reports


def _configs(model: Any, work: Path, budgets: list[int]) -> list[tuple[str, str, Any, Any, Any]]:
    """(drafter, tree name, tree, heads, drafter object) for every measured run."""
    from medusa_runtime.beam import BeamTree
    from medusa_runtime.heads import MedusaHeads
    from treeopt.core.tree import Tree
    from treeopt.files.tree_file import load_tree
    from treeopt.model.loading import load_eagle

    static = load_tree(STATIC_TREE)
    heads = MedusaHeads.from_pretrained(str(work / "medusa")).to(torch.float32)
    runs = [("plain", "root", Tree.chain(0), None, None),
            ("medusa", STATIC_TREE, static, heads, None)]
    for version in (1, 3):
        drafter = load_eagle(str(work / f"eagle{version}"), model)
        runs.append((f"eagle{version}", STATIC_TREE, static, None, drafter))
        for budget in budgets:
            beam = BeamTree(BEAM_STEPS, BEAM_TOP_K, budget)
            runs.append((f"eagle{version}", f"dynamic:{BEAM_STEPS},{BEAM_TOP_K},{budget}",
                         beam, None, drafter))
    return runs


def _measure(model: Any, runs: list, held_ids: list, new_tokens: int) -> list[dict[str, Any]]:
    rows, reference = [], None
    for name, tree_name, tree, heads, drafter in runs:
        speed = decode_speed(model, heads, tree, held_ids, new_tokens, drafter=drafter,
                             warmup_new_tokens=8)
        if reference is None:
            reference = speed.outputs
        budget = getattr(tree, "num_tokens", None) or getattr(tree, "tokens", None)
        rows.append({"drafter": name, "tree": tree_name, "budget": budget,
                     "tokens_per_step": round(speed.tokens / max(1, speed.steps), 4),
                     "tokens_per_s": round(speed.tokens / max(speed.seconds, 1e-9), 1),
                     "exact_greedy": speed.outputs == reference})
        print(f"{name:7s} {tree_name:16s} {rows[-1]['tokens_per_step']:.3f} tokens/step "
              f"{rows[-1]['tokens_per_s']:.0f} tokens/s", file=sys.stderr)
    return rows


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    for name in ("eagle1", "eagle3"):
        dynamic = [r for r in rows if r["drafter"] == name and r["tree"].startswith("dynamic")]
        axis.plot([r["budget"] for r in dynamic], [r["tokens_per_step"] for r in dynamic],
                  marker="o", label=f"{name} dynamic:{BEAM_STEPS},{BEAM_TOP_K},N")
    for row in rows:
        if row["tree"] == STATIC_TREE:
            axis.scatter([row["budget"]], [row["tokens_per_step"]], marker="s",
                         label=f"{row['drafter']} {STATIC_TREE}")
    axis.set_xlabel("tokens verified per step (budget, root included)")
    axis.set_ylabel("measured tokens/step")
    axis.set_title("stories260K held-out prompts (measured, exact greedy)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    with tempfile.TemporaryDirectory() as tmp:
        figure.savefig(Path(tmp) / "plot.png", dpi=120)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((Path(tmp) / "plot.png").read_bytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", required=True, type=Path, help="JSON report")
    parser.add_argument("--plot", type=Path, help="PNG of tokens/step against the budget")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs per drafter")
    parser.add_argument("--max-new-tokens", type=int, default=e2e.MAX_NEW_TOKENS)
    parser.add_argument("--budgets", type=int, nargs="+", default=list(e2e.BUDGETS))
    parser.add_argument("--held-out", type=int, default=None, help="at most this many prompts")
    args = parser.parse_args(argv)
    torch.manual_seed(e2e.SEED)
    torch.set_num_threads(1)
    from treeopt.model.loading import load_base_model

    model, tokenizer = load_base_model(str(e2e.STORIES), device="cpu", dtype="float32")[:2]
    train_ids, held_ids = e2e.prompt_ids(model, tokenizer, 64)
    held_ids = held_ids[:args.held_out] if args.held_out else held_ids
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        reports = _train(model, tokenizer, train_ids, Path(tmp), args.epochs,
                         args.max_new_tokens)
        rows = _measure(model, _configs(model, Path(tmp), args.budgets), held_ids,
                        args.max_new_tokens)
    result = {
        "command": " ".join(["python", "benchmarks/drafters_stories.py", *(argv or sys.argv[1:])]),
        "device": f"cpu ({platform.processor() or platform.machine()}), 1 thread",
        "torch": torch.__version__, "train_prompts": len(train_ids),
        "held_out_prompts": len(held_ids), "max_new_tokens": args.max_new_tokens,
        "epochs": args.epochs, "seconds": round(time.perf_counter() - started, 1),
        "held_out_top1": {name: report["held_out_accuracy"]["top1"]
                          for name, report in reports.items()},
        "rows": rows,
    }
    atomic_write_text(args.output, json.dumps(result, indent=2) + "\n")
    if args.plot:
        _plot(rows, args.plot)
    return 0 if all(row["exact_greedy"] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
