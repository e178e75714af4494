"""``treeopt overhead`` (step latency per tree size) and ``treeopt tune`` (best tree size).

Neither imports torch at module level; ``overhead --predict`` and ``tune``
(without ``--measure``) never import it at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from treeopt.cli.options import (
    AcceptanceChoice,
    EngineChoice,
    curve_file,
    gpu_named,
    output_file,
    parse_int_list,
    plot_file,
)
from treeopt.core.latency import DEFAULT_CONTEXT, DEFAULT_REPEATS, DEFAULT_WARMUP
from treeopt.cost.roofline import MEDUSA_NUM_HEADS
from treeopt.errors import TreeoptError
from treeopt.files.shipped import DEFAULT_PROFILE

if TYPE_CHECKING:
    from treeopt.core.latency import LatencyTable
    from treeopt.optimize.tune import BatchBest, TuneResult

DEFAULT_BATCHES = "1,4,16,64"
DEFAULT_CONTEXTS = "128,1024,4096"
# Dense where the optimum usually is (16..96 tokens), sparse out to 256.
DEFAULT_SIZES = "1,2,4,8,16,24,32,48,64,80,96,128,160,192,256"
# A curve this long or shorter is printed in full; longer ones show a summary.
FULL_TABLE_ROWS = 32


# ------------------------------------------------------------------ overhead
def overhead(
    output: Annotated[Path, typer.Option("-o", "--output", callback=output_file,
                                         help="treeopt.latency/1 JSON file to write.")],
    model: Annotated[str | None, typer.Option(
        "--model", "-m",
        help="Model to time: registry name (vicuna-7b), folder or hub id. Its Medusa heads "
             "are used when published, else random heads of the same shape.")] = None,
    random_weights: Annotated[bool, typer.Option(
        "--random-weights",
        help="Time a random-weight model of --arch's shape: plan for a 7B/13B/33B model "
             "without downloading it (the step time does not depend on the weights).")] = False,
    predict: Annotated[bool, typer.Option(
        "--predict", help="Write the roofline model's prediction for --gpu instead of "
                          "measuring (no torch, no GPU needed).")] = False,
    arch: Annotated[str | None, typer.Option(
        help="Model shape for --random-weights/--predict: llama-7b, llama-13b, llama-33b, ... "
             "or a config.json / model folder.")] = None,
    gpu: Annotated[str | None, typer.Option(
        help="GPU to predict for (--predict): a slug from 'roofline --list-gpus' (a100-80gb-sxm, "
             "h100-sxm, a10g, ...), auto, or a GPU JSON file {\"peak_tflops\": dense bf16 "
             "TFLOP/s, \"bandwidth_gbs\": GB/s, \"memory_gb\": GB} for any other GPU.")] = None,
    batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = DEFAULT_BATCHES,
    context: Annotated[str, typer.Option(
        help="Context lengths (KV positions already cached), comma-separated.")] = DEFAULT_CONTEXTS,
    sizes: Annotated[str, typer.Option(
        help="Tree sizes (tokens per step, root included; 1 = plain decoding).")] = DEFAULT_SIZES,
    device: Annotated[str, typer.Option(help="cuda, cuda:N or cpu (measured).")] = "cuda",
    dtype: Annotated[str, typer.Option(help="bf16, fp16 or fp32 (fp8 for --predict).")] = "bf16",
    heads: Annotated[int, typer.Option(
        min=0, help="Medusa heads to time with random weights (--random-weights or a model "
             "without published heads).")] = MEDUSA_NUM_HEADS,
    warmup: Annotated[int, typer.Option(
        min=0, help="Untimed steps before timing each size.")] = DEFAULT_WARMUP,
    repeats: Annotated[int, typer.Option(
        min=1, help="Timed steps per size; the median is kept.")] = DEFAULT_REPEATS,
    compile_step: Annotated[bool, typer.Option(
        "--compile", help="Time the torch.compile'd step (fuses small kernels; compiles once "
                          "per setting, tens of seconds each for a 7B model).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Measure (or predict) the verification-step latency for each tree size.

    The overhead of an n-token tree is latency(n) / latency(1); `treeopt tune`
    divides the expected accept length by it. Timing runs the runtime's real
    verification step (static KV cache, captured on GPU), after warm-up, median of
    repeats. A size that runs out of GPU memory is recorded as the limit for that
    batch and context, and the sweep goes on. On CPU it runs and labels the file
    "cpu".

    \b
    Examples:
      treeopt overhead --random-weights --arch llama-7b -o lat-7b.json
      treeopt overhead --model vicuna-7b --batch 1 --context 1024 -o lat.json
      treeopt overhead --predict --arch llama-7b --gpu a100-80gb-sxm -o lat-a100.json
    """
    from treeopt.cost.roofline import canonical_dtype
    from treeopt.files.latency_file import write_latency

    batches = parse_int_list(batch, "--batch")
    contexts = parse_int_list(context, "--context")
    size_list = parse_int_list(sizes, "--sizes")
    if 1 not in size_list:
        raise TreeoptError("--sizes must include 1 (plain decoding): overheads are relative to it")
    dtype = canonical_dtype(dtype)
    if predict:
        if model is not None or random_weights or compile_step:
            raise TreeoptError("--predict takes --arch and --gpu, not --model, --random-weights "
                               "or --compile")
        if arch is None or gpu is None:
            raise TreeoptError("--predict needs --arch (e.g. llama-7b) and --gpu (e.g. h100-sxm)")
        from treeopt.cost.arch import get_arch
        from treeopt.cost.predict import predict_latency

        table = predict_latency(get_arch(arch), gpu_named(gpu), batches, contexts, size_list, dtype)
    else:
        if gpu is not None:
            raise TreeoptError("--gpu is for --predict; a measured sweep times the GPU it runs on")
        if (model is None) == (not random_weights):
            raise TreeoptError(
                "give --model M, or --random-weights --arch A, or --predict --arch A --gpu G"
            )
        if random_weights and arch is None:
            raise TreeoptError("--random-weights needs --arch (llama-7b, ... or a config.json)")
        if warmup < 0 or repeats < 1:
            raise TreeoptError("--warmup must be >= 0 and --repeats >= 1")
        table = _measure(model, arch if random_weights else None, heads, batches, contexts,
                         size_list, device, dtype, warmup, repeats, compile_step, quiet)
    if all(seconds is None for seconds in table.measurements.values()):
        raise TreeoptError("every setting is out of memory: nothing to write (smaller --batch "
                           "or --context?)")
    write_latency(output, table)
    typer.echo(f"wrote {output}: {len(table.measurements)} settings, {table.describe()}", err=True)


