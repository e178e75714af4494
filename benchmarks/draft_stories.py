"""Draft-model speculative decoding measured on this CPU: a trained small draft for stories260K.

On ``../shared/models/stories260K`` (5 layers) with the e2e test's prompt split
(``tests/test_e2e.py``):

1. make a draft: ``--layers`` decoder layers (default 1) of the target's shape,
   started from the target's embeddings, first layers and final norm, and trained
   by distillation (KL to the target's next-token distribution) on the target's own
   greedy continuations of the training prompts;
2. profile it (``treeopt.model.draft_profiling``) on calibration prompts held out of
   its training: per position and depth, the rank of the target's token in the
   draft's top-k;
3. time the runtime's compiled step (draft passes + verification) for every chain
   ``gamma = 0..--max-gamma`` and every tree ``build`` grows up to ``--max-budget``;
4. tune: speedup = replayed tokens/step x plain step / step (``tune_draft``);
5. decode the held-out prompts with the compiled runtime: plain decoding, the tuned
   chain and the tuned tree (and, with ``--heads``, Medusa heads on their tuned
   tree from the same kind of sweep), measuring tokens/step and tokens/s.

Measured speedup = decode tokens/s over plain decoding's (prefill and compilation
excluded); one thread. A few minutes, mostly compilation.

    python benchmarks/draft_stories.py -o benchmarks/results/draft_stories.json

Writes the JSON report to -o and, with --draft-dir, the trained draft (model +
tokenizer, loadable by ``treeopt generate --draft-model``); nothing else.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common as e2e  # the stories260K end-to-end settings and prompt split
import torch
from common import decode_speed, distill, make_draft

from medusa_runtime.drafter import DraftModelDrafter
from medusa_runtime.timing import time_verification_step
from treeopt.core.atomic import atomic_write_text
from treeopt.core.tree import Tree
from treeopt.model.draft_profiling import profile_draft_model
from treeopt.model.loading import load_base_model
from treeopt.model.profiling import ProfileSettings, greedy_continuations
from treeopt.optimize.build import build_tree
from treeopt.optimize.draft_tune import DraftPoint, best_draft_point, tune_draft

CONTEXT = 128  # cached tokens while timing a step: the decoded prompts' scale
WARMUP, REPEATS = 5, 40  # CPU timings are noisy: many repeats, median
PROFILE_DEPTH = 6
MEDUSA_MAX_BUDGET = 8  # cpu_loop.py tuned n* = 4 on these heads; 8 leaves room either side
def decode_rates(model: Any, runs: dict[str, tuple[Tree, Any, Any]],
                 prompts: list[list[int]], eos: int | None) -> dict[str, dict[str, float]]:
    """Decode every prompt with every setting (compiled step), interleaved prompt by prompt
    so a busy machine slows all settings alike; tokens/s after the prefill, tokens/step.

    ``runs``: name -> (tree, Medusa heads or None, drafter or None).
    """
    totals = {name: [0, 0, 0.0] for name in runs}  # tokens, steps, seconds
    for prompt in prompts:
        for name, (tree, heads, drafter) in runs.items():
            speed = decode_speed(model, heads, tree, [prompt], e2e.MAX_NEW_TOKENS,
                                 eos_token_id=eos, compile_step=True, drafter=drafter)
            totals[name][0] += speed.tokens
            totals[name][1] += speed.steps
            totals[name][2] += speed.seconds
    return {name: {"tokens_per_s": tokens / seconds, "tokens_per_step": tokens / steps}
            for name, (tokens, steps, seconds) in totals.items()}


def point_json(point: DraftPoint) -> dict[str, Any]:
    return {"num_tokens": point.num_tokens, "draft_passes": point.draft_passes,
            "tree": point.tree.as_lists(),
            "predicted_tokens_per_step": round(point.expected_accept_length, 4),
            "step_ms": round(point.step_seconds * 1e3, 4),
            "predicted_speedup": round(point.speedup, 4)}


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("-o", "--output", type=Path, required=True, help="JSON report.")
    parser.add_argument("--draft-dir", type=Path, help="Also save the trained draft here.")
    parser.add_argument("--layers", type=int, default=1, help="Draft decoder layers.")
    parser.add_argument("--epochs", type=int, default=8, help="Distillation epochs.")
    parser.add_argument("--calibration-prompts", type=int, default=120)
    parser.add_argument("--max-gamma", type=int, default=4, help="Longest chain timed.")
    parser.add_argument("--max-budget", type=int, default=6, help="Largest draft tree timed.")
    parser.add_argument("--heads", type=Path, help="Trained Medusa heads to compare with "
                        "(default: train them as cpu_loop.py does, on the draft's prompts).")
    parser.add_argument("--no-heads", action="store_true", help="Leave Medusa heads out.")
    return parser, parser.parse_args(argv)


def tuned_draft(model: Any, profile: Any, drafter: Any, args: argparse.Namespace) -> tuple:
    """(every chain and tree scored on this machine's measured step times, plain step s)."""
    candidates = [Tree.chain(gamma) for gamma in range(args.max_gamma + 1)]
    if args.max_budget >= 2:
        built = build_tree(profile, args.max_budget, acceptance_model="joint")
        candidates += [built.tree_at(size) for size in range(2, args.max_budget + 1)]
    step_s = timed_steps(model, candidates, drafter=drafter)
    plain_s = step_s[()]
    tuned = tune_draft(profile, lambda tree: step_s[tree.paths], plain_s, args.max_gamma,
                       args.max_budget, acceptance_model="joint")
    return tuned, plain_s


def draft_settings(tuned: Any, drafter: Any) -> tuple[dict[str, tuple[Tree, Any, Any]],
                                                      dict[str, Any]]:
    """(what to decode: name -> (tree, heads, drafter), the predicted figures of each)."""
    settings: dict[str, tuple[Tree, Any, Any]] = {
        "plain": (Tree.chain(0), None, None),
        "draft chain (tuned gamma)": (tuned.best_chain.tree, None, drafter),
        "draft tree (tuned)": (tuned.best_tree.tree, None, drafter),
    }
    predicted = {"draft chain (tuned gamma)": point_json(tuned.best_chain),
                 "draft tree (tuned)": point_json(tuned.best_tree)}
    # When the tuned tree is a chain, also decode the best tree that branches (rank > 0).
    branching = [p for p in tuned.trees if any(path[-1] for path in p.tree.paths)]
    if branching and not any(path[-1] for path in tuned.best_tree.tree.paths):
        best_branching = best_draft_point(branching)
        settings["draft tree (best branching)"] = (best_branching.tree, None, drafter)
        predicted["draft tree (best branching)"] = point_json(best_branching)
    return settings, predicted


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_args(argv)
    if not e2e.STORIES.is_dir():
        parser.error(f"needs {e2e.STORIES}")
    torch.set_num_threads(1)
    torch.manual_seed(e2e.SEED)
    timings: dict[str, float] = {}
    model, tokenizer = load_base_model(str(e2e.STORIES))
    eos = tokenizer.eos_token_id
    train_ids, held_ids = e2e.prompt_ids(model, tokenizer, args.max_budget + args.max_gamma)
    order = random.Random(e2e.SEED).sample(range(len(train_ids)), len(train_ids))
    calibration_ids = [train_ids[i] for i in sorted(order[: args.calibration_prompts])]
    draft_training_ids = [train_ids[i] for i in sorted(order[args.calibration_prompts:])]

    started = time.perf_counter()
    continuations = greedy_continuations(model, draft_training_ids, e2e.MAX_NEW_TOKENS, eos,
                                         None, str(e2e.STORIES), progress=False)
    draft = make_draft(model, args.layers)
    losses = distill(model, draft, [p + c for p, c in zip(draft_training_ids, continuations,
                                                          strict=True)], args.epochs, e2e.SEED)
    timings["train_draft_s"] = time.perf_counter() - started
    if args.draft_dir is not None:
        draft.save_pretrained(args.draft_dir)
        tokenizer.save_pretrained(args.draft_dir)

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        profile = profile_draft_model(
            model, tokenizer, draft, calibration_ids, Path(tmp) / "draft.json",
            ProfileSettings(top_k=e2e.TOP_K, max_new_tokens=e2e.MAX_NEW_TOKENS),
            str(e2e.STORIES), f"{args.layers}-layer draft", depth=PROFILE_DEPTH, progress=False)
        timings["profile_s"] = time.perf_counter() - started

    drafter = DraftModelDrafter(draft)
    started = time.perf_counter()
    tuned, plain_s = tuned_draft(model, profile, drafter, args)
    timings["step_timing_s"] = time.perf_counter() - started
    settings, predicted = draft_settings(tuned, drafter)
    if not args.no_heads:
        started = time.perf_counter()
        heads, tree, figures = medusa_setting(model, tokenizer, args.heads, draft_training_ids,
                                              calibration_ids)
        settings["medusa heads (tuned tree)"] = (tree, heads, None)
        predicted["medusa heads (tuned tree)"] = figures
        timings["medusa_heads_s"] = time.perf_counter() - started
    started = time.perf_counter()
    measured = decode_rates(model, settings, held_ids, eos)
    timings["decode_s"] = time.perf_counter() - started
    plain = measured["plain"]
    runs = {name: {**predicted.get(name, {}),
                   "measured_tokens_per_step": round(run["tokens_per_step"], 4),
                   "measured_tokens_per_s": round(run["tokens_per_s"], 1),
                   "measured_speedup": round(run["tokens_per_s"] / plain["tokens_per_s"], 4)}
            for name, run in measured.items()}

    report = {
        "device": f"cpu ({platform.processor() or platform.machine()}), 1 thread",
        "torch": torch.__version__,
        "command": "python benchmarks/draft_stories.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "model": "stories260K (5 layers)",
        "draft": f"{args.layers} layer(s) from the target's first, distilled {args.epochs} "
                 f"epochs on {len(draft_training_ids)} prompts' greedy continuations",
        "distillation_loss_per_epoch": [round(loss, 4) for loss in losses],
        "calibration_prompts": len(calibration_ids), "decoded_prompts": len(held_ids),
        "max_new_tokens": e2e.MAX_NEW_TOKENS, "latency_context": CONTEXT,
        "plain_step_ms": round(plain_s * 1e3, 4),
        "chains": [point_json(p) for p in tuned.chains],
        "trees": [point_json(p) for p in tuned.trees],
        "tuned_gamma": tuned.best_chain.draft_passes,
        "tuned_tree": tuned.best_tree.tree.as_lists(),
        "runs": runs,
        "timings_s": {key: round(value, 1) for key, value in timings.items()},
    }
    atomic_write_text(args.output, json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("tuned_gamma", "tuned_tree", "runs")}, indent=1))
    print(f"wrote {args.output}")
    return 0


