"""Dynamic per-step trees vs the best static trees, measured on stories260K on this CPU.

On ``../shared/models/stories260K`` with Medusa heads trained here (or ``--heads``):

1. split the prompts (story openers + MT-Bench first turns) into head training,
   calibration and held-out parts (seeded);
2. profile the heads on the calibration and the held-out prompts (rank vectors and
   the heads' top-k probabilities);
3. fit the per-head calibration on the calibration prompts and report how well it
   is calibrated on the held-out ones (Brier score, ECE; raw vs calibrated);
4. for each size N: tokens per verification step on the held-out prompts of the
   dynamic policy, of the static tree built on the calibration prompts and of the
   static *oracle* (built on the held-out prompts themselves), all replayed;
5. decode the held-out prompts with the runtime (dynamic and static, N = --decode-size)
   to check the replayed figures against what the runtime measures;
6. time one verification step, static vs dynamic at each N (eager, 1 thread,
   interleaved rounds, least median): the per-step cost of choosing the tree.

    python benchmarks/dynamic_stories.py -o benchmarks/results/dynamic_stories.json \\
        [--plot docs/images/dynamic_vs_static.png] [--heads DIR]

About 10 minutes on 2 cores, most of it training the heads. Writes only ``-o``/``--plot``.
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

from common import MT_BENCH, SEED, SPEED_DEFINITION, STORIES, STORY_PROMPTS, decode_speed

SIZES = (4, 8, 16, 32, 64)
TOP_K = 64  # the policy at size N needs each head's top N - 1
MAX_NEW_TOKENS = 128
HELD_OUT_SHARE = 0.2
CALIBRATION_SHARE = 0.35  # of what is not held out; the rest trains the heads
CONTEXT = 128  # cached tokens when timing one step
WARMUP, REPEATS, ROUNDS = 3, 15, 5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("-o", "--output", type=Path, required=True, help="JSON results file.")
    parser.add_argument("--plot", type=Path, help="Picture of tokens/step vs N (.png/.svg).")
    parser.add_argument("--heads", type=Path,
                        help="Heads folder: reused if it exists, else trained and kept there "
                             "(default: trained in a temporary folder).")
    parser.add_argument("--decode-size", type=int, default=16,
                        help="N for the runtime decode check (default 16).")
    return parser.parse_args()


def split_prompts(model: Any, tokenizer: Any) -> tuple[list[list[int]], ...]:
    """(head training, calibration, held-out) token ids, seeded."""
    from treeopt.model.calibration import encode_prompts, read_prompts, split_held_out

    prompts = read_prompts(STORY_PROMPTS) + read_prompts(MT_BENCH)
    rest, held = split_held_out(prompts, HELD_OUT_SHARE, SEED)
    train, calibration = split_held_out(rest, CALIBRATION_SHARE, SEED + 1)
    room = model.config.max_position_embeddings - MAX_NEW_TOKENS - max(SIZES)
    encode = lambda texts: [p for p in encode_prompts(tokenizer, texts) if len(p) <= room]  # noqa: E731
    return encode(train), encode(calibration), encode(held)


def step_ms(decoders: dict[str, Any], prompt: list[int]) -> dict[str, float]:
    """Median ms of one verification step at CONTEXT cached tokens (eager), per decoder.

    The decoders are timed in interleaved rounds, so a burst of load on a shared
    machine lands on all of them; each gets the least of its per-round medians.
    """
    import statistics

    import torch

    from medusa_runtime.timing import time_samples

    saved = {}
    for name, decoder in decoders.items():
        decoder.prefill(torch.tensor([prompt]))
        decoder.fill_context(CONTEXT, 0.02)
        saved[name] = decoder.snapshot()
    best = {name: float("inf") for name in decoders}
    for _ in range(ROUNDS):
        for name, decoder in decoders.items():
            samples = time_samples(decoder.step, "cpu", WARMUP, REPEATS,
                                   reset=lambda d=decoder, s=saved[name]: d.restore(s))
            best[name] = min(best[name], statistics.median(samples) * 1e3)
    return best


def decode(model: Any, heads: Any, tree: Any, prompts: list[list[int]], eos: int | None
           ) -> dict[str, float]:
    """Tokens per step and tokens/s as ``common.decode_speed`` defines them (prefill out)."""
    speed = decode_speed(model, heads, tree, prompts, MAX_NEW_TOKENS, eos_token_id=eos)
    return {"tokens_per_step": speed.tokens_per_step, "tokens_per_s": speed.tokens_per_second}


def replayed_rows(model: Any, heads: Any, calibration_profile: Any, held_profile: Any,
                  calibration: Any, first_prompt: list[int]) -> list[dict[str, Any]]:
    """Per size N: held-out tokens/step replayed (dynamic, static, static oracle) and one
    step's latency, static vs dynamic."""
    from medusa_runtime import TreeDecoder
    from medusa_runtime.dynamic import DynamicTreeDecoder
    from treeopt.model.dynamic_trees import dynamic_tree
    from treeopt.optimize.build import build_tree
    from treeopt.optimize.dynamic import dynamic_tokens_per_step
    from treeopt.optimize.replay import tokens_per_step

    held = held_profile.sequences
    rows = []
    for size in SIZES:
        static = build_tree(calibration_profile, size, "joint").tree
        oracle = build_tree(held_profile, size, "joint").tree
        rows.append({
            "size": size,
            "dynamic": dynamic_tokens_per_step(held, calibration, size),
            "static": tokens_per_step(static, held),
            "static_oracle": tokens_per_step(oracle, held),
            **{f"step_ms_{name}": ms for name, ms in step_ms({
                "static": TreeDecoder(model, heads, static, 512),
                "dynamic": DynamicTreeDecoder(
                    model, heads, dynamic_tree(calibration_profile, size), 512),
            }, first_prompt).items()},
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    args = parse_args()
    import torch

    from treeopt.core.atomic import atomic_write_text
    from treeopt.core.tree import Tree
    from treeopt.model.dynamic_trees import dynamic_tree
    from treeopt.model.loading import load_base_model, load_heads
    from treeopt.model.profiling import ProfileSettings, profile_model
    from treeopt.model.train_heads import TrainSettings, train_heads
    from treeopt.optimize.build import build_tree
    from treeopt.optimize.dynamic import calibration_report, fit_calibration

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    model, tokenizer = load_base_model(str(STORIES))
    train_ids, calibration_ids, held_ids = split_prompts(model, tokenizer)
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        heads_dir = args.heads or work / "heads"
        if not heads_dir.exists():
            started = time.perf_counter()
            train_heads(model, tokenizer, train_ids, heads_dir,
                        TrainSettings(epochs=20, learning_rate=1e-2, batch_size=16,
                                      max_new_tokens=MAX_NEW_TOKENS, seed=SEED),
                        model_id=str(STORIES), progress=True)
            timings["train_heads_s"] = time.perf_counter() - started
        heads = load_heads(str(heads_dir))
        settings = ProfileSettings(top_k=TOP_K, max_new_tokens=MAX_NEW_TOKENS)
        started = time.perf_counter()
        calibration_profile = profile_model(model, tokenizer, heads, calibration_ids,
                                            work / "calibration.json", settings, str(STORIES),
                                            str(heads_dir), progress=True)
        held_profile = profile_model(model, tokenizer, heads, held_ids, work / "held.json",
                                     settings, str(STORIES), str(heads_dir), progress=True)
        timings["profile_s"] = time.perf_counter() - started

        calibration = fit_calibration(calibration_profile.sequences)
        held = held_profile.sequences
        rows = replayed_rows(model, heads, calibration_profile, held_profile, calibration,
                             held_ids[0])

        eos = tokenizer.eos_token_id
        size = args.decode_size
        runtime = {
            "size": size,
            "dynamic": decode(model, heads, dynamic_tree(calibration_profile, size), held_ids,
                              eos),
            "static": decode(model, heads, build_tree(calibration_profile, size, "joint").tree,
                             held_ids, eos),
            "plain": decode(model, None, Tree.empty(heads.num_heads), held_ids, eos),
        }
    report = {
        "device": f"cpu ({platform.processor() or platform.machine()}), 1 thread",
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
        "model": "stories260K",
        "prompts": {"head_training": len(train_ids), "calibration": len(calibration_ids),
                    "held_out": len(held_ids)},
        "max_new_tokens": MAX_NEW_TOKENS, "top_k": TOP_K, "step_context": CONTEXT,
        "calibration_held_out": calibration_report(calibration, held),
        "replayed_tokens_per_step": rows,
        "runtime_held_out": runtime,
        "speed_definition": SPEED_DEFINITION,
        "timings_s": timings,
    }
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    if args.plot is not None:
        plot(rows, args.plot)
    print(f"wrote {args.output}")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Left: held-out tokens/step per N; right: one step's latency, static vs dynamic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (accept, cost) = plt.subplots(1, 2, figsize=(9.6, 3.4))
    sizes = [row["size"] for row in rows]
    for key, label, style in (("dynamic", "dynamic (calibrated heads)", "o-"),
                              ("static", "static, built on calibration prompts", "s--"),
                              ("static_oracle", "static oracle (built on held-out)", "^:")):
        accept.plot(sizes, [row[key] for row in rows], style, label=label)
    for key, label, style in (("step_ms_dynamic", "dynamic", "o-"),
                              ("step_ms_static", "static", "s--")):
        cost.plot(sizes, [row[key] for row in rows], style, label=label)
    for axis in (accept, cost):
        axis.set_xscale("log", base=2)
        axis.set_xticks(sizes, [str(s) for s in sizes])
        axis.set_xlabel("tokens verified per step N (root included)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    accept.set_ylabel("tokens / step (held out)")
    accept.set_title("acceptance (measured, replayed)", fontsize=10)
    cost.set_ylabel("ms per verification step")
    cost.set_title(f"step latency (measured, CPU, context {CONTEXT})", fontsize=10)
    figure.suptitle("stories260K: dynamic vs static trees at the same N", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=150)


if __name__ == "__main__":
    main()