def _measure(model: str | None, arch: str | None, num_heads: int, batches: list[int],
             contexts: list[int], sizes: list[int], device: str, dtype: str,
             warmup: int, repeats: int, compile_step: bool, quiet: bool) -> LatencyTable:
    """Load the model (or build a random-weight one) and heads, then run the sweep."""
    import torch

    from medusa_runtime.heads import MedusaConfig, MedusaHeads
    from treeopt.model.loading import LOADABLE_DTYPES, resolve_device
    from treeopt.model.measure import measure_latency

    resolve_device(device)
    if dtype not in LOADABLE_DTYPES:
        raise TreeoptError(f"measured timing takes bf16, fp16 or fp32, not {dtype} "
                           "(fp8 only with --predict)")
    torch_dtype = getattr(torch, dtype)
    published_heads = None
    if arch is not None:
        from medusa_runtime.timing import random_weight_model
        from treeopt.cost.arch import get_arch

        shape = get_arch(arch)
        net = random_weight_model(shape.to_hf_config_dict(), torch_dtype, device)
        name = shape.name
    else:
        from treeopt.model.loading import load_base_model, load_heads, resolve_model

        net, _ = load_base_model(model, device=device, dtype=dtype)  # type: ignore[arg-type]
        name = str(model)
        published_heads = resolve_model(str(model))[1]
    if published_heads is not None:
        medusa = load_heads(published_heads, device=device, dtype=torch_dtype,
                            base_lm_head=net.get_output_embeddings())
    else:  # the step time depends on the heads' shapes, not their weights
        config = net.config
        medusa = MedusaHeads(MedusaConfig(num_heads, 1, config.hidden_size, config.vocab_size))
        medusa = medusa.to(device=device, dtype=torch_dtype).eval()
    return measure_latency(net, medusa, name, batches, contexts, sizes, device, dtype,
                           warmup, repeats, show_progress=not quiet,
                           compile_step=compile_step)


