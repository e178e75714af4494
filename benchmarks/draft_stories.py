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
import copy
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_e2e as e2e  # noqa: E402  (the e2e test's prompts, split and settings)

from medusa_runtime import generate  # noqa: E402
from medusa_runtime.drafter import DraftModelDrafter  # noqa: E402
from medusa_runtime.timing import time_verification_step  # noqa: E402
from treeopt.core.atomic import atomic_write_text  # noqa: E402
from treeopt.core.tree import Tree  # noqa: E402
from treeopt.model.draft_profiling import profile_draft_model  # noqa: E402
from treeopt.model.loading import load_base_model  # noqa: E402
from treeopt.model.profiling import ProfileSettings, greedy_continuations  # noqa: E402
from treeopt.optimize.draft_tune import DraftPoint, tune_draft  # noqa: E402

CONTEXT = 128  # cached tokens while timing a step: the decoded prompts' scale
WARMUP, REPEATS = 5, 40  # CPU timings are noisy: many repeats, median
PROFILE_DEPTH = 6
# Distillation: full-batch-ish AdamW on ~30k tokens; enough for the loss to settle.
BATCH, LEARNING_RATE, TEMPERATURE = 16, 3e-3, 1.0


def make_draft(target: Any, layers: int) -> Any:
    """A ``layers``-layer copy of the target's shape, from its first layers and embeddings."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(target.config)
    config.num_hidden_layers = layers
    if hasattr(config, "layer_types") and config.layer_types is not None:
        config.layer_types = config.layer_types[:layers]
    draft = AutoModelForCausalLM.from_config(config)
    state = {key: value for key, value in target.state_dict().items()
             if not key.startswith("model.layers.")
             or int(key.split(".")[2]) < layers}
    draft.load_state_dict(state, strict=True)
    return draft


def distill(target: Any, draft: Any, sequences: list[list[int]], epochs: int,
            seed: int) -> list[float]:
    """Train ``draft`` to the target's next-token distributions; mean loss per epoch."""
    import torch.nn.functional as F

    generator = random.Random(seed)
    draft.train()
    optimizer = torch.optim.AdamW(draft.parameters(), lr=LEARNING_RATE)
    losses = []
    for _ in range(epochs):
        order = generator.sample(range(len(sequences)), len(sequences))
        total = count = 0.0
        for begin in range(0, len(order), BATCH):
            rows = [sequences[i] for i in order[begin:begin + BATCH]]
            width = max(len(row) for row in rows)
            ids = torch.zeros(len(rows), width, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for r, row in enumerate(rows):
                ids[r, :len(row)] = torch.tensor(row)
                mask[r, :len(row)] = 1
            with torch.no_grad():
                teacher = target(input_ids=ids, attention_mask=mask).logits / TEMPERATURE
            student = draft(input_ids=ids, attention_mask=mask).logits / TEMPERATURE
            per_token = F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1),
                                 log_target=True, reduction="none").sum(-1)
            loss = (per_token * mask).sum() / mask.sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss) * len(rows)
            count += len(rows)
        losses.append(total / count)
    draft.eval()
    draft.requires_grad_(False)
    return losses


def decode_rate(model: Any, tree: Tree, prompts: list[list[int]], eos: int | None,
                drafter: Any = None, heads: Any = None) -> dict[str, float]:
    """Decode every prompt (compiled step); tokens/s after the prefill, tokens per step."""
    tokens = steps = 0
    seconds = 0.0
    for prompt in prompts:
        result = generate(model, heads, tree, prompt, e2e.MAX_NEW_TOKENS, eos_token_id=eos,
                          compile_step=True, drafter=drafter)
        tokens += len(result.tokens) - 1
        steps += result.verification_steps
        seconds += result.wall_time_s - result.prefill_s
    return {"tokens_per_s": tokens / seconds, "tokens_per_step": tokens / steps}


