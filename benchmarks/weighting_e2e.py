"""Trees weighted by decoding steps vs by positions, measured with the runtime on stories260K.

Trains Medusa heads on ``../shared/models/stories260K`` as ``tests/test_e2e.py``
does (or reuses ``--heads``), profiles them on (a) the held-out prompts and (b)
``--other-prompts`` of the training prompts, builds trees from each profile with
``weighting="positions"`` and ``"steps"``, and decodes the held-out prompts with
each tree (greedy, ``medusa_runtime.generate``). Profile (a) is in-sample for the
trees (same prompts decoded); profile (b) is not. CPU, a few minutes.

    python benchmarks/weighting_e2e.py -o benchmarks/results/weighting_e2e.json \
        [--heads DIR] [--other-prompts 120]

Writes the JSON file given by ``-o`` (required).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import common as e2e  # the stories260K end-to-end settings and prompt split
import torch
from common import decode_speed

from treeopt.core.atomic import atomic_write_text
from treeopt.model.loading import load_base_model, load_heads
from treeopt.model.profiling import ProfileSettings, profile_model
from treeopt.model.train_heads import TrainSettings, train_heads
from treeopt.optimize.build import build_tree
from treeopt.optimize.replay import tokens_per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=Path, help="trained heads to reuse (default: train)")
    parser.add_argument("--other-prompts", type=int, default=120)
    parser.add_argument("-o", "--output", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(e2e.SEED)
    model, tokenizer = load_base_model(str(e2e.STORIES))
    train_ids, held_ids = e2e.prompt_ids(model, tokenizer, max(e2e.BUDGETS))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        heads_dir = args.heads
        if heads_dir is None:
            heads_dir = work / "heads"
            train_heads(model, tokenizer, train_ids, heads_dir,
                        TrainSettings(epochs=20, learning_rate=1e-2, batch_size=16,
                                      max_new_tokens=e2e.MAX_NEW_TOKENS, seed=e2e.SEED),
                        model_id=str(e2e.STORIES), progress=False)
        heads = load_heads(str(heads_dir))
        settings = ProfileSettings(top_k=e2e.TOP_K, max_new_tokens=e2e.MAX_NEW_TOKENS)
        profiles = {
            "held_out_prompts": profile_model(model, tokenizer, heads, held_ids,
                                              work / "held.json", settings, str(e2e.STORIES),
                                              str(heads_dir), progress=False),
            "other_prompts": profile_model(model, tokenizer, heads,
                                           train_ids[: args.other_prompts], work / "other.json",
                                           settings, str(e2e.STORIES), str(heads_dir),
                                           progress=False),
        }

        def measured(tree: object) -> float:
            return decode_speed(model, heads, tree, held_ids, e2e.MAX_NEW_TOKENS,
                                eos_token_id=tokenizer.eos_token_id).tokens_per_step

        rows = []
        held_sequences = profiles["held_out_prompts"].sequences
        for source, profile in profiles.items():
            for budget in e2e.BUDGETS:
                for weighting in ("positions", "steps"):
                    started = time.perf_counter()
                    result = build_tree(profile, budget, "joint", weighting=weighting)
                    seconds = time.perf_counter() - started
                    rows.append({
                        "profile": source, "budget": budget, "weighting": weighting,
                        "rounds": result.rounds, "build_seconds": round(seconds, 3),
                        "builder_figure": round(result.expected_accept_length, 4),
                        "replayed_on_held_out": round(
                            tokens_per_step(result.tree, held_sequences), 4),
                        "measured_on_held_out": round(measured(result.tree), 4),
                    })
                    print(json.dumps(rows[-1]), flush=True)
    figures = {"model": "stories260K", "held_out_prompts": len(held_ids),
               "other_prompts": min(args.other_prompts, len(train_ids)),
               "note": "other_prompts are among the heads' training prompts", "rows": rows}
    atomic_write_text(args.output, json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