# ---------------------------------------------------------------------- tune
def tune(
    latency: Annotated[list[Path] | None, typer.Option(
        "--latency", "-l",
        help="treeopt.latency/1 file(s) from `treeopt overhead`; repeat to give several "
             "(a measured one is preferred over a roofline prediction).")] = None,
    profile: Annotated[str, typer.Option(
        "--profile", "-p", help="Acceptance profile: file or shipped name.")] = DEFAULT_PROFILE,
    batch: Annotated[int | None, typer.Option(
        help="Batch size to tune for (default: the smallest in the latency file).")] = None,
    context: Annotated[int | None, typer.Option(
        help=f"Context length to tune for (default: the file's nearest to {DEFAULT_CONTEXT})."
    )] = None,
    max_budget: Annotated[int | None, typer.Option(
        help="Largest tree (tokens/step, root included) to consider (default: the largest "
             "size the latency file covers; never extrapolated).")] = None,
    acceptance_model: Annotated[AcceptanceChoice, typer.Option(
        "--acceptance-model", "-a", "--model-of-acceptance",
        help="Builder's acceptance model (see `treeopt build --help`).")] = (
        AcceptanceChoice.independent),
    engine: Annotated[EngineChoice | None, typer.Option(
        "--engine",
        help="Tune only trees this engine takes (limits as in `treeopt build --engine`). "
             "vllm-medusa also prints vLLM's --speculative-config with the best chain "
             "length per batch size.")] = None,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", callback=output_file,
        help="Write the best tree here (treeopt.tree/1).")] = None,
    curve: Annotated[Path | None, typer.Option(
        callback=curve_file,
        help="Write n, E[accept], latency, overhead, speedup per size (.json or .csv).")] = None,
    plot: Annotated[Path | None, typer.Option(
        callback=plot_file,
            help="Plot acceptance, overhead and speedup vs tree size (.png, .svg, .pdf).")] = None,
    measure: Annotated[bool, typer.Option(
        "--measure", help="Tune by measured tokens/s instead (optuna study over budget, "
                          "depth, typical-acceptance threshold and alpha); see the options "
                          "below.")] = False,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="--measure: model (registry name, folder or hub id).")] = None,
    heads: Annotated[str | None, typer.Option(
        help="--measure: Medusa heads folder or hub id (default: the model's published).")] = None,
    prompts: Annotated[str | None, typer.Option(
        help="--measure: calibration prompts (MT-Bench question.jsonl, .txt, ...).")] = None,
    max_prompts: Annotated[int, typer.Option(min=1, help="--measure: prompts per trial.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(
        min=1, help="--measure: tokens generated per prompt.")] = 128,
    trials: Annotated[int, typer.Option(min=1, help="--measure: optuna trials to run now.")] = 20,
    seed: Annotated[int, typer.Option(help="--measure: sampler and prompt seed.")] = 0,
    storage: Annotated[str | None, typer.Option(
        help="--measure: optuna storage, e.g. sqlite:///study.db, so a study resumes.")] = None,
    study_name: Annotated[str, typer.Option(help="--measure: study name in the storage.")] = (
        "treeopt-tune"),
    device: Annotated[str, typer.Option(help="--measure: cuda or cpu.")] = "cuda",
    dtype: Annotated[str, typer.Option(help="--measure: auto, bf16, fp16 or fp32.")] = (
        "auto"),
) -> None:
    """Pick the tree size with the best predicted speedup for your GPU and batch.

    speedup(n) = E[accept](n) / (latency(n) / latency(1)): the builder's nested
    optimal trees give E[accept] for every size n (tokens per step, root
    included), the latency file gives the step overhead. Prints the table, the
    best size per batch size (large batches shrink or reverse the gain), and
    writes the best tree with its provenance.

    \b
    Examples:
      treeopt overhead --predict --arch llama-7b --gpu h100-sxm -o lat.json
      treeopt tune --latency lat.json --batch 1 -o tree.json --plot tune.png
      treeopt tune --latency lat.json --engine vllm-medusa -o chain.json
      treeopt tune --measure --model vicuna-7b --prompts question.jsonl \\
          --storage sqlite:///study.db --trials 30 -o tree.json
    """
    if measure:
        from treeopt.model.study import run_study_cli

        if engine is not None:
            raise TreeoptError("--engine applies to tuning by a latency file, not --measure")
        if latency:
            raise TreeoptError("--measure times real decoding; it takes no --latency file")
        run_study_cli(profile=profile, model=model, heads=heads, prompts=prompts,
                      max_prompts=max_prompts, max_new_tokens=max_new_tokens, trials=trials,
                      seed=seed, storage=storage, study_name=study_name, device=device,
                      dtype=dtype, max_budget=max_budget,
                      acceptance_model=acceptance_model.value,
                      output=output)
        return
    if not latency:
        raise TreeoptError("give --latency FILE (make one with `treeopt overhead`), or --measure")
    from treeopt.files.latency_file import load_latency, prefer_measured
    from treeopt.files.profile_file import load_profile
    from treeopt.optimize.tune import (
        batch_view,
        chain_lengths_per_batch,
        curve_rows,
        tune_tree,
    )

    tables = [(name, load_latency(name)) for name in dict.fromkeys(map(str, latency))]
    source_file, table = prefer_measured(tables)
    loaded_profile = load_profile(profile)
    typer.echo(f"latency: {source_file}: {table.describe()}", err=True)
    if len(tables) > 1:
        others = ", ".join(name for name, _ in tables if name != source_file)
        typer.echo(f"  (preferred over {others})", err=True)
    engine_name = None if engine is None else engine.value
    tuned = tune_tree(loaded_profile, table, batch, context, max_budget, acceptance_model.value,
                      engine=engine_name)
    result = tuned.result
    _print_tune_table(result, table)
    per_batch = batch_view(tuned.accept_curve, table, result.context, tuned.max_budget)
    _print_batch_view(per_batch, result.context)
    if engine_name == "vllm-medusa":
        import json

        from treeopt.files.engines import VLLM_MEDUSA_SCHEDULE_NOTE, vllm_batch_schedule

        chain = result.best.num_tokens - 1
        if chain >= 1:
            config = {"method": "medusa", "num_speculative_tokens": chain}
            typer.echo(f"vLLM --speculative-config (predicted best chain at batch "
                       f"{result.batch}): {json.dumps(config)}")
        schedule = vllm_batch_schedule(chain_lengths_per_batch(per_batch))
        typer.echo(f"note: predicted best chain per batch size, as vLLM's "
                   f"num_speculative_tokens_per_batch_size: {json.dumps(schedule)}; "
                   f"{VLLM_MEDUSA_SCHEDULE_NOTE}", err=True)

    rows = curve_rows(result, table.latency_curve(result.batch, result.context))
    provenance = _provenance(profile, source_file, table, result, acceptance_model.value)
    provenance["weighting"] = tuned.weighting
    if engine_name is not None:
        provenance["engine"] = engine_name
    if curve is not None:
        from treeopt.files.curve_file import write_curve

        write_curve(curve, rows, provenance)
        typer.echo(f"wrote {curve}", err=True)
    if plot is not None:
        from treeopt.pictures.plots import plot_curve

        plot_curve(rows, plot, f"{profile} on {table.device}, batch {result.batch}, "
                               f"context {result.context}")
        typer.echo(f"wrote {plot}", err=True)
    if output is not None:
        if result.best.num_tokens == 1:
            raise TreeoptError(
                f"at batch {result.batch}, context {result.context} no tree beats plain "
                f"decoding on {table.device} (best size 1): nothing to write"
            )
        from treeopt.files.tree_file import write_tree

        write_tree(output, tuned.tree, tuned.score, provenance)
        typer.echo(f"wrote {output}: {result.best.num_tokens} tokens/step", err=True)


