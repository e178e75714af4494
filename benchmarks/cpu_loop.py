"""The whole treeopt loop on this CPU: ``treeopt.workflows.autotune.autotune`` on stories260K.

On ``../shared/models/stories260K`` (no published heads):

1. train Medusa-1 heads on the story openers of ``tests/data/story_prompts.txt`` and
   the MT-Bench first turns autotune leaves out (or reuse ``--heads``), so none of
   autotune's prompts was seen in training;
2. run :func:`treeopt.workflows.autotune.autotune` on a seeded half of the MT-Bench
   first turns: profile (calibration and held-out split), build, time the runtime's
   step here, tune (the sizes up to the predicted best decoded on calibration
   prompts), export, decode the held-out prompts with plain decoding, the tuned tree
   and ``mc_sim_7b_63`` (measured speedup), report.

The measured speedup is decode tokens/s over plain decoding's on the held-out prompts
(prefill excluded), median of rounds, one thread.

    python benchmarks/cpu_loop.py -o benchmarks/results/cpu_loop.json [--heads DIR] [--workdir DIR]

Writes the figures to ``-o`` and the autotune folder (report.md, trees, pictures) to
``--workdir`` (default: a temporary folder). A few minutes.
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

from common import MAX_NEW_TOKENS, MT_BENCH, SEED, STORIES, STORY_PROMPTS

AUTOTUNE_PROMPTS = 40  # of MT-Bench's 80 first turns; the other 40 train the heads
# Head training that learns on this small model in about a minute (head 1 top-1 ~0.67
# on held-out openers); the library defaults are sized for 7B models.
EPOCHS, LEARNING_RATE, BATCH_SIZE = 10, 1e-2, 16


def train_story_heads(output: Path) -> dict[str, Any]:
    """Train heads on the story openers and the MT-Bench first turns autotune leaves out
    (``AUTOTUNE_PROMPTS`` of 80, same seed) into ``output``; return train-heads' report."""
    import torch

    from treeopt.model.calibration import encode_prompts, read_prompts
    from treeopt.model.loading import load_base_model
    from treeopt.model.train_heads import TrainSettings, train_heads

    torch.set_num_threads(1)
    model, tokenizer = load_base_model(str(STORIES))
    used = set(read_prompts(MT_BENCH, max_prompts=AUTOTUNE_PROMPTS, seed=SEED))
    texts = [*read_prompts(STORY_PROMPTS),
             *(prompt for prompt in read_prompts(MT_BENCH) if prompt not in used)]
    prompts = encode_prompts(tokenizer, texts)
    return train_heads(model, tokenizer, prompts, output,
                       TrainSettings(epochs=EPOCHS, learning_rate=LEARNING_RATE,
                                     batch_size=BATCH_SIZE, max_new_tokens=MAX_NEW_TOKENS,
                                     seed=SEED),
                       model_id=str(STORIES), progress=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=Path, help="trained heads to reuse (default: train "
                        "them on the story openers)")
    parser.add_argument("--workdir", type=Path,
                        help="autotune output folder (default: a temporary one); rerunning "
                             "with the same one continues it")
    parser.add_argument("--compile", action="store_true",
                        help="time and decode the torch.compile'd step")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="results JSON to write (committed: benchmarks/results/cpu_loop.json)")
    args = parser.parse_args()
    if not STORIES.is_dir() or not MT_BENCH.is_file():
        sys.exit(f"needs {STORIES} and {MT_BENCH}")
    from treeopt.workflows.autotune import AutotuneSettings, autotune

    with tempfile.TemporaryDirectory() as tmp:
        timings: dict[str, float] = {}
        heads = args.heads
        head_accuracy = None
        if heads is None:
            heads = Path(tmp) / "heads"
            started = time.perf_counter()
            head_accuracy = train_story_heads(heads)["held_out_accuracy"]
            timings["train_heads_s"] = round(time.perf_counter() - started, 1)
        settings = AutotuneSettings(
            model=str(STORIES), heads=str(heads), data=str(MT_BENCH),
            output=args.workdir or Path(tmp) / "autotune", device="cpu", threads=1,
            max_prompts=AUTOTUNE_PROMPTS, max_new_tokens=MAX_NEW_TOKENS, seed=SEED,
            compile_step=args.compile)
        result = autotune(settings)
        stages = result.stages
    report = {
        "command": " ".join(["python", *sys.argv]),
        "device": f"cpu ({platform.processor() or platform.machine()}), 1 thread",
        "model": "stories260K",
        "heads": str(args.heads or "trained on tests/data/story_prompts.txt and the MT-Bench "
                     "first turns autotune leaves out"),
        "head_held_out_accuracy": head_accuracy,
        "settings": settings.fingerprint(),
        "headline": result.headline,
        "held_out_check": {key: stages["build"][key] for key in (
            "held_out_tokens_per_step", "in_sample_tokens_per_step", "published")},
        "latency": stages["latency"],
        "tuned": stages["tune"],
        "measured": stages["verify"],
        "timings_s": {**timings, **{f"{name}_s": stages[name]["seconds"] for name in stages}},
    }
    from treeopt.core.atomic import atomic_write_text

    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    print(result.headline)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
