"""What the benchmarks share, on the package's own shapes and loaders (no test module).

* paths: the repository, the shared stories260K model and MT-Bench questions, the story
  openers in ``tests/data`` (a data file, read, not imported);
* the stories260K end-to-end settings and prompt split (the same as ``tests/test_e2e.py``
  uses: seed, held-out counts, new tokens, top-k, budgets);
* model shapes: :func:`hf_config` of an arch in :data:`treeopt.cost.arch.ARCHS`;
* :func:`synthetic_heads`: random, non-zero Medusa heads for timing;
* :func:`treeopt.model.speed.decode_speed`, the one definition of a measured decoding
  speed (prefill excluded), re-exported for every benchmark that decodes.

Run a benchmark as ``python benchmarks/NAME.py``: this folder is then first on the path
and the repository is put second, so ``import common`` and ``import treeopt`` work from a
checkout.
"""

from __future__ import annotations

import copy
import random
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # a bare box runs benchmarks from a checkout, not an install
    sys.path.insert(1, str(ROOT))

from treeopt.model.speed import SPEED_DEFINITION, DecodeSpeed, decode_speed  # noqa: E402

SHARED = ROOT.parent / "shared"
STORIES = SHARED / "models" / "stories260K"
MT_BENCH = SHARED / "data" / "mt_bench_questions.jsonl"
STORY_PROMPTS = ROOT / "tests" / "data" / "story_prompts.txt"

# The stories260K end-to-end setting (tests/test_e2e.py runs the same).
SEED = 0
HELD_OUT_STORIES = 16
HELD_OUT_MT_BENCH = 8
MAX_NEW_TOKENS = 128
TOP_K = 10  # mc_sim_7b_63 uses ranks up to 9
BUDGETS = (8, 16, 32, 64)
HEAD_INIT_STD = 0.02  # random, non-zero head weights: zeros can time faster than real data

__all__ = [
    "BUDGETS",
    "HEAD_INIT_STD",
    "HELD_OUT_MT_BENCH",
    "HELD_OUT_STORIES",
    "LATENCY_RATIO_TARGET",
    "MAX_NEW_TOKENS",
    "MT_BENCH",
    "ROOFLINE_FRACTION_TARGET",
    "ROOT",
    "SEED",
    "SPEED_DEFINITION",
    "STORIES",
    "STORY_PROMPTS",
    "TOP_K",
    "DecodeSpeed",
    "decode_speed",
    "distill",
    "hf_config",
    "make_draft",
    "measure_copy_gbs",
    "profile_vs_prefill",
    "prompt_ids",
    "random_llama",
    "synthetic_heads",
]


# --------------------------------------------- profiling throughput (profile_speed, gpu_session)
TARGET_RATIO = 0.5
PROFILE_NUM_HEADS = 5
PROFILE_TOP_K = 20
PROFILE_WARMUP = 1
PROFILE_REPEATS = 3  # best of: the figure is the kernels, not the scheduler


