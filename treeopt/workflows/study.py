"""``treeopt study`` as one call: tune by measured tokens/s, one worker of a shared study.

:func:`study_to_file` runs (or resumes, or joins) the optuna study of
:mod:`treeopt.model.study` and writes the study's best tree once: by the worker
that finished the study's last trial (the others say where it goes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from treeopt.workflows.provenance import provenance

if TYPE_CHECKING:
    from treeopt.model.study import StudyOutcome

DEFAULT_STUDY_NAME = "treeopt-study"


@dataclass(frozen=True)
class StudySettings:
    """What :func:`study_to_file` decodes with, how long the study searches, where its tree goes.

    Attributes:
        model, heads: as ``load_medusa`` takes them (heads default: the model's own).
        data: calibration prompts (MT-Bench ``question.jsonl``, ``.txt``, a dataset).
        profile: the profile trees are built from (None: a registry model's shipped one).
        max_prompts: prompts decoded per trial (a seeded subset of ``data``).
        max_new_tokens: tokens generated per prompt.
        trials: trials in the whole study, all workers together.
        seed: the sampler's (with the trial number) and the prompt subset's seed.
        storage: optuna database URL shared by workers (``sqlite:///study.db``,
            ``postgresql://user:password@host/db``); None: in memory, one worker.
        study_name: the study's name in ``storage``.
        device, dtype: where and how the model runs.
        max_budget: largest tree searched (None: ``DEFAULT_MAX_BUDGET``).
        acceptance_model: the builder's acceptance model.
        output: the best tree's file (written by one worker only).
        show_progress: progress bars.
    """

    model: str
    data: str
    heads: str | None = None
    profile: str | None = None
    max_prompts: int = 8
    max_new_tokens: int = 128
    trials: int = 20
    seed: int = 0
    storage: str | None = None
    study_name: str = DEFAULT_STUDY_NAME
    device: str = "cpu"
    dtype: str = "auto"
    max_budget: int | None = None
    acceptance_model: str = "independent"
    output: Path | None = None
    show_progress: bool = True


def redacted(url: str | None) -> str | None:
    """A storage URL without its password (``postgresql://u:secret@h/db`` -> ``u:***@``),
    fit for a file's provenance."""
    import re

    return None if url is None else re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def study_to_file(settings: StudySettings) -> StudyOutcome:
    """Run this worker's share of the study; write the best trial's tree when this worker
    finished the study's last trial (``outcome.writes_best``), atomically.

    Raises TreeoptError (a ParameterError naming the setting) before the model loads
    on a bad profile, prompts, heads or storage.
    """
    from treeopt.model.speed import SPEED_DEFINITION
    from treeopt.model.study import DEFAULT_MAX_BUDGET, StudyConfig, run_study_from

    config = StudyConfig(
        trials=settings.trials, seed=settings.seed,
        max_budget=settings.max_budget or DEFAULT_MAX_BUDGET,
        max_new_tokens=settings.max_new_tokens, acceptance_model=settings.acceptance_model,
        storage=settings.storage, study_name=settings.study_name)
    outcome = run_study_from(
        model=settings.model, heads=settings.heads, data=settings.data,
        profile=settings.profile, max_prompts=settings.max_prompts, config=config,
        device=settings.device, dtype=settings.dtype, show_progress=settings.show_progress)
    if settings.output is not None and outcome.writes_best:
        from treeopt.files.tree_file import write_tree

        write_tree(settings.output, outcome.tree, outcome.expected_accept_length, provenance(
            tool="treeopt study", profile=outcome.profile, model=settings.model,
            prompts=str(settings.data), device=settings.device, **outcome.params,
            measured_tokens_per_second=round(outcome.tokens_per_second, 3),
            speed_definition=SPEED_DEFINITION,
            measured_acceleration_rate=round(outcome.acceleration_rate, 4),
            plain_tokens_per_second=None if outcome.plain_tokens_per_second is None
            else round(outcome.plain_tokens_per_second, 3),
            measured_speedup=None if outcome.measured_speedup is None
            else round(outcome.measured_speedup, 4),
            trials=outcome.num_trials, best_trial=outcome.best_trial,
            storage=redacted(settings.storage), study_name=settings.study_name))
    return outcome
