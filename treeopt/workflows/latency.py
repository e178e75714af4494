"""``treeopt overhead`` as one call: a latency table per tree size, measured or predicted, written.

Measuring loads a model (or builds a random-weight one of an architecture's
shape) with Medusa heads and times the runtime's verification step; predicting
uses the roofline model and never imports torch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from treeopt.core.latency import DEFAULT_REPEATS, DEFAULT_WARMUP, LatencyTable
from treeopt.cost.roofline import MEDUSA_NUM_HEADS
from treeopt.errors import ParameterError, TreeoptError

# Contexts timed when none are given: short, the Medusa appendix's 1024, and long;
# a measured model keeps those it can hold with the largest tree.
DEFAULT_CONTEXTS = (128, 1024, 4096)
# The dtype of --random-weights and --predict (no checkpoint to take it from).
NO_CHECKPOINT_DTYPE = "bf16"


@dataclass(frozen=True)
class OverheadSettings:
    """What to time (or predict) and where to write the ``treeopt.latency/1`` table.

    Exactly one source: ``model`` (measured; its published heads, else random ones),
    ``random_weights`` with ``arch`` (measured, random weights of that shape), or
    ``predict`` with ``arch`` and ``gpu`` (the roofline model).
    """

    output: Path
    batches: list[int]
    contexts: list[int] | None  # None: DEFAULT_CONTEXTS, those the model holds
    sizes: list[int]
    model: str | None = None
    random_weights: bool = False
    predict: bool = False
    arch: str | None = None
    gpu: str | None = None
    device: str = "cuda"
    dtype: str = "auto"  # the checkpoint's own; NO_CHECKPOINT_DTYPE without a checkpoint
    heads: int = MEDUSA_NUM_HEADS
    warmup: int = DEFAULT_WARMUP
    repeats: int = DEFAULT_REPEATS
    compile_step: bool = False
    show_progress: bool = True


def check_overhead_settings(settings: OverheadSettings) -> None:
    """One-line error for a contradictory or incomplete choice of source, before any work."""
    if 1 not in settings.sizes:
        raise ParameterError("sizes", "must include 1 (plain decoding): overheads are relative "
                             "to it")
    if settings.predict:
        if settings.model is not None or settings.random_weights or settings.compile_step:
            raise TreeoptError("--predict takes --arch and --gpu, not --model, --random-weights "
                               "or --compile")
        if settings.arch is None or settings.gpu is None:
            raise TreeoptError("--predict needs --arch (e.g. llama-7b) and --gpu (e.g. h100-sxm)")
        return
    if settings.gpu is not None:
        raise TreeoptError("--gpu is for --predict; a measured sweep times the GPU it runs on")
    if (settings.model is None) == (not settings.random_weights):
        raise TreeoptError(
            "give --model M, or --random-weights --arch A, or --predict --arch A --gpu G"
        )
    if settings.random_weights and settings.arch is None:
        raise TreeoptError("--random-weights needs --arch (llama-7b, ... or a config.json)")
    if settings.warmup < 0 or settings.repeats < 1:
        raise TreeoptError("--warmup must be >= 0 and --repeats >= 1")


def write_overhead(settings: OverheadSettings) -> LatencyTable:
    """Measure or predict the step latency of every setting; write and return the table.

    Raises TreeoptError (and writes nothing) when every setting is out of memory.
    """
    from treeopt.cost.roofline import canonical_dtype
    from treeopt.files.latency_file import write_latency

    check_overhead_settings(settings)
    # One dtype rule, as every model verb: a checkpoint's own unless asked; random
    # weights and predictions have no checkpoint and take the usual serving dtype.
    dtype = canonical_dtype(NO_CHECKPOINT_DTYPE if settings.dtype == "auto" else settings.dtype)
    if settings.predict:
        from treeopt.cost.arch import get_arch
        from treeopt.cost.predict import predict_latency
        from treeopt.workflows.devices import gpu_spec

        assert settings.arch is not None
        table = predict_latency(get_arch(settings.arch), gpu_spec(settings.gpu), settings.batches,
                                list(settings.contexts or DEFAULT_CONTEXTS), settings.sizes,
                                dtype)
    else:
        table = measure_overhead(settings, dtype if settings.model is None else settings.dtype)
    if all(seconds is None for seconds in table.measurements.values()):
        raise TreeoptError("every setting is out of memory: nothing to write (smaller --batch "
                           "or --context?)")
    write_latency(settings.output, table)
    return table


def measure_overhead(settings: OverheadSettings, dtype: str) -> LatencyTable:
    """Load the model (or build a random-weight one) and heads, then run the timed sweep."""
    import torch

    from treeopt.core.dtypes import loadable_dtype
    from treeopt.model.loading import load_medusa, random_heads, resolve_device
    from treeopt.model.measure import measure_latency

    resolve_device(settings.device)
    device, medusa = settings.device, None
    if settings.random_weights:
        torch_dtype = getattr(torch, loadable_dtype(dtype))
        from medusa_runtime.timing import random_weight_model
        from treeopt.cost.arch import get_arch
        from treeopt.model.progress import working

        assert settings.arch is not None
        shape = get_arch(settings.arch)
        with working(f"building random {dtype} weights of {shape.name} on {device}",
                     enabled=settings.show_progress):
            net = random_weight_model(shape.to_hf_config_dict(), torch_dtype, device)
        name = shape.name
    else:
        loaded = load_medusa(str(settings.model), device=device, dtype=dtype, need_heads=False,
                             quiet=not settings.show_progress)
        net, medusa, name = loaded.model, loaded.heads, str(settings.model)
        dtype = str(next(net.parameters()).dtype).removeprefix("torch.")  # "auto" resolved
    if medusa is None:  # the step time depends on the heads' shapes, not their weights
        medusa = random_heads(net, settings.heads)
    contexts = settings.contexts
    if contexts is None:  # the defaults, clipped to the model's positions before timing
        from treeopt.model.measure import fitting_contexts

        contexts, dropped = fitting_contexts(net, DEFAULT_CONTEXTS, settings.sizes)
        if dropped:
            print(f"note: default contexts {', '.join(map(str, dropped))} do not fit a "
                  f"{max(settings.sizes)}-token step in {name}'s positions: timing "
                  f"{', '.join(map(str, contexts))}", file=sys.stderr)
    return measure_latency(net, medusa, name, settings.batches, contexts,
                           settings.sizes, device, dtype, settings.warmup, settings.repeats,
                           show_progress=settings.show_progress,
                           compile_step=settings.compile_step)
