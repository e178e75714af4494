"""``treeopt autotune``: one command from a model to a tuned, engine-ready tree and a report.

The verb parses options and calls :func:`treeopt.workflows.autotune.autotune`.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from treeopt.cli.options import (
    STAGE_KEY,
    AcceptanceChoice,
    DeviceOption,
    LoadDtypeOption,
    QuietOption,
    output_folder,
    parse_int_list,
)
from treeopt.workflows.autotune import (
    DEFAULT_DECODE_ROUNDS,
    DEFAULT_HOLDOUT_FRACTION,
    DEFAULT_SIZES,
    ENGINES,
    STAGES,
)

AutotuneEngine = Enum("AutotuneEngine", {name: name for name in ENGINES}, type=str)
AutotuneStage = Enum("AutotuneStage", {name: name for name in STAGES}, type=str)

ModelOption = Annotated[str, typer.Option(
    "--model", "-m", help="Base model: registry name (vicuna-7b), folder or hub id.")]
DataOption = Annotated[str, typer.Option(
    "--data", "-d", help="Prompts (MT-Bench question.jsonl, .txt, JSONL, a dataset); a "
                         "share is held out unless --holdout-data is given.")]
OutputOption = Annotated[Path, typer.Option(
    "-o", "--output", callback=output_folder,
    help="A new or empty folder (or one of an earlier run) for every file of the run "
         "and report.md; rerunning the same command continues after its last finished "
         "stage. Files autotune did not write are never overwritten.")]
HeadsOption = Annotated[str | None, typer.Option(
    help="Medusa heads folder or hub id (default: the model's published heads).")]
HoldoutDataOption = Annotated[str | None, typer.Option(
    help="Held-out prompts for the check and the measured speedup.")]
HoldoutFractionOption = Annotated[float, typer.Option(
    help="Share of --data held out when no --holdout-data.")]
EngineOption = Annotated[AutotuneEngine, typer.Option(
    help="Where the tree goes: bundled (medusa_runtime, treeopt JSON), medusa, trtllm, "
         "vllm or eagle; its limits apply while building.")]
GpuOption = Annotated[str | None, typer.Option(
    help="Predict latency for this GPU (h100-sxm, a100-80gb-sxm, ... or auto) instead "
         "of measuring here; predicted figures are labelled so.")]
ArchOption = Annotated[str | None, typer.Option(
    help="Model shape for --gpu (default: the model's config).")]
BatchOption = Annotated[str, typer.Option(
    help="Batch sizes to tune for, comma-separated (one tree per bucket sharing one).")]
ContextOption = Annotated[str | None, typer.Option(
    help="Context lengths to time, comma-separated (default: the held-out prompts' mean "
         "length + half of --max-new-tokens).")]
SizesOption = Annotated[str, typer.Option(
    help="Tree sizes to time (tokens/step, root included; must include 1).")]
MaxPromptsOption = Annotated[int | None, typer.Option(
    min=1, help="Use a seeded random subset of this many prompts of --data.")]
MaxNewTokensOption = Annotated[int, typer.Option(
    min=1, help="New tokens per prompt (profile and decoding).")]
TopKOption = Annotated[int, typer.Option(min=1, help="Ranks measured per head.")]
AcceptanceModelOption = Annotated[AcceptanceChoice, typer.Option(
    "--acceptance-model", "-a", help="Builder's acceptance model.")]
ChatTemplateOption = Annotated[bool, typer.Option(
    help="Wrap prompts in the tokenizer's chat template when it has one.")]
SeedOption = Annotated[int, typer.Option(help="Seed of the held-out split and prompt subset.")]
ThreadsOption = Annotated[int | None, typer.Option(
    min=1, help="CPU threads for timing and decoding (default 1: steady timings).")]
CompileStepOption = Annotated[bool, typer.Option(
    "--compile/--no-compile",
    help="torch.compile the step for timing and decoding (faster steps on CPU; each "
         "tree size compiles first).")]
VerifyOption = Annotated[bool, typer.Option(
    help="Decode the held-out prompts to measure the speedup (measured runs only).")]
RoundsOption = Annotated[int, typer.Option(
    min=1, help="Decoding rounds of the measured speedup (the fastest kept).")]
RedoOption = Annotated[AutotuneStage | None, typer.Option(
    metavar="STAGE",
    help=f"Redo STAGE ({', '.join(STAGES)}) and every later one of the run in -o, e.g. "
         "--redo verify (a rerun changing only --rounds, --threads or --verify redoes "
         "what they affect by itself).")]



def autotune(
    ctx: typer.Context,
    model: ModelOption,
    data: DataOption,
    output: OutputOption,
    heads: HeadsOption = None,
    holdout_data: HoldoutDataOption = None,
    holdout_fraction: HoldoutFractionOption = DEFAULT_HOLDOUT_FRACTION,
    engine: EngineOption = AutotuneEngine.bundled,
    gpu: GpuOption = None,
    arch: ArchOption = None,
    device: DeviceOption = "auto",
    dtype: LoadDtypeOption = "auto",
    batch: BatchOption = "1",
    context: ContextOption = None,
    sizes: SizesOption = ",".join(map(str, DEFAULT_SIZES)),
    max_prompts: MaxPromptsOption = None,
    max_new_tokens: MaxNewTokensOption = 128,
    top_k: TopKOption = 10,
    acceptance_model: AcceptanceModelOption = AcceptanceChoice.joint,
    chat_template: ChatTemplateOption = True,
    seed: SeedOption = 0,
    threads: ThreadsOption = None,
    compile_step: CompileStepOption = False,
    verify: VerifyOption = True,
    rounds: RoundsOption = DEFAULT_DECODE_ROUNDS,
    redo: RedoOption = None,
    quiet: QuietOption = False,
) -> None:
    """Profile, build, time, tune, export and report the best tree, in one command.

    The best tree for your model, heads, GPU, batch sizes and engine.

    Stages: profile -> build (with a held-out check) -> latency (measured here, or
    predicted for --gpu) -> tune (per batch size) -> export -> verify (decode the
    held-out prompts: measured speedup) -> report (OUTPUT/report.md and pictures).
    Interrupt it any time: rerunning the same command continues. -o must be a
    new or empty folder or an earlier run's; a rerun may change only --rounds,
    --threads and --verify (the stages they affect are redone) or ask for
    --redo STAGE. Paths are compared by content, not spelling.

    \b
    Examples:
      treeopt autotune -m ./stories260K --heads heads/ -d question.jsonl \\
          --device cpu -o out/
      treeopt autotune -m vicuna-7b -d question.jsonl --batch 1,4,16 \\
          --engine trtllm -o out/
      treeopt autotune -m vicuna-7b -d question.jsonl --gpu h100-sxm \\
          --arch llama-7b -o out/
    """
    from treeopt.workflows.autotune import autotune as run_autotune
    from treeopt.workflows.autotune import settings_from
    from treeopt.workflows.devices import device_choice

    settings = settings_from(
        model=model, data=data, output=output, heads=heads, holdout_data=holdout_data,
        holdout_fraction=holdout_fraction, engine=engine.value, gpu=gpu, arch=arch,
        device=device_choice(device), dtype=dtype, batches=tuple(parse_int_list(batch, "--batch")),
        contexts=tuple(parse_int_list(context, "--context")) if context else None,
        sizes=tuple(parse_int_list(sizes, "--sizes")), max_prompts=max_prompts,
        max_new_tokens=max_new_tokens, top_k=top_k, acceptance_model=acceptance_model.value,
        chat_template=chat_template, seed=seed, threads=threads, compile_step=compile_step,
        verify=verify, decode_rounds=rounds, progress=not quiet,
        redo=None if redo is None else redo.value)
    ctx.meta[STAGE_KEY] = STAGES[0]  # what Ctrl-C names (treeopt.cli.app says the rest)

    def log(line: str) -> None:
        if line.startswith("[") and "] " in line:
            ctx.meta[STAGE_KEY] = line.split("] ", 1)[1].split(":")[0].split(" ")[0]
        if not quiet or line.lstrip().startswith("warning:"):  # -q keeps the warnings
            typer.echo(line, err=True)

    result = run_autotune(settings, log=log)
    typer.echo(result.headline.replace("**", ""))
    typer.echo(f"report: {result.report}", err=True)


def register(app: typer.Typer) -> None:
    """Add ``autotune`` to the treeopt app."""
    app.command("autotune")(autotune)
