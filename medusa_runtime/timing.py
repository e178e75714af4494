"""Latency of the verification step that decoding runs, per tree size.

``time_verification_step`` times exactly ``TreeDecoder.step`` (forward over the
tree, acceptance, cache compaction, heads and next-tree layout): on CUDA as a
replayed CUDA graph timed with CUDA events, on CPU eagerly with perf_counter.
The cache holds ``context`` tokens of random keys/values (never zeros: zeros can
run faster than real data), and the state is reset before every repeat, so each
repeat verifies the same tree at the same context length.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from medusa_runtime.beam import BeamTree
from medusa_runtime.decode import TreeDecoder
from medusa_runtime.drafter import Drafter
from medusa_runtime.heads import MedusaHeads
from treeopt.core.latency import DEFAULT_REPEATS, DEFAULT_WARMUP
from treeopt.core.tree import Tree
from treeopt.errors import TreeoptError

CACHE_FILL_STD = 1.0  # random K/V scale; only the values' non-zeroness matters for timing


def random_weight_model(
    hf_config: Any, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu"
) -> nn.Module:
    """A causal LM of ``hf_config``'s shape with random weights, built on ``device``.

    ``hf_config`` is a transformers config or a dict with ``model_type`` and its
    fields. No download; weights are initialised directly on the device.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if isinstance(hf_config, dict):
        fields = dict(hf_config)
        hf_config = AutoConfig.for_model(fields.pop("model_type", "llama"), **fields)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    return model.eval()


def representative_tree(num_tokens: int, num_heads: int) -> Tree:
    """The tree timed for a budget of ``num_tokens``: a chain, then a wide first level.

    A greedy chain of depth ``D = min(num_heads, num_tokens - 1)`` (rank 0 at every
    level) plus ``num_tokens - 1 - D`` more depth-1 siblings (ranks 1, 2, ...).
    Step latency depends on the token count, not the shape; this shape exercises
    every head used and the longest compaction.
    """
    if num_tokens < 1:
        raise TreeoptError(f"num_tokens must be >= 1, not {num_tokens}")
    if num_tokens == 1:
        return Tree.empty(num_heads)
    if num_heads < 1:
        raise TreeoptError(f"a tree of {num_tokens} tokens needs Medusa heads (got none)")
    depth = min(num_heads, num_tokens - 1)
    chain = [(0,) * length for length in range(1, depth + 1)]
    siblings = [(rank,) for rank in range(1, num_tokens - depth)]
    return Tree.from_paths(chain + siblings, num_heads=num_heads)


def _timer(device: torch.device) -> Callable[[Callable[[], None]], float]:
    """A function that runs ``fn`` once and returns its seconds (events on CUDA)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def time_cuda(fn: Callable[[], None]) -> float:
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0

        return time_cuda

    def time_host(fn: Callable[[], None]) -> float:
        begin = time.perf_counter()
        fn()
        return time.perf_counter() - begin

    return time_host


def time_samples(
    fn: Callable[[], None],
    device: torch.device | str,
    warmup: int = DEFAULT_WARMUP,
    repeats: int = DEFAULT_REPEATS,
    reset: Callable[[], None] | None = None,
) -> list[float]:
    """Seconds of ``repeats`` runs of ``fn`` after ``warmup`` untimed ones: treeopt's one timer.

    CUDA events on a CUDA device (kernel time, no host jitter), ``perf_counter`` on
    the host. ``reset`` runs untimed before every run, so each sees the same state.
    """
    timer = _timer(torch.device(device))
    samples = []
    for index in range(warmup + repeats):
        if reset is not None:
            reset()
        seconds = timer(fn)
        if index >= warmup:
            samples.append(seconds)
    return samples


@torch.inference_mode()
def time_verification_step(
    model: nn.Module,
    heads: MedusaHeads | None,
    num_tokens: int,
    batch: int = 1,
    context: int = 1024,
    warmup: int = DEFAULT_WARMUP,
    repeats: int = DEFAULT_REPEATS,
    device: torch.device | str | None = None,
    cuda_graph: bool | None = None,
    compile_step: bool = False,
    tree: Tree | BeamTree | None = None,
    drafter: Drafter | None = None,
) -> dict[str, Any]:
    """Median seconds of one verification step of ``num_tokens`` tokens at ``context``.

    ``batch`` sequences are verified together, each with its own tree of
    ``num_tokens`` tokens over its own ``context`` cached tokens.

    The tree is :func:`representative_tree` (``num_tokens == 1`` is plain decoding
    and runs no heads). ``device`` defaults to the model's; the model and heads
    must already be there. ``cuda_graph`` defaults to True on CUDA, falling back
    to eager (``cuda_graph: False`` and ``capture_error`` in the result) if capture
    fails; ``True`` makes that failure an error. ``compile_step`` times the
    ``torch.compile``d step (compiled before warm-up). ``tree`` times that tree
    (a static one, or ``dynamic:S,K,N`` built by the drafter each step)
    instead (its size is ``num_tokens``); with a ``drafter`` instead of heads the
    step includes its drafting (a draft model's passes). Returns a dict
    with ``median_s``, ``min_s``, ``max_s``, ``samples_s`` and the settings.
    """
    model_device = next(model.parameters()).device
    device = torch.device(device) if device is not None else model_device
    if device != model_device and not (device.type == model_device.type == "cuda"):
        raise TreeoptError(f"model is on {model_device}, asked to time on {device}")
    if repeats < 1 or warmup < 0 or context < 1 or batch < 1:
        raise TreeoptError("need repeats >= 1, warmup >= 0, context >= 1 and batch >= 1")
    if tree is None:
        tree = representative_tree(num_tokens, heads.num_heads if heads is not None else 0)
    elif tree.num_tokens != num_tokens:
        raise TreeoptError(f"tree of {tree.num_tokens} tokens timed as {num_tokens}")
    decoder = TreeDecoder(model, heads, tree, context + num_tokens, batch_size=batch,
                          compile_step=compile_step, drafter=drafter)
    generator = torch.Generator(device="cpu").manual_seed(0)
    vocab = decoder.vocab_size

    decoder.prefill(torch.randint(0, vocab, (batch, 1), generator=generator).to(device))
    decoder.fill_context(context, CACHE_FILL_STD)
    decoder.tree_tokens.copy_(
        torch.randint(0, vocab, (batch, num_tokens), generator=generator).to(device)
    )
    start_state = decoder.snapshot()

    def reset() -> None:
        decoder.restore(start_state)

    use_graph = cuda_graph if cuda_graph is not None else device.type == "cuda"
    reset()
    if compile_step:
        decoder.warm_up()
    if use_graph:
        use_graph = decoder.capture_or_eager(required=bool(cuda_graph))
    samples = time_samples(decoder.step, device, warmup, repeats, reset=reset)
    return {
        "num_tokens": num_tokens,
        "batch": batch,
        "context": context,
        # A dynamic:S,K,N tree is rebuilt every step: its name stands for its paths.
        "tree_paths": tree.as_lists() if isinstance(tree, Tree) else str(tree),
        "device": str(device),
        "cuda_graph": use_graph,
        "compiled": compile_step,
        **({"capture_error": decoder.capture_error} if decoder.capture_error else {}),
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "samples_s": samples,
    }
