"""``treeopt study``: tune by measured tokens/s, an optuna study that workers can share.

torch, transformers and optuna are imported inside the verb only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from treeopt.cli.options import (
    AcceptanceChoice,
    DeviceOption,
    LoadDtypeOption,
    OptionalDataOption,
    QuietOption,
    output_file,
)
from treeopt.errors import TreeoptError

StudyModelOption = Annotated[str, typer.Option(
    "--model", "-m", help="Model: registry name, folder or hub id (a Medusa-2 checkpoint "
    "brings its own heads).")]
StudyHeadsOption = Annotated[str | None, typer.Option(
    "--heads", help="Medusa heads folder or hub id (default: the model's published).")]
OldPromptsOption = Annotated[str | None, typer.Option(
    "--prompts", hidden=True, help="Old name of --data.")]
StudyProfileOption = Annotated[str | None, typer.Option(
    "--profile", "-p", help="Profile the trees are built from (default: the shipped one "
    "of a registry model; any other model needs its own, from `treeopt profile`).")]
MaxPromptsOption = Annotated[int, typer.Option(min=1, help="Prompts decoded per trial.")]
MaxNewTokensOption = Annotated[int, typer.Option(min=1, help="Tokens generated per prompt.")]
TrialsOption = Annotated[int, typer.Option(
    min=1, help="Trials in the whole study, all workers together: a rerun or another "
    "worker goes on until the study holds this many.")]
SeedOption = Annotated[int, typer.Option(
    help="Seed of the sampler (with each trial's number) and of the prompt subset.")]
StorageOption = Annotated[str | None, typer.Option(
    help="optuna database URL that keeps the study and that workers share: "
    "sqlite:///study.db on one machine, postgresql://user:password@host/db across "
    "machines (default: in memory, one worker).")]
StudyNameOption = Annotated[str, typer.Option(help="The study's name in --storage.")]
MaxBudgetOption = Annotated[int | None, typer.Option(
    help="Largest tree searched (tokens/step, root included; default 128).")]
AcceptanceOption = Annotated[AcceptanceChoice, typer.Option(
    "--acceptance-model", "-a", help="Builder's acceptance model.")]
StudyOutputOption = Annotated[Path | None, typer.Option(
    "-o", "--output", callback=output_file,
    help="The study's best tree (treeopt.tree/1), written once: by the worker that "
    "finishes the study's last trial.")]


def study(
    model: StudyModelOption,
    data: OptionalDataOption = None,
    heads: StudyHeadsOption = None,
    profile: StudyProfileOption = None,
    max_prompts: MaxPromptsOption = 8,
    max_new_tokens: MaxNewTokensOption = 128,
    trials: TrialsOption = 20,
    seed: SeedOption = 0,
    storage: StorageOption = None,
    study_name: StudyNameOption = "treeopt-study",
    max_budget: MaxBudgetOption = None,
    acceptance_model: AcceptanceOption = AcceptanceChoice.independent,
    device: DeviceOption = "auto",
    dtype: LoadDtypeOption = "auto",
    output: StudyOutputOption = None,
    quiet: QuietOption = False,
    prompts: OldPromptsOption = None,
) -> None:
    """Tune by measured tokens/s: an optuna study over budget, depth and typical acceptance.

    Each trial builds the profile's tree for a (budget, max depth), decodes the
    prompts under Medusa's typical acceptance (threshold, alpha) and scores the
    decoding rate (new tokens after the first / wall time after the prefill).
    With --storage the study is kept: rerun to resume, or start several workers on
    the same storage; together they finish --trials trials, none proposed twice
    (the sampler is seeded by trial number), and the worker that finishes the last
    trial writes -o.

    \b
    Examples:
      treeopt study -m vicuna-7b -d question.jsonl --trials 30 -o tree.json
      treeopt study -m ./m --heads heads/ -p prof.json -d q.jsonl \\
          --storage sqlite:///study.db --trials 40 -o tree.json   # each worker
    """
    from treeopt.workflows.devices import device_choice
    from treeopt.workflows.study import StudySettings, study_to_file

    if data is not None and prompts is not None:
        raise TreeoptError("--prompts is the old name of -d/--data: give one")
    data = data if data is not None else prompts
    if data is None:
        raise TreeoptError("Missing option '--data' / '-d' (see 'treeopt study --help')")
    outcome = study_to_file(StudySettings(
        model=model, data=data, heads=heads, profile=profile, max_prompts=max_prompts,
        max_new_tokens=max_new_tokens, trials=trials, seed=seed, storage=storage,
        study_name=study_name, device=device_choice(device), dtype=dtype,
        max_budget=max_budget, acceptance_model=acceptance_model.value, output=output,
        show_progress=not quiet))
    params = ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                       for key, value in outcome.params.items())
    pruned = f" ({outcome.pruned_trials} infeasible, pruned)" if outcome.pruned_trials else ""
    typer.echo(f"best of {outcome.num_trials} trials{pruned}: trial {outcome.best_trial}, "
               f"{outcome.tokens_per_second:.1f} tokens/s (prefill excluded), "
               f"{outcome.acceleration_rate:.3f} tokens/step ({params})")
    typer.echo(f"this worker ran {outcome.own_trials} of the study's {outcome.num_trials} "
               "trials", err=True)
    if output is not None:
        typer.echo(f"wrote {output}" if outcome.writes_best else
                   f"not writing {output}: the worker that finishes the study's last trial "
                   "writes it", err=True)


def register(app: typer.Typer) -> None:
    """Add ``study`` to the treeopt app."""
    app.command("study")(study)
