"""The whole treeopt loop, measured on this CPU: predicted vs measured Medusa speedup.

On ``../shared/models/stories260K`` (trained heads as ``tests/test_e2e.py`` makes them,
or ``--heads``):

1. profile the heads on calibration prompts: ``--calibration-prompts`` of the e2e
   training prompts, held back from head training (profiling on prompts the heads
   were trained on overstates their acceptance), none of them decoded below;
2. time the runtime's compiled verification step on this CPU for every tree size
   (``treeopt.measure_latency``, ``compile_step=True``);
3. tune: the builder's nested trees over that latency table give n* and the
   predicted speedup E[tokens/step](n*) / overhead(n*) (``treeopt.tune_tree``);
4. decode the held-out prompts with the compiled runtime: plain decoding, the tuned
   tree, the built 64-token tree and ``mc_sim_7b_63``, and measure tokens/s.

The measured speedup is decode tokens/s over plain decoding's (prefill and one-time
compilation excluded). One thread, so timings are steady on a small machine.

    python benchmarks/cpu_loop.py [--heads DIR] [--calibration-prompts 120]

Writes benchmarks/results/cpu_loop.json. A few minutes, mostly compilation.
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_e2e as e2e  # noqa: E402  (the e2e test's prompts, split and settings)

from medusa_runtime import generate  # noqa: E402
from treeopt import build_tree, load_tree, measure_latency, tune_tree  # noqa: E402
from treeopt.core.atomic import atomic_write_text  # noqa: E402
from treeopt.core.tree import Tree  # noqa: E402
from treeopt.model.loading import load_base_model, load_heads  # noqa: E402
from treeopt.model.profiling import ProfileSettings, profile_model  # noqa: E402
from treeopt.model.train_heads import TrainSettings, train_heads  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "cpu_loop.json"
SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
# Decoding context while the held-out prompts are decoded: prompt + up to 128 tokens.
CONTEXT = 128
WARMUP, REPEATS = 10, 60  # CPU timings are noisy: many repeats, median


def decode_rate(model: Any, heads: Any, tree: Tree, prompts: list[list[int]],
                eos: int | None) -> dict[str, float]:
    """Decode every prompt (compiled step); tokens/s after the prefill, tokens per step."""
    tokens = steps = 0
    seconds = 0.0
    for prompt in prompts:
        result = generate(model, heads, tree, prompt, e2e.MAX_NEW_TOKENS, eos_token_id=eos,
                          compile_step=True)
        tokens += len(result.tokens) - 1
        steps += result.verification_steps
        seconds += result.wall_time_s - result.prefill_s
    return {"tokens_per_s": tokens / seconds, "tokens_per_step": tokens / steps,
            "tokens": tokens, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=Path,
                        help="trained heads to reuse (default: train them; reused heads "
                             "should not have seen the calibration prompts)")
    parser.add_argument("--calibration-prompts", type=int, default=120)
    parser.add_argument("-o", "--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(e2e.SEED)
    model, tokenizer = load_base_model(str(e2e.STORIES))
    train_ids, held_ids = e2e.prompt_ids(model, tokenizer, max(SIZES))
    # A seeded random share, so calibration has the decoded prompts' mix of stories and
    # MT-Bench questions (the training list is all stories first).
    order = random.Random(e2e.SEED).sample(range(len(train_ids)), len(train_ids))
    calibration_ids = [train_ids[i] for i in sorted(order[: args.calibration_prompts])]
    head_training_ids = [train_ids[i] for i in sorted(order[args.calibration_prompts:])]
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        heads_dir = args.heads
        if heads_dir is None:
            heads_dir = work / "heads"
            started = time.perf_counter()
            train_heads(model, tokenizer, head_training_ids, heads_dir,
                        TrainSettings(epochs=20, learning_rate=1e-2, batch_size=16,
                                      max_new_tokens=e2e.MAX_NEW_TOKENS, seed=e2e.SEED),
                        model_id=str(e2e.STORIES), progress=False)
            timings["train_heads_s"] = time.perf_counter() - started
        heads = load_heads(str(heads_dir))
        started = time.perf_counter()
        profile = profile_model(
            model, tokenizer, heads, calibration_ids, work / "calibration.json",
            ProfileSettings(top_k=e2e.TOP_K, max_new_tokens=e2e.MAX_NEW_TOKENS),
            str(e2e.STORIES), str(heads_dir), progress=False)
        timings["profile_s"] = time.perf_counter() - started

        started = time.perf_counter()
        table = measure_latency(model, heads, "stories260K", [1], [CONTEXT], list(SIZES), "cpu",
                                "float32", WARMUP, REPEATS, show_progress=False,
                                compile_step=True)
        timings["latency_sweep_s"] = time.perf_counter() - started
        tuned = tune_tree(profile, table, acceptance_model="joint")
        best = tuned.result.best
        built_64 = build_tree(profile, 64, "joint")

        eos = tokenizer.eos_token_id
        started = time.perf_counter()
        plain = decode_rate(model, None, Tree.empty(heads.num_heads), held_ids, eos)
        runs: dict[str, dict[str, Any]] = {}
        for name, tree, predicted_accept in (
            (f"tuned (n*={best.num_tokens})", tuned.tree, tuned.score),
            ("built_64", built_64.tree, built_64.expected_accept_length),
            ("mc_sim_7b_63", load_tree("mc_sim_7b_63"), None),
        ):
            run = decode_rate(model, heads, tree, held_ids, eos)
            overhead = table.overhead_curve(1, CONTEXT)[tree.num_tokens]
            runs[name] = {
                "tokens_per_step_tree": tree.num_tokens,
                "predicted_tokens_per_step": predicted_accept,
                "predicted_speedup": (predicted_accept / overhead
                                      if predicted_accept is not None else None),
                "overhead": overhead,
                "measured_tokens_per_step": run["tokens_per_step"],
                "measured_tokens_per_s": run["tokens_per_s"],
                "measured_speedup": run["tokens_per_s"] / plain["tokens_per_s"],
            }
        timings["decode_s"] = time.perf_counter() - started

    report = {
        "device": f"cpu ({platform.processor() or platform.machine()}), 1 thread",
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
        "model": "stories260K", "heads": str(args.heads or "trained as tests/test_e2e.py"),
        "head_training_prompts": len(head_training_ids),
        "calibration_prompts": len(calibration_ids),
        "decoded_prompts": len(held_ids), "max_new_tokens": e2e.MAX_NEW_TOKENS,
        "latency_context": CONTEXT,
        "latency_ms": {str(n): round(table.measurements[(1, CONTEXT, n)] * 1e3, 4)
                       for n in SIZES},
        "tuned": {"num_tokens": best.num_tokens, "predicted_speedup": best.speedup,
                  "overhead": best.overhead, "predicted_tokens_per_step": tuned.score},
        "plain_tokens_per_s": plain["tokens_per_s"],
        "runs": runs,
        "timings_s": timings,
    }
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("tuned", "plain_tokens_per_s", "runs")}, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
