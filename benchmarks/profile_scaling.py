"""`treeopt profile` with 1 and 2 processes (torchrun, gloo) on this CPU: wall time, same output.

Profiles the same prompts on stories260K (random Medusa heads, seeded) once with
one process (``python -m treeopt profile``) and once under ``python -m
torch.distributed.run --standalone --nproc-per-node 2``, alternating, ``--repeats``
times each, and reports the wall time of every run (start-up and model load
included: what a user waits for) with the median speed-up, and whether the
two-process profile is identical to the one-process one (profile JSON without
provenance, rank vectors, greedy targets). Start-up (imports, process group,
model load) is timed on its own by the same commands on one prompt and one new
token; the "work" speed-up is the one of wall time minus that. Each process runs one thread
(OMP_NUM_THREADS=1), so two processes can use two cores.

On a shared CPU the figures are noisy: the load average at start and end is
recorded with them; read the median ratio, not a single run.

    python benchmarks/profile_scaling.py -o /tmp/profile_scaling.json
    python benchmarks/profile_scaling.py --prompts 48 --max-new-tokens 96 -o /tmp/s.json

Writes the JSON file given by ``-o`` (required) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEFAULT_MODEL = SHARED / "models" / "stories260K"
DEFAULT_DATA = SHARED / "data" / "mt_bench_questions.jsonl"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", required=True, help="result JSON to write")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model folder")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="prompts (MT-Bench JSONL)")
    parser.add_argument("--prompts", type=int, default=80, help="prompts profiled")
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternating")
    return parser.parse_args()


def make_heads(model: str, folder: Path) -> Path:
    """Random 3-head Medusa heads (seeded) for ``model``, saved in ``folder``."""
    import torch
    from transformers import AutoConfig

    from medusa_runtime.heads import MedusaConfig, MedusaHeads

    config = AutoConfig.from_pretrained(model)
    torch.manual_seed(0)
    heads = MedusaHeads(MedusaConfig(medusa_num_heads=3, medusa_num_layers=1,
                                     hidden_size=config.hidden_size,
                                     vocab_size=config.vocab_size,
                                     base_model_name_or_path=model))
    for parameter in heads.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    heads.save_pretrained(folder)
    return folder


def run(command: list[str]) -> float:
    """Wall seconds of ``command`` (one thread per process); raises if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return seconds


def canonical(path: Path) -> dict:
    """What must be identical: profile JSON minus provenance, rank vectors, targets."""
    import hashlib

    import numpy as np

    data = json.loads(path.read_text())
    data.pop("provenance")
    with np.load(f"{path}.ranks.npz") as ranks:
        arrays = {name: hashlib.sha256(np.ascontiguousarray(ranks[name]).tobytes()).hexdigest()
                  for name in sorted(ranks.files)}
    targets = json.loads(Path(f"{path}.targets.json").read_text())["continuations"]
    return {"profile": json.dumps(data, sort_keys=True), "ranks": arrays,
            "targets": json.dumps(targets, sort_keys=True)}


def main() -> None:
    args = parse_args()
    if not Path(args.model).is_dir():
        raise SystemExit(f"error: --model {args.model} is not a folder")
    with tempfile.TemporaryDirectory(prefix="profile-scaling-") as scratch:
        work = Path(scratch)
        heads = make_heads(args.model, work / "heads")
        lines = Path(args.data).read_text().splitlines()[: args.prompts]
        (work / "q.jsonl").write_text("\n".join(lines) + "\n")
        verb = ["-m", "treeopt", "profile", "-m", args.model, "--heads", str(heads),
                "-d", str(work / "q.jsonl"), "--max-new-tokens", str(args.max_new_tokens),
                "--batch-size", str(args.batch_size), "--top-k", "10", "-q"]
        commands = {
            1: [sys.executable, *verb],
            2: [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", *verb],
        }
        (work / "one.jsonl").write_text(lines[0] + "\n")
        startup_args = ["-d", str(work / "one.jsonl"), "--max-new-tokens", "1"]
        load_before = os.getloadavg()
        seconds: dict[int, list[float]] = {1: [], 2: []}
        startup: dict[int, list[float]] = {1: [], 2: []}
        outputs: dict[int, dict] = {}
        for repeat in range(args.repeats):
            for processes, command in commands.items():
                output = work / f"p{processes}-{repeat}.json"
                seconds[processes].append(round(run([*command, "-o", str(output)]), 2))
                outputs.setdefault(processes, canonical(output))
                startup[processes].append(round(run(
                    [*command, *startup_args, "-o", str(work / f"s{processes}-{repeat}.json")]),
                    2))
        identical = outputs[1] == outputs[2]
        load_after = os.getloadavg()
    median = {n: statistics.median(seconds[n]) for n in seconds}
    median_startup = {n: statistics.median(startup[n]) for n in startup}
    work_seconds = {n: max(median[n] - median_startup[n], 1e-9) for n in median}
    result = {
        "benchmark": "profile_scaling",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()}),"
                  " gloo",
        "model": args.model,
        "prompts": len(lines),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "wall_seconds": {"1_process": seconds[1], "2_processes": seconds[2]},
        "startup_seconds": {"1_process": startup[1], "2_processes": startup[2]},
        "median_wall_seconds": {"1_process": median[1], "2_processes": median[2]},
        "median_wall_speedup": round(median[1] / median[2], 3),
        "median_work_seconds": {"1_process": round(work_seconds[1], 2),
                                "2_processes": round(work_seconds[2], 2)},
        "median_work_speedup": round(work_seconds[1] / work_seconds[2], 3),
        "outputs_identical": identical,
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "note": "wall time includes process start-up and model load (startup_seconds: the "
                "same commands on one prompt and one token); a shared CPU makes single runs "
                "noisy",
    }
    text = json.dumps(result, indent=2) + "\n"
    from treeopt.core.atomic import atomic_write_text

    atomic_write_text(args.output, text)
    print(text, end="")
    if not identical:
        raise SystemExit("error: the 2-process profile differs from the 1-process one")


if __name__ == "__main__":
    main()