def _provenance(profile: str, source_file: str, table: LatencyTable, result: TuneResult,
                acceptance_model: str) -> dict[str, Any]:
    from treeopt.core.timestamps import utc_now

    best = result.best
    return {
        "tool": "treeopt tune",
        "profile": profile,
        "acceptance_model": acceptance_model,
        "budget": best.num_tokens,
        "batch": result.batch,
        "context": result.context,
        "predicted_speedup": round(best.speedup, 4),
        "overhead": round(best.overhead, 4),
        "latency_source": table.source,
        "latency_device": table.device,
        "latency_arch": table.arch,
        "latency_dtype": table.dtype,
        "latency_file": Path(source_file).name,
        "created": utc_now(),
    }


def _shown_sizes(result: TuneResult) -> list[int]:
    """Every size for a short curve; powers of two, multiples of 16 and n*'s neighbours else."""
    last = len(result.points)
    if last <= FULL_TABLE_ROWS:
        return list(range(1, last + 1))
    best = result.best.num_tokens
    shown = {1, last, *range(max(1, best - 2), min(last, best + 2) + 1)}
    shown |= {n for n in range(1, last + 1) if n & (n - 1) == 0 or n % 16 == 0}
    return sorted(shown)


def _print_tune_table(result: TuneResult, table: LatencyTable) -> None:
    from rich.console import Console
    from rich.table import Table

    view = Table(title=f"Predicted speedup, batch {result.batch}, context {result.context} "
                       f"({table.describe()})")
    for column in ("n (tokens/step)", r"E\[accept]", "overhead", "speedup"):
        view.add_column(column, justify="right")
    for n in _shown_sizes(result):
        point = result.points[n - 1]
        style = "bold green" if n == result.best.num_tokens else None
        view.add_row(str(n), f"{point.expected_accept_length:.3f}", f"{point.overhead:.3f}",
                     f"{point.speedup:.3f}x", style=style)
    console = Console()
    console.print(view)
    best = result.best
    console.print(
        f"best: n* = {best.num_tokens} tokens/step, "
        f"E\\[accept] {best.expected_accept_length:.3f}, "
        f"overhead {best.overhead:.3f}, predicted speedup {best.speedup:.3f}x "
        f"(sizes up to {len(result.points)}, limited by the {result.limited_by})"
    )


def _print_batch_view(rows: list[BatchBest], context: int) -> None:
    from rich.console import Console
    from rich.table import Table

    view = Table(title=f"Best tree size per batch size, context {context}")
    for column in ("batch", "best n", r"E\[accept]", "overhead", "speedup"):
        view.add_column(column, justify="right")
    for row in rows:
        view.add_row(str(row.batch), str(row.num_tokens), f"{row.expected_accept_length:.3f}",
                     f"{row.overhead:.3f}", f"{row.speedup:.3f}x")
    Console().print(view)


def register(app: typer.Typer) -> None:
    """Add ``overhead`` and ``tune`` to the treeopt app."""
    app.command("overhead")(overhead)
    app.command("tune")(tune)
