"""Medusa-1 vs Medusa-2 (cross-entropy two-stage, self-distilled) on stories260K, on CPU.

Three ways to give ``../shared/models/stories260K`` Medusa heads, on the same
training prompts (story openers of ``tests/data/story_prompts.txt``, a seeded
held-out split never trained on) with the same number of optimizer steps each:

- ``medusa1``: heads only, base frozen (``train-heads``);
- ``medusa2_ce``: two-stage, LoRA + heads starting from the ``medusa1`` heads,
  backbone loss next-token cross-entropy (lambda_0 0.2);
- ``medusa2_distill``: LoRA + fresh heads, backbone loss KL to the original model
  (lambda_0 rising on a sine to 0.01);
- ``medusa2_distill_recipe_lr``: the same at the recipe's own backbone lr (1e-4,
  heads 4e-4), for what the small learning rate preserves and costs.

For each, on the held-out prompts: head top-1..5 accuracy against the model's own
greedy continuations (``profile``), tokens per verification step measured with the
runtime (greedy, ``mc_sim_7b_63`` and a 64-token tree built from that profile), and
what the base lost against the original: greedy agreement (teacher-forced on the
original's continuations: share of positions where the argmax is unchanged, and
share of continuations regenerated identically) and mean KL(original || tuned).
The heads' learning rate is the same in the first three runs (``--heads-lr``); the
backbone's is a quarter of it (the recipe's 4x ratio), far above the recipe's 1e-4
for a 7B model, because heads barely move in a few hundred steps at 4e-4.

    python benchmarks/medusa2_stories.py -o benchmarks/results/medusa2_stories.json

It writes only the ``-o`` file (required).
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

import torch

ROOT = Path(__file__).resolve().parents[1]
STORIES = ROOT.parent / "shared" / "models" / "stories260K"
STORY_PROMPTS = ROOT / "tests" / "data" / "story_prompts.txt"
TREE = "mc_sim_7b_63"
BUILT_BUDGET = 64
TOP_K = 10  # mc_sim_7b_63 uses ranks up to 9


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="example: python benchmarks/medusa2_stories.py -o "
               "benchmarks/results/medusa2_stories.json")
    parser.add_argument("-o", "--output", type=Path, required=True, help="JSON to write")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of each run")
    parser.add_argument("--heads-lr", type=float, default=1e-2, help="heads' peak lr (all runs)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--held-out", type=int, default=24, help="held-out prompts")
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, default=STORIES,
                        help="the stories260K folder (default: ../shared/models/stories260K)")
    return parser.parse_args()


def split_prompts(tokenizer: Any, held_out: int, seed: int) -> tuple[list[list[int]],
                                                                     list[list[int]]]:
    from treeopt.model.calibration import encode_prompts, read_prompts, split_held_out

    texts = read_prompts(STORY_PROMPTS)
    train, held = split_held_out(texts, held_out / len(texts), seed)
    return (encode_prompts(tokenizer, train, chat_template=False),
            encode_prompts(tokenizer, held, chat_template=False))


def train(kind: str, folder: Path, train_ids: list[list[int]], args: argparse.Namespace,
          init_heads: Path | None = None) -> dict[str, Any]:
    from treeopt.model.loading import load_base_model
    from treeopt.model.train_heads import JointSettings, TrainSettings, train_heads

    joint = None
    if kind != "medusa1":
        recipe = JointSettings()  # the recipe's backbone lr
        backbone_lr = recipe.backbone_lr if kind.endswith("recipe_lr") else args.heads_lr / 4
        joint = JointSettings(backbone_loss="ce" if kind == "medusa2_ce" else "distill",
                              backbone_lr=backbone_lr,
                              init_heads=str(init_heads) if init_heads else None)
    settings = TrainSettings(num_heads=args.num_heads, epochs=args.epochs,
                             learning_rate=args.heads_lr, batch_size=8,
                             max_new_tokens=args.max_new_tokens, seed=args.seed, joint=joint)
    model, tokenizer = load_base_model(str(args.model))
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    report = train_heads(model, tokenizer, train_ids, folder, settings, model_id="stories260K",
                         progress=False, targets_file=folder.parent / "targets.json")
    return {"train_seconds": round(time.perf_counter() - started, 1),
            "epochs": report["epochs"], "final_train_loss": report["final_train_loss"]}


def tokens_per_step(loaded: Any, tree: Any, prompts: list[list[int]], new_tokens: int) -> float:
    """New tokens after the prefill's per verification step, decoded with the runtime
    (``common.decode_speed``'s definition)."""
    from common import decode_speed

    return decode_speed(loaded.model, loaded.heads, tree, prompts, new_tokens,
                        eos_token_id=loaded.tokenizer.eos_token_id).tokens_per_step


def base_drift(original: Any, tuned: Any, prompts: list[list[int]],
               continuations: list[list[int]]) -> dict[str, float]:
    """Teacher-forced on the original's greedy continuations: argmax agreement, mean KL."""
    import torch.nn.functional as F

    agree = total = 0
    kl_sum = 0.0
    with torch.no_grad():
        for prompt, continuation in zip(prompts, continuations, strict=True):
            ids = torch.tensor([prompt + continuation])
            span = slice(len(prompt) - 1, ids.shape[1] - 1)
            before = F.log_softmax(original(ids).logits[0, span].float(), dim=-1)
            after = F.log_softmax(tuned(ids).logits[0, span].float(), dim=-1)
            agree += int((before.argmax(-1) == after.argmax(-1)).sum())
            total += before.shape[0]
            kl_sum += float((before.exp() * (before - after)).sum())
    return {"greedy_agreement": round(agree / max(1, total), 4),
            "mean_kl": round(kl_sum / max(1, total), 5)}


def evaluate(folder: Path, original: Any, held_ids: list[list[int]],
             original_text: list[list[int]], args: argparse.Namespace) -> dict[str, Any]:
    from treeopt.files.tree_file import load_tree
    from treeopt.model.loading import load_medusa
    from treeopt.model.profiling import ProfileSettings, greedy_continuations, profile_model
    from treeopt.optimize.build import build_tree

    medusa2 = (folder / "model.safetensors").is_file()  # else Medusa-1 heads for stories
    loaded = load_medusa(str(folder)) if medusa2 else load_medusa(str(args.model), str(folder))
    profile = profile_model(loaded.model, loaded.tokenizer, loaded.heads, held_ids,
                            folder / "held_out_profile.json",
                            ProfileSettings(top_k=TOP_K, max_new_tokens=args.max_new_tokens),
                            model_id=str(folder), heads_id=str(folder), progress=False)
    cumulative = profile.marginal[:, :5].cumsum(axis=1)
    tuned_text = greedy_continuations(loaded.model, held_ids, args.max_new_tokens,
                                      loaded.tokenizer.eos_token_id, None, str(folder),
                                      progress=False)
    built = build_tree(profile, BUILT_BUDGET, "joint").tree
    return {
        "kind": loaded.kind,
        "held_out_top_k": {f"head{k + 1}": [round(float(x), 4) for x in cumulative[k]]
                           for k in range(profile.num_heads)},
        f"tokens_per_step_{TREE}": round(tokens_per_step(
            loaded, load_tree(TREE), held_ids, args.max_new_tokens), 4),
        f"tokens_per_step_built_{BUILT_BUDGET}_in_sample": round(tokens_per_step(
            loaded, built, held_ids, args.max_new_tokens), 4),
        **base_drift(original, loaded.model, held_ids, original_text),
        "same_continuation_as_original": round(sum(
            a == b for a, b in zip(tuned_text, original_text, strict=True)) / len(held_ids), 4),
    }


def main() -> None:
    args = parse_args()
    if not args.model.is_dir():
        sys.exit(f"error: needs {args.model}")
    torch.set_num_threads(1)
    from treeopt.model.loading import load_base_model
    from treeopt.model.profiling import greedy_continuations

    original, tokenizer = load_base_model(str(args.model))
    train_ids, held_ids = split_prompts(tokenizer, args.held_out, args.seed)
    original_text = greedy_continuations(original, held_ids, args.max_new_tokens,
                                         tokenizer.eos_token_id, None, "stories260K",
                                         progress=False)
    rows: dict[str, Any] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for kind in ("medusa1", "medusa2_ce", "medusa2_distill", "medusa2_distill_recipe_lr"):
            init = work / "medusa1" if kind == "medusa2_ce" else None
            rows[kind] = train(kind, work / kind, train_ids, args, init_heads=init)
            rows[kind].update(evaluate(work / kind, original, held_ids, original_text, args))
            print(kind, json.dumps(rows[kind]), file=sys.stderr, flush=True)
    figures = {
        "command": "python " + " ".join(sys.argv),
        "device": f"cpu ({platform.processor() or platform.machine()}), 1 thread",
        "model": "stories260K", "train_prompts": len(train_ids), "held_out_prompts":
        len(held_ids), "settings": {k: str(v) for k, v in vars(args).items() if k != "output"},
        "note": "medusa2_ce starts from the medusa1 heads (two-stage): it has had the "
                "medusa1 run's steps plus its own",
        "total_seconds": round(time.perf_counter() - started, 1), "runs": rows,
    }
    from treeopt.core.atomic import atomic_write_text

    atomic_write_text(args.output, json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