def random_llama(num_layers: int, dtype: Any, device: str,
                 shape: dict | None = None) -> Any:
    """A random-weight Llama of ``shape`` (default: llama-7b's, from the package's ARCHS)
    with ``num_layers`` layers."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**{**(shape or hf_config("llama-7b", 4096)),
                            "num_hidden_layers": num_layers})
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.to(device).eval().requires_grad_(False)


def best_seconds(fns: list, device: str) -> list[float]:
    """Best-of-PROFILE_REPEATS wall time of each of ``fns``, runs interleaved.

    Interleaving (a, b, a, b, ...) exposes both to the same drift of a shared
    machine (other tenants, clocks), so their ratio is fair.
    """
    import time

    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for fn in fns:
        for _ in range(PROFILE_WARMUP):
            fn()
    sync()
    best = [float("inf")] * len(fns)
    for _ in range(PROFILE_REPEATS):
        for index, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            sync()
            best[index] = min(best[index], time.perf_counter() - start)
    return best


def profile_vs_prefill(model: Any, batch_size: int, seq_len: int, prompt_len: int,
                       device: str) -> dict:
    """Profiling (base + heads + top-k ranks) vs plain prefill tokens/s on one random batch."""
    import platform

    import torch

    from medusa_runtime.heads import MedusaConfig, MedusaHeads
    from treeopt.model.profiling import Sequence_, batch_rank_vectors

    vocab, hidden = model.lm_head.weight.shape
    heads = MedusaHeads(MedusaConfig(PROFILE_NUM_HEADS, 1, int(hidden), int(vocab)))
    with torch.no_grad():
        for head in heads.heads:
            head[-1].weight.normal_(std=0.02)
    dtype = next(model.parameters()).dtype
    heads = heads.to(device, dtype).eval()
    ids = torch.randint(3, int(vocab), (batch_size, seq_len))
    batch = [Sequence_(row[:prompt_len].tolist(), row[prompt_len:].tolist()) for row in ids]
    tokens = batch_size * seq_len
    device_ids = ids.to(device)

    def prefill() -> None:
        with torch.no_grad():
            model(input_ids=device_ids, logits_to_keep=1)

    def profile() -> None:
        batch_rank_vectors(model, heads, batch, PROFILE_TOP_K, include_prompt=False)

    prefill_s, profile_s = best_seconds([prefill, profile], device)
    ratio = prefill_s / profile_s
    return {
        "device": torch.cuda.get_device_name() if device.startswith("cuda")
        else platform.processor() or platform.machine(),
        "dtype": str(dtype).removeprefix("torch."),
        "batch_size": batch_size,
        "seq_len": seq_len,
        "prompt_len": prompt_len,
        "num_heads": PROFILE_NUM_HEADS,
        "top_k": PROFILE_TOP_K,
        "prefill_tokens_per_s": round(tokens / prefill_s, 1),
        "profiling_tokens_per_s": round(tokens / profile_s, 1),
        "profiling_over_prefill": round(ratio, 3),
        "target": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
    }



# ------------------------------------------------------ decode speed (decode_speed, gpu_session)
LATENCY_RATIO_TARGET = 1.10  # latency(64) / latency(1) on an H100
ROOFLINE_FRACTION_TARGET = 0.75  # plain decoding's share of bandwidth / weight bytes
BANDWIDTH_PROBE_BYTES = 1 << 30


def measure_copy_gbs(device: Any, probe_bytes: int = BANDWIDTH_PROBE_BYTES) -> float:
    """Device-to-device copy rate, bytes read + written, median of 10 (GB/s).

    Timed by treeopt's one timer (CUDA events on a GPU, perf_counter on the host).
    """
    import statistics

    import torch

    from medusa_runtime.timing import time_samples

    source = torch.randn(probe_bytes // 4, device=device)
    target = torch.empty_like(source)
    samples = time_samples(lambda: target.copy_(source), device, warmup=2, repeats=10)
    return 2 * probe_bytes / statistics.median(samples) / 1e9




def prompt_ids(model: Any, tokenizer: Any, max_tree_tokens: int) -> tuple[list[list[int]],
                                                                          list[list[int]]]:
    """(training, held-out) token ids: story openers and MT-Bench first turns, split seeded.

    Prompts too long for a whole continuation plus a tree of ``max_tree_tokens`` in the
    model's context are dropped, so the profile and the runtime see the same new tokens.
    """
    from treeopt.model.calibration import encode_prompts, read_prompts, split_held_out

    stories = read_prompts(STORY_PROMPTS)
    mt_bench = read_prompts(MT_BENCH)
    story_train, story_held = split_held_out(stories, HELD_OUT_STORIES / len(stories), SEED)
    mt_train, mt_held = split_held_out(mt_bench, HELD_OUT_MT_BENCH / len(mt_bench), SEED)
    room = model.config.max_position_embeddings - MAX_NEW_TOKENS - max_tree_tokens
    train_ids = [p for p in encode_prompts(tokenizer, story_train + mt_train) if len(p) <= room]
    held_ids = [p for p in encode_prompts(tokenizer, story_held + mt_held) if len(p) <= room]
    return train_ids, held_ids


def hf_config(arch: str, max_position_embeddings: int | None = None) -> dict[str, Any]:
    """A transformers config dict of an arch name (``llama-7b``) or config file, from the
    package's own shapes (:func:`treeopt.cost.arch.get_arch`)."""
    from treeopt.cost.arch import get_arch

    config = get_arch(arch).to_hf_config_dict()
    if max_position_embeddings is not None:
        config["max_position_embeddings"] = max_position_embeddings
    return config


def synthetic_heads(model: Any, num_heads: int, kind: str = "own") -> Any:
    """Random Medusa heads beside ``model`` (its device and dtype), normal(0, HEAD_INIT_STD)
    weights; ``kind`` "shared" ends them in the model's own ``lm_head``."""
    import torch

    from medusa_runtime.heads import MedusaConfig, MedusaHeads

    hidden = model.config.hidden_size
    vocab = model.get_output_embeddings().weight.shape[0]
    config = MedusaConfig(num_heads, 1, hidden, vocab, share_lm_head=kind == "shared")
    parameter = next(model.parameters())
    with torch.device(parameter.device):
        heads = MedusaHeads(config, base_lm_head=model.get_output_embeddings())
    heads.to(dtype=parameter.dtype)
    for weight in heads.parameters():
        torch.nn.init.normal_(weight, std=HEAD_INIT_STD)
    return heads.eval()


# ------------------------------------ draft models (draft_stories, knobs_vs_grid)
# Distillation: full-batch-ish AdamW on ~30k tokens; enough for the loss to settle.
DISTILL_BATCH, LEARNING_RATE, TEMPERATURE = 16, 3e-3, 1.0


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
    import torch
    import torch.nn.functional as F

    generator = random.Random(seed)
    draft.train()
    optimizer = torch.optim.AdamW(draft.parameters(), lr=LEARNING_RATE)
    losses = []
    for _ in range(epochs):
        order = generator.sample(range(len(sequences)), len(sequences))
        total = count = 0.0
        for begin in range(0, len(order), DISTILL_BATCH):
            rows = [sequences[i] for i in order[begin:begin + DISTILL_BATCH]]
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
            total += float(loss.detach()) * len(rows)
            count += len(rows)
        losses.append(total / count)
    draft.eval()
    draft.requires_grad_(False)
    return losses