def point_json(point: DraftPoint) -> dict[str, Any]:
    return {"num_tokens": point.num_tokens, "draft_passes": point.draft_passes,
            "tree": point.tree.as_lists(),
            "predicted_tokens_per_step": round(point.expected_accept_length, 4),
            "step_ms": round(point.step_seconds * 1e3, 4),
            "predicted_speedup": round(point.speedup, 4)}


def main(argv: list[str] | None = None) -> int:
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
    parser.add_argument("--heads", type=Path, help="Trained Medusa heads to decode too "
                        "(e.g. cpu_loop.py's; their tree is built from their own profile).")
    args = parser.parse_args(argv)
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
    step_ms: dict[Tree, float] = {}

    def step_seconds(tree: Tree) -> float:
        if tree not in step_ms:
            timed = time_verification_step(model, None, tree.num_tokens, context=CONTEXT,
                                           warmup=WARMUP, repeats=REPEATS, tree=tree,
                                           drafter=drafter, compile_step=True)
            step_ms[tree] = timed["median_s"]
        return step_ms[tree]

    started = time.perf_counter()
    plain_s = step_seconds(Tree.chain(0))
    tuned = tune_draft(profile, step_seconds, plain_s, args.max_gamma, args.max_budget,
                       acceptance_model="joint")
    timings["step_timing_s"] = time.perf_counter() - started

    started = time.perf_counter()
    plain = decode_rate(model, Tree.chain(0), held_ids, eos)
    runs: dict[str, dict[str, Any]] = {"plain": {**plain, "measured_speedup": 1.0}}
    for name, point in (("draft chain (tuned gamma)", tuned.best_chain),
                        ("draft tree (tuned)", tuned.best_tree)):
        run = decode_rate(model, point.tree, held_ids, eos, drafter=drafter)
        runs[name] = {**point_json(point), "measured_tokens_per_step": run["tokens_per_step"],
                      "measured_tokens_per_s": run["tokens_per_s"],
                      "measured_speedup": run["tokens_per_s"] / plain["tokens_per_s"]}
    if args.heads is not None:
        runs["medusa heads"] = medusa_run(model, tokenizer, args.heads, calibration_ids,
                                          held_ids, eos, plain)
    timings["decode_s"] = time.perf_counter() - started

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


def medusa_run(model: Any, tokenizer: Any, heads_dir: Path, calibration_ids: list[list[int]],
               held_ids: list[list[int]], eos: int | None,
               plain: dict[str, float]) -> dict[str, Any]:
    """Medusa heads on the same prompts: profiled, tuned on timed steps, decoded."""
    from treeopt import measure_latency, tune_tree
    from treeopt.model.loading import load_heads
    from treeopt.model.profiling import profile_model

    heads = load_heads(str(heads_dir))
    with tempfile.TemporaryDirectory() as tmp:
        profile = profile_model(
            model, tokenizer, heads, calibration_ids, Path(tmp) / "heads.json",
            ProfileSettings(top_k=e2e.TOP_K, max_new_tokens=e2e.MAX_NEW_TOKENS),
            str(e2e.STORIES), str(heads_dir), progress=False)
    sizes = [1, 2, 3, 4, 6, 8]
    table = measure_latency(model, heads, "stories260K", [1], [CONTEXT], sizes, "cpu",
                            "float32", WARMUP, REPEATS, show_progress=False, compile_step=True)
    tuned = tune_tree(profile, table, acceptance_model="joint")
    run = decode_rate(model, tuned.tree, held_ids, eos, heads=heads)
    return {"num_tokens": tuned.result.best.num_tokens, "tree": tuned.tree.as_lists(),
            "predicted_tokens_per_step": round(tuned.score, 4),
            "predicted_speedup": round(tuned.result.best.speedup, 4),
            "measured_tokens_per_step": run["tokens_per_step"],
            "measured_tokens_per_s": run["tokens_per_s"],
            "measured_speedup": run["tokens_per_s"] / plain["tokens_per_s"]}


if __name__ == "__main__":
    sys.exit(main())
