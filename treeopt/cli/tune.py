"""``treeopt overhead`` (step latency per tree size) and ``treeopt tune`` (best tree size).

Neither imports torch at module level; ``overhead --predict`` and ``tune`` never
import it at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from treeopt.cli.options import (
    AcceptanceChoice,
    DeviceOption,
    QuietOption,
    TuneEngineChoice,
    curve_file,
    output_file,
    parse_int_list,
    plot_file,
    print_table,
)
from treeopt.core.latency import DEFAULT_CONTEXT, DEFAULT_REPEATS, DEFAULT_WARMUP, latency_warnings
from treeopt.cost.roofline import MEDUSA_NUM_HEADS
from treeopt.errors import TreeoptError
from treeopt.files.shipped import DEFAULT_PROFILE
from treeopt.optimize.draft_tune import DEFAULT_DRAFT_BUDGET

if TYPE_CHECKING:
    from treeopt.core.latency import LatencyTable
    from treeopt.optimize.tune import BatchBest, TuneResult
    from treeopt.workflows.tuning import DraftTuneOutcome, TuneOutcome

DEFAULT_BATCHES = "1,4,16,64"
# Dense where the optimum usually is (16..96 tokens), sparse out to 256.
DEFAULT_SIZES = "1,2,4,8,16,24,32,48,64,80,96,128,160,192,256"
# A curve this long or shorter is printed in full; longer ones show a summary.
FULL_TABLE_ROWS = 32


# ------------------------------------------------------------------ overhead
LatencyOutputOption = Annotated[Path, typer.Option(
    "-o", "--output", callback=output_file, help="treeopt.latency/1 JSON file to write.")]
TimedModelOption = Annotated[str | None, typer.Option(
    "--model", "-m",
    help="Model to time: registry name (vicuna-7b), folder or hub id. Its Medusa heads "
         "are used when published, else random heads of the same shape.")]
RandomWeightsOption = Annotated[bool, typer.Option(
    "--random-weights",
    help="Time a random-weight model of --arch's shape: plan for a 7B/13B/33B model "
         "without downloading it (the step time does not depend on the weights).")]
PredictOption = Annotated[bool, typer.Option(
    "--predict", help="Write the roofline model's prediction for --gpu instead of "
                      "measuring (no torch, no GPU needed).")]
OverheadArchOption = Annotated[str | None, typer.Option(
    help="Model shape for --random-weights/--predict: llama-7b, llama-13b, llama-33b, ... "
         "or a config.json / model folder.")]
OverheadGpuOption = Annotated[str | None, typer.Option(
    help="GPU to predict for (--predict): a slug from 'roofline --list-gpus' (a100-80gb-sxm, "
         "h100-sxm, a10g, ...), auto, or a GPU JSON file {\"peak_tflops\": dense bf16 "
         "TFLOP/s, \"bandwidth_gbs\": GB/s, \"memory_gb\": GB} for any other GPU.")]
BatchesOption = Annotated[str, typer.Option(help="Batch sizes, comma-separated.")]
ContextsOption = Annotated[str | None, typer.Option(
    help="Context lengths (KV positions already cached), comma-separated (default: "
         "128,1024,4096, those the model holds with the largest size).")]
SizesOption = Annotated[str, typer.Option(
    help="Tree sizes (tokens per step, root included; 1 = plain decoding).")]
TimedDtypeOption = Annotated[str, typer.Option(
    help="auto (the checkpoint's own dtype; bf16 for --random-weights and --predict, which "
         "have no checkpoint), bf16, fp16 or fp32 (fp8 for --predict).")]
RandomHeadsOption = Annotated[int, typer.Option(
    min=0, help="Medusa heads to time with random weights (--random-weights or a model "
         "without published heads).")]
WarmupOption = Annotated[int, typer.Option(min=0, help="Untimed steps before timing each size.")]
RepeatsOption = Annotated[int, typer.Option(
    min=1, help="Timed steps per size and round; the fastest sample (min) is kept. "
                "Rounds repeat until every size's spread is <= 5% (4 at most); a "
                "warning says when it was not reached.")]
CompileOption = Annotated[bool, typer.Option(
    "--compile", help="Time the torch.compile'd step (fuses small kernels; compiles once "
                      "per setting, tens of seconds each for a 7B model).")]


def overhead(
    output: LatencyOutputOption,
    model: TimedModelOption = None,
    random_weights: RandomWeightsOption = False,
    predict: PredictOption = False,
    arch: OverheadArchOption = None,
    gpu: OverheadGpuOption = None,
    batch: BatchesOption = DEFAULT_BATCHES,
    context: ContextsOption = None,
    sizes: SizesOption = DEFAULT_SIZES,
    device: DeviceOption = "auto",
    dtype: TimedDtypeOption = "auto",
    heads: RandomHeadsOption = MEDUSA_NUM_HEADS,
    warmup: WarmupOption = DEFAULT_WARMUP,
    repeats: RepeatsOption = DEFAULT_REPEATS,
    compile_step: CompileOption = False,
    quiet: QuietOption = False,
) -> None:
    """Measure (or predict) the verification-step latency for each tree size.

    The overhead of an n-token tree is latency(n) / latency(1); `treeopt tune`
    divides the expected accept length by it. Timing runs the runtime's real
    verification step (static KV cache, captured on GPU), after warm-up; the
    fastest of the repeats (min) is kept, as autotune does: load only adds
    time. Rounds of repeats go on until every size's spread ((q3 - q1) /
    median) is <= 5%, up to 4; a warning says when that was not reached. A
    size that runs out of GPU memory is recorded as the limit for that batch
    and context, and the sweep goes on. On CPU it runs and labels the file
    "cpu". Default contexts the model cannot hold are left out (said on
    stderr).

    \b
    Examples:
      treeopt overhead --random-weights --arch llama-7b -o lat-7b.json
      treeopt overhead --model vicuna-7b --batch 1 --context 1024 -o lat.json
      treeopt overhead --predict --arch llama-7b --gpu a100-80gb-sxm \\
          -o lat-a100.json
    """
    from treeopt.workflows.devices import device_choice
    from treeopt.workflows.latency import OverheadSettings, write_overhead

    table = write_overhead(OverheadSettings(
        output=output, batches=parse_int_list(batch, "--batch"),
        contexts=parse_int_list(context, "--context") if context else None,
        sizes=parse_int_list(sizes, "--sizes"),
        model=model, random_weights=random_weights, predict=predict, arch=arch, gpu=gpu,
        device=device if predict else device_choice(device), dtype=dtype, heads=heads,
        warmup=warmup, repeats=repeats, compile_step=compile_step, show_progress=not quiet))
    typer.echo(f"wrote {output}: {len(table.measurements)} settings, {table.describe()}", err=True)
    for line in latency_warnings(table):
        typer.echo(f"warning: {line}", err=True)


# ---------------------------------------------------------------------- tune
LatencyFilesOption = Annotated[list[Path] | None, typer.Option(
    "--latency", "-l",
    help="treeopt.latency/1 file(s) from `treeopt overhead`; repeat to give several "
         "(a measured one is preferred over a roofline prediction).")]
TuneProfileOption = Annotated[str | None, typer.Option(
    "--profile", "-p", help=f"Acceptance profile: file or shipped name (default "
                            f"{DEFAULT_PROFILE}; --measure needs the model's own).")]
TuneBatchOption = Annotated[str | None, typer.Option(
    help="Batch size to tune for (default: the smallest in the latency file; "
         "--draft-arch: 1). --engine sglang|vllm-spec|trtllm-pytorch: a list, e.g. 1,4,16.")]
TuneContextOption = Annotated[int | None, typer.Option(
    help=f"Context length to tune for (default: the file's nearest to {DEFAULT_CONTEXT}).")]
MaxBudgetOption = Annotated[int | None, typer.Option(
    help="Largest tree (tokens/step, root included) to consider (default: the largest "
         "size the latency file covers; never extrapolated. --draft-arch: the largest "
         f"draft tree, default {DEFAULT_DRAFT_BUDGET}; 1 scores chains only).")]
TuneAcceptanceOption = Annotated[AcceptanceChoice, typer.Option(
    "--acceptance-model", "-a", "--model-of-acceptance",
    help="Builder's acceptance model (see `treeopt build --help`).")]
TuneEngineOption = Annotated[TuneEngineChoice | None, typer.Option(
    "--engine",
    help="Tune only trees this engine takes (limits as in `treeopt build --engine`). "
         "vllm-medusa also prints vLLM's --speculative-config with the best chain "
         "length per batch size. sglang, vllm-spec, trtllm-pytorch: the engine's own "
         "knobs per --batch for a draft model (-p: its profile, --expand for sglang; "
         "--draft-arch, --arch, --gpu; -o: the config; --plot: heatmap).")]
TunedTreeOption = Annotated[Path | None, typer.Option(
    "-o", "--output", callback=output_file, help="Write the best tree here (treeopt.tree/1).")]
TuneCurveOption = Annotated[Path | None, typer.Option(
    callback=curve_file,
    help="Write n, E[accept], latency, overhead, speedup per size (.json or .csv).")]
TunePlotOption = Annotated[Path | None, typer.Option(
    callback=plot_file,
    help="Plot acceptance, overhead and speedup vs tree size (.png, .svg, .pdf).")]
MeasureOption = Annotated[bool, typer.Option(
    "--measure", hidden=True, help="Moved: tuning by measured tokens/s is `treeopt study`.")]
DraftArchOption = Annotated[str | None, typer.Option(
    "--draft-arch",
    help="Tune a draft model instead of Medusa heads: the draft's shape (llama-68m, "
         "llama-160m, tinyllama-1.1b, ... or a config.json / model folder); -p is its "
         "`treeopt profile --draft-model` profile. Step times are the roofline's prediction.")]
TargetArchOption = Annotated[str | None, typer.Option(
    "--arch", help="--draft-arch: the target's shape (llama-7b, ... or a config.json).")]
DraftGpuOption = Annotated[str | None, typer.Option(
    "--gpu", help="--draft-arch: GPU to predict for (a slug from 'roofline --list-gpus', "
                  "auto, or a GPU JSON file).")]
MaxGammaOption = Annotated[int | None, typer.Option(
    "--max-gamma", min=0, help="--draft-arch: longest chain scored (default: the profile's "
                               "depth).")]
KernelOverheadOption = Annotated[float, typer.Option(
    "--kernel-overhead-us", min=0.0,
    help="--draft-arch: fixed cost per operator on top of the datasheet roofline (~10 for "
         "eager PyTorch launches; it is what makes a tiny draft's pass cost more than "
         "its bytes).")]


def tune(
    ctx: typer.Context,
    latency: LatencyFilesOption = None,
    profile: TuneProfileOption = None,
    batch: TuneBatchOption = None,
    context: TuneContextOption = None,
    max_budget: MaxBudgetOption = None,
    acceptance_model: TuneAcceptanceOption = AcceptanceChoice.independent,
    engine: TuneEngineOption = None,
    output: TunedTreeOption = None,
    curve: TuneCurveOption = None,
    plot: TunePlotOption = None,
    draft_arch: DraftArchOption = None,
    arch: TargetArchOption = None,
    gpu: DraftGpuOption = None,
    max_gamma: MaxGammaOption = None,
    kernel_overhead_us: KernelOverheadOption = 0.0,
    measure: MeasureOption = False,
) -> None:
    """Pick the tree size with the best predicted speedup for your GPU and batch.

    speedup(n) = E[accept](n) / (latency(n) / latency(1)): the builder's nested
    optimal trees give E[accept] for every size n (tokens per step, root
    included), the latency file gives the step overhead. Prints the table, the
    best size per batch size (large batches shrink or reverse the gain), and
    writes the best tree with its provenance.

    With --draft-arch it tunes a draft model: every chain of gamma draft tokens
    and every draft tree `build` grows from the draft profile, each step (the
    draft's passes + the target's verification) predicted on the roofline; it
    writes the best chain or tree for `generate --draft-model D --tree`.

    To tune by measured tokens/s instead, use `treeopt study`.

    \b
    Examples:
      treeopt overhead --predict --arch llama-7b --gpu h100-sxm -o lat.json
      treeopt tune --latency lat.json --batch 1 -o tree.json --plot tune.png
      treeopt tune --latency lat.json --engine vllm-medusa -o chain.json
      treeopt tune -p draft.json --draft-arch llama-68m --arch llama-7b \\
          --gpu a100-80gb-sxm --batch 1 --context 1024 -o draft-tree.json
    """
    from treeopt.workflows.tuning import DraftTuneOutcome, TuneRequest
    from treeopt.workflows.tuning import tune as run_tune

    if engine is not None and engine.value in ("sglang", "vllm-spec", "trtllm-pytorch"):
        return _tune_knobs(engine.value, profile, draft_arch, arch, gpu, batch, context,
                           max_budget, output, plot)
    batch = None if batch is None else _one_batch(batch)
    if measure:
        raise TreeoptError("tune --measure is now its own verb: treeopt study -m MODEL -d DATA "
                           "... (see 'treeopt study --help')")
    if ctx.args:
        raise TreeoptError(f"No such option: {ctx.args[0]} (see 'treeopt tune --help')")
    outcome = run_tune(TuneRequest(
        latency=tuple(latency or ()), profile=profile, batch=batch, context=context,
        max_budget=max_budget, acceptance_model=acceptance_model.value,
        engine=None if engine is None else engine.value, output=output, curve=curve,
        plot=plot, draft_arch=draft_arch, arch=arch, gpu=gpu, max_gamma=max_gamma,
        kernel_overhead_us=kernel_overhead_us, say=_say))
    if isinstance(outcome, DraftTuneOutcome):
        _print_draft(outcome, output)
    else:
        _print_tuned(outcome, curve, plot, output)


def _one_batch(text: str) -> int:
    """``--batch`` outside the knob engines: one size."""
    if text.strip().lstrip("-").isdigit():  # its range is checked where it is used
        return int(text)
    values = parse_int_list(text, "--batch")
    if len(values) != 1:
        raise TreeoptError("--batch takes one size here (a list only with --engine sglang, "
                           "vllm-spec or trtllm-pytorch)")
    return values[0]


def _tune_knobs(engine: str, profile: str | None, draft_arch: str | None, arch: str | None,
                gpu: str | None, batch: str | None, context: int | None,
                max_budget: int | None, output: Path | None, plot: Path | None) -> None:
    """``tune --engine sglang|vllm-spec|trtllm-pytorch``: print the table, what was written."""
    from treeopt.files.engines import check_pairing
    from treeopt.workflows.engine_knobs import (
        DEFAULT_MAX_KNOB_TOKENS,
        EngineKnobSettings,
        tune_engine_knobs,
    )

    check_pairing(engine, "draft_model")
    if None in (profile, draft_arch, arch, gpu):
        raise TreeoptError(f"--engine {engine} needs -p (a draft-model profile), --draft-arch, "
                           "--arch and --gpu")
    outcome = tune_engine_knobs(EngineKnobSettings(
        engine=engine, profile=str(profile), draft_arch=str(draft_arch), target_arch=str(arch),
        gpu=str(gpu), batches=tuple(parse_int_list(batch or "1,4,16", "--batch")),
        context=context or DEFAULT_CONTEXT, max_tokens=max_budget or DEFAULT_MAX_KNOB_TOKENS,
        output=output, plot=plot))
    typer.echo(f"{engine} knobs per batch size ({outcome.cost_label}):")
    for row in outcome.table:
        typer.echo(f"  batch {row['batch']:>4}: {row['best'] or 'off':<16} "
                   f"{row['predicted_tokens_per_s']:>10.1f} tok/s vs plain "
                   f"{row['plain_tokens_per_s']:.1f} ({row['predicted_speedup']:.2f}x)"
                   + ("" if row["best"] else ": switch speculation off"))
    for name, config in outcome.configs.items():
        typer.echo(f"{'wrote' if output else 'config'} {name}: {config}")


def _print_tuned(outcome: TuneOutcome, curve: Path | None, plot: Path | None,
                 output: Path | None) -> None:
    """Tuning by a latency table: its speedup table, the batch view, what was written."""
    table, result = outcome.table, outcome.tuned.result
    _print_tune_table(result, table)
    _print_batch_view(outcome.batches, result.context)
    if outcome.vllm_schedule is not None:
        _print_vllm_config(result.best.num_tokens - 1, result.batch, outcome.vllm_schedule)
    for written in (curve, plot):
        if written is not None:
            typer.echo(f"wrote {written}", err=True)
    if output is not None:
        typer.echo(f"wrote {output}: {result.best.num_tokens} tokens/step", err=True)


def _print_draft(outcome: DraftTuneOutcome, output: Path | None) -> None:
    from rich.table import Table

    result = outcome.result
    settings = outcome.provenance
    view = Table(title=f"Draft model {settings['draft_arch']} for {settings['target_arch']}, "
                       f"batch {settings['batch']}, context {settings['context']}: all "
                       f"predicted ({outcome.cost_label})")
    for column in ("draft", "n", "passes", "tokens/step", "step ms", "speedup"):
        view.add_column(column, justify="right")
    best = result.best
    rows = [(f"gamma {p.draft_passes}" if p.draft_passes else "plain", p)
            for p in result.chains]
    if result.trees:
        rows.append(("best tree", result.best_tree))
    for name, point in rows:
        view.add_row(name, str(point.num_tokens), str(point.draft_passes),
                     f"{point.expected_accept_length:.3f}", f"{point.step_seconds * 1e3:.3f}",
                     f"{point.speedup:.3f}x", style="bold green" if point is best else None)
    print_table(view)
    kind = f"chain gamma = {settings['gamma']}" if settings["kind"] == "chain" else \
        f"tree of {best.num_tokens} tokens, depth {best.draft_passes}"
    typer.echo(f"best: {kind}, predicted {best.expected_accept_length:.3f} tokens/step, "
                  f"step {best.step_seconds * 1e3:.3f} ms, predicted speedup "
                  f"{best.speedup:.3f}x")
    if output is not None:
        typer.echo(f"wrote {output}: {settings['kind']}, {best.num_tokens} tokens/step "
                   f"(use: treeopt generate --draft-model D --tree {output})", err=True)


def _print_vllm_config(chain: int, batch: int, schedule: object) -> None:
    import json

    from treeopt.files.engines import VLLM_MEDUSA_SCHEDULE_NOTE

    if chain >= 1:
        config = {"method": "medusa", "num_speculative_tokens": chain}
        typer.echo(f"vLLM --speculative-config (predicted best chain at batch "
                   f"{batch}): {json.dumps(config)}")
    typer.echo(f"note: predicted best chain per batch size, as vLLM's "
               f"num_speculative_tokens_per_batch_size: {json.dumps(schedule)}; "
               f"{VLLM_MEDUSA_SCHEDULE_NOTE}", err=True)


def _say(line: str) -> None:
    typer.echo(line, err=True)


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
    print_table(view)
    best = result.best
    typer.echo(
        f"best: n* = {best.num_tokens} tokens/step, "
        f"E[accept] {best.expected_accept_length:.3f}, "
        f"overhead {best.overhead:.3f}, predicted speedup {best.speedup:.3f}x "
        f"(sizes up to {len(result.points)}, limited by the {result.limited_by})"
    )


def _print_batch_view(rows: list[BatchBest], context: int) -> None:
    from rich.table import Table

    view = Table(title=f"Best tree size per batch size, context {context}")
    for column in ("batch", "best n", r"E\[accept]", "overhead", "speedup"):
        view.add_column(column, justify="right")
    for row in rows:
        view.add_row(str(row.batch), str(row.num_tokens), f"{row.expected_accept_length:.3f}",
                     f"{row.overhead:.3f}", f"{row.speedup:.3f}x")
    print_table(view)


def register(app: typer.Typer) -> None:
    """Add ``overhead`` and ``tune`` to the treeopt app."""
    app.command("overhead")(overhead)
    # Extra arguments reach the verb, so `tune --measure -m M ...` (options study took
    # from tune) is answered with the pointer to `treeopt study`, not "No such option -m".
    app.command("tune", context_settings={"ignore_unknown_options": True,
                                          "allow_extra_args": True})(tune)
