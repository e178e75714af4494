"""Decode speed of medusa_runtime: step latency vs tree size, plain decode vs roofline.

Needs only torch + transformers (and this repository), so it runs on a bare GPU box:

    python benchmarks/decode_speed.py -o /tmp/decode.json                      # GPU, 7B shape
    python benchmarks/decode_speed.py --tiny --device cpu -o /tmp/decode.json  # smoke test

Writes one JSON file, ``-o`` (required: nothing is written where not asked):

- ``latency``: median seconds of one verification step (the step decoding runs,
  CUDA-graph captured on GPU) for q tokens in ``--sizes`` at ``--context`` tokens,
  and ``latency_ratio_64_over_1`` (target <= 1.10 on an H100);
- ``plain_decode``: root-only decoding tokens/s, step-only and end to end, against
  the HBM roofline ``bandwidth / weight bytes`` (target >= 75% on an H100);
  weight bytes = every parameter of the base model once;
- ``medusa`` (with ``--model``/``--medusa-heads``/``--tree``): tokens/s and
  acceleration rate of real Medusa decoding on MT-Bench prompts.

Llama-7B shape: hidden 4096, 32 layers, 32 heads, MLP 11008, vocab 32000. The
synthetic heads are ``--num-heads`` Medusa heads (1 layer) sharing the lm_head
(``--head-kind shared``) or owning projections (``own``, FasterDecoding style).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import common
import torch
from common import (
    LATENCY_RATIO_TARGET,
    MT_BENCH,
    ROOFLINE_FRACTION_TARGET,
    decode_speed,
    hf_config,
    measure_copy_gbs,
    synthetic_heads,
)

from medusa_runtime.decode import generate
from medusa_runtime.heads import MedusaHeads
from medusa_runtime.timing import random_weight_model, time_verification_step
from treeopt.core.tree import Tree
from treeopt.cost.arch import ArchShape

DEFAULT_SIZES = "1,8,16,32,64,128,256"
# The package's own shapes: llama-7b from treeopt.cost.arch.ARCHS, and stories260K's.
LLAMA_7B = hf_config("llama-7b", max_position_embeddings=4096)
TINY = ArchShape("stories260K", 64, 172, 5, 8, 4, 8, 512).to_hf_config_dict()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny Llama (stories260K shape)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--context", type=int, default=1024, help="tokens already in the cache")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="tree sizes q, comma-separated")
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--head-kind", choices=["shared", "own"], default="shared")
    parser.add_argument("--bandwidth-gbs", type=float, default=None,
                        help="HBM bandwidth for the roofline (default on CUDA: the detected "
                             "GPU's datasheet; on CPU no roofline unless given)")
    parser.add_argument("--measure-bandwidth", action="store_true",
                        help="use a measured device-to-device copy instead of --bandwidth-gbs")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--decode-tokens", type=int, default=128,
                        help="new tokens for the end-to-end plain decode run")
    parser.add_argument("--no-cuda-graph", action="store_true", help="eager steps (debugging)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the whole verification step (fuses the small "
                             "ops) before CUDA-graph capture; compiles once per size")
    parser.add_argument("--model", help="real HF model for the Medusa section")
    parser.add_argument("--medusa-heads", help="Medusa heads folder or hub id for --model")
    parser.add_argument("--tree", help="tree JSON file or shipped name for --model")
    parser.add_argument("--prompts", default=str(MT_BENCH))
    parser.add_argument("--num-prompts", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("-o", "--output", required=True, help="JSON file to write")
    return parser.parse_args()


def medusa_section(args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
                   use_graph: bool) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from treeopt.files.tree_file import load_tree

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    heads = MedusaHeads.from_pretrained(
        args.medusa_heads, base_lm_head=model.get_output_embeddings(), dtype=dtype, device=device
    ).eval()
    tree = load_tree(args.tree) if args.tree else Tree.empty(heads.num_heads)
    lines = Path(args.prompts).read_text(encoding="utf-8").splitlines()
    prompts = [json.loads(line)["turns"][0] for line in lines[: args.num_prompts]]
    ids = [tokenizer(prompt).input_ids for prompt in prompts]
    runs = {}
    for name, run_tree in (("medusa", tree), ("plain", Tree.empty(heads.num_heads))):
        speed = decode_speed(model, heads, run_tree, ids, args.max_new_tokens,
                             eos_token_id=tokenizer.eos_token_id, compile_step=args.compile)
        runs[name] = {"tokens": speed.tokens, "steps": speed.steps, "seconds": speed.seconds,
                      "tokens_per_s": speed.tokens_per_second,
                      "acceleration_rate": speed.tokens_per_step}
    return {"model": args.model, "heads": args.medusa_heads, "tree": args.tree,
            "tree_tokens": tree.num_tokens, "prompts": len(prompts),
            "speed_definition": common.SPEED_DEFINITION, **runs,
            "speedup_vs_plain": runs["medusa"]["tokens_per_s"] / runs["plain"]["tokens_per_s"]}


def latency_section(model: Any, heads: Any, sizes: list[int], args: argparse.Namespace,
                    use_graph: bool | None) -> dict[str, Any]:
    """Median, min and max seconds of one verification step per tree size q."""
    latency: dict[str, Any] = {}
    for q in sizes:
        timing = time_verification_step(
            model, heads, q, context=args.context, warmup=args.warmup, repeats=args.repeats,
            cuda_graph=use_graph, compile_step=args.compile,
        )
        latency[str(q)] = {key: timing[key] for key in
                           ("median_s", "min_s", "max_s", "cuda_graph", "capture_error")
                           if key in timing}
        print(f"q={q:4d}  step {timing['median_s'] * 1e3:8.3f} ms", flush=True)
    return latency


def bandwidth_of(args: argparse.Namespace, device: torch.device) -> tuple[float | None, Any]:
    """(HBM bandwidth GB/s for the roofline, the GPU datasheet it came from or None)."""
    datasheet = None
    if device.type == "cuda" and not args.bandwidth_gbs:
        from treeopt.cost.gpus import gpu_for_device_name

        datasheet = gpu_for_device_name(torch.cuda.get_device_name(device))
    bandwidth = (measure_copy_gbs(device) if args.measure_bandwidth
                 else args.bandwidth_gbs or (datasheet.bandwidth_gbs if datasheet else None))
    return bandwidth, datasheet


def targets(ratio: float | None, fraction: float | None) -> dict[str, Any]:
    """The two speed targets, their values and whether each was met."""
    return {
        "latency_ratio_64_over_1": {"target": LATENCY_RATIO_TARGET, "value": ratio,
                                    "met": ratio is not None and ratio <= LATENCY_RATIO_TARGET},
        "plain_decode_fraction_of_roofline": {"target": ROOFLINE_FRACTION_TARGET,
                                              "value": fraction,
                                              "met": fraction is not None
                                              and fraction >= ROOFLINE_FRACTION_TARGET},
    }


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    # None: capture on CUDA, falling back to eager (recorded per size) if capture fails,
    # so one bad capture does not lose the whole run.
    use_graph = None if device.type == "cuda" and not args.no_cuda_graph else False
    sizes = [int(size) for size in args.sizes.split(",")]
    torch.manual_seed(0)

    shape = TINY if args.tiny else LLAMA_7B
    model = random_weight_model(shape, dtype=dtype, device=device)
    heads = synthetic_heads(model, args.num_heads, args.head_kind)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    latency = latency_section(model, heads, sizes, args, use_graph)
    ratio = (latency["64"]["median_s"] / latency["1"]["median_s"]
             if "64" in latency and "1" in latency else None)

    on_gpu = device.type == "cuda"
    bandwidth, datasheet = bandwidth_of(args, device)
    # An HBM roofline means nothing for a CPU run unless a bandwidth is given for it.
    roofline_tokens_per_s = bandwidth * 1e9 / weight_bytes if bandwidth else None
    prompt = torch.randint(0, shape["vocab_size"], (1, args.context))
    plain = generate(model, None, Tree.empty(), prompt, args.decode_tokens, cuda_graph=use_graph,
                     compile_step=args.compile)
    step_tokens_per_s = 1.0 / latency["1"]["median_s"] if "1" in latency else None
    fraction = (plain.decode_tokens_per_second / roofline_tokens_per_s
                if roofline_tokens_per_s else None)

    report: dict[str, Any] = {
        "label": "GPU" if on_gpu else "CPU (proves the script runs; targets apply to an H100)",
        "device": torch.cuda.get_device_name(device) if on_gpu else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "command": " ".join(sys.argv),
        "model_shape": shape,
        "dtype": args.dtype,
        "batch": 1,
        "context": args.context,
        "heads": {"num_heads": args.num_heads, "kind": args.head_kind},
        "cuda_graph": {"asked": use_graph is None, "plain_decode_captured": plain.cuda_graph},
        "compiled_step": args.compile,
        "latency": latency,
        "latency_ratio_64_over_1": ratio,
        "plain_decode": {
            "weight_bytes": weight_bytes,
            "bandwidth_gbs": bandwidth,
            "bandwidth_source": ("measured copy" if args.measure_bandwidth
                                 else "--bandwidth-gbs" if args.bandwidth_gbs
                                 else f"{datasheet.name} datasheet" if datasheet else None),
            "roofline_tokens_per_s": roofline_tokens_per_s,
            "step_tokens_per_s": step_tokens_per_s,
            "decode_tokens_per_s": plain.decode_tokens_per_second,
            "end_to_end_tokens_per_s": plain.tokens_per_second,
            "fraction_of_roofline": fraction,
            "new_tokens": len(plain.tokens),
        },
        "targets": targets(ratio, fraction),
    }
    if args.model:
        del model, heads
        report["medusa"] = medusa_section(args, device, dtype, use_graph)

    output = Path(args.output)
    from treeopt.core.atomic import atomic_write_text

    atomic_write_text(output, json.dumps(report, indent=2) + "\n")
    print(f"latency(64)/latency(1) = {ratio}")
    print(f"plain decode {plain.decode_tokens_per_second:.1f} tok/s", end="")
    if fraction is not None:
        print(f" = {fraction:.1%} of roofline {roofline_tokens_per_s:.1f} tok/s "
              f"({bandwidth:.0f} GB/s, {weight_bytes / 1e9:.2f} GB)", end="")
    print()
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
