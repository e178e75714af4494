"""Teacher-forced profiling throughput vs plain prefill throughput on the same batch.

Target (issue #5): profiling (base forward + K Medusa heads + top-k ranks at every
decoding position) runs at >= 50% of the model's plain prefill throughput (base
forward, last-position logits only) on the same batch. Weights are random: speed
depends on shapes, not values. Default shape: a Llama-7B-like stack cut to a few
layers on CPU, the full 32 layers on CUDA.

    python benchmarks/profile_speed.py -o /tmp/profile.json             # CPU, small
    python benchmarks/profile_speed.py --device cuda --dtype bfloat16 -o /tmp/profile.json
    python benchmarks/profile_speed.py --model ../shared/models/stories260K -o /tmp/p.json

Writes the JSON file given by ``-o`` (required) and prints it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from common import profile_vs_prefill, random_llama

from treeopt.core.atomic import atomic_write_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="local model folder (default: random Llama-7B shape)")
    parser.add_argument("--layers", type=int, help="layers of the random model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=32,
                        help="prompt part of each sequence (profiling skips it)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    if args.model:
        from treeopt.model.loading import load_base_model

        model, _ = load_base_model(args.model, device=args.device, dtype=args.dtype)
        name = Path(args.model).name
    else:
        layers = args.layers or (32 if args.device.startswith("cuda") else 2)
        model = random_llama(layers, dtype, args.device)
        name = f"random-llama7b-shape-{layers}-layers"
    result = {"benchmark": "profile_speed", "model": name,
              **profile_vs_prefill(model, args.batch_size, args.seq_len, args.prompt_len,
                                   args.device),
              "command": " ".join(["python", *sys.argv])}
    atomic_write_text(args.output, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