def timed_steps(model: Any, trees: list[Tree], heads: Any = None, drafter: Any = None,
                rounds: int = 3) -> dict[tuple, float]:
    """Seconds of one compiled step per tree (keyed by paths): the least of ``rounds``
    medians, the rounds interleaved over the trees so a busy machine's bursts fall out."""
    unique = list({tree.paths: tree for tree in trees}.values())
    best: dict[tuple, float] = {}
    for _ in range(rounds):
        for tree in unique:
            timed = time_verification_step(model, heads, tree.num_tokens, context=CONTEXT,
                                           warmup=WARMUP, repeats=REPEATS, tree=tree,
                                           drafter=drafter, compile_step=True)
            best[tree.paths] = min(best.get(tree.paths, float("inf")), timed["median_s"])
    return best


def medusa_setting(model: Any, tokenizer: Any, heads_dir: Path | None,
                   training_ids: list[list[int]], calibration_ids: list[list[int]]
                   ) -> tuple[Any, Tree, dict[str, Any]]:
    """Medusa heads (trained as cpu_loop.py does unless given), profiled on the calibration
    prompts, their tree tuned on timed steps: (heads, tree, predicted figures)."""
    from treeopt import tune_tree
    from treeopt.core.latency import LatencyTable
    from treeopt.model.loading import load_heads
    from treeopt.model.profiling import profile_model
    from treeopt.model.train_heads import TrainSettings, train_heads

    with tempfile.TemporaryDirectory() as tmp:
        if heads_dir is None:
            heads_dir = Path(tmp) / "heads"
            train_heads(model, tokenizer, training_ids, heads_dir,
                        TrainSettings(epochs=20, learning_rate=1e-2, batch_size=16,
                                      max_new_tokens=e2e.MAX_NEW_TOKENS, seed=e2e.SEED),
                        model_id=str(e2e.STORIES), progress=False)
        heads = load_heads(str(heads_dir))
        profile = profile_model(
            model, tokenizer, heads, calibration_ids, Path(tmp) / "heads.json",
            ProfileSettings(top_k=e2e.TOP_K, max_new_tokens=e2e.MAX_NEW_TOKENS),
            str(e2e.STORIES), "trained heads", progress=False)
    built = build_tree(profile, MEDUSA_MAX_BUDGET, acceptance_model="joint")
    step_s = timed_steps(model, [built.tree_at(n) for n in range(1, MEDUSA_MAX_BUDGET + 1)],
                         heads=heads)
    table = LatencyTable(
        {(1, CONTEXT, len(paths) + 1): seconds for paths, seconds in step_s.items()},
        source="measured", device="cpu", dtype="float32", arch="stories260K",
        method={"compiled_step": True, "timer": "least of 3 interleaved medians"})
    tuned = tune_tree(profile, table, acceptance_model="joint")
    best = tuned.result.best
    return heads, tuned.tree, {
        "num_tokens": best.num_tokens, "tree": tuned.tree.as_lists(),
        "predicted_tokens_per_step": round(tuned.score, 4),
        "step_ms": round(step_s[tuned.tree.paths] * 1e3, 4),
        "predicted_speedup": round(best.speedup, 4)}


if __name__ == "__main__":
    sys.exit(main())
