"""``treeopt tune`` as one call each: by a latency table (predicted speedup), by measurement,
or for a draft model (:func:`tune_draft_to_file`, roofline step times).

:func:`tune_to_files` reads the latency table(s) and the profile, picks the tree
size of best predicted speedup (:func:`treeopt.optimize.tune.tune_tree`) and
writes the curve, its plot and the tree, with provenance.
:func:`tune_by_measurement` runs the optuna study over real decoding
(:mod:`treeopt.model.study`) and writes the best trial's tree.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from treeopt.core.latency import DEFAULT_CONTEXT, LatencyTable, latency_warnings
from treeopt.core.tree import Tree
from treeopt.errors import TreeoptError
from treeopt.files.shipped import DEFAULT_PROFILE
from treeopt.optimize.draft_tune import DEFAULT_DRAFT_BUDGET, DraftTuneResult
from treeopt.optimize.tune import BatchBest, TunedTree, TuneResult
from treeopt.workflows.provenance import provenance

if TYPE_CHECKING:
    from treeopt.model.study import StudyOutcome


def _quiet(line: str) -> None:
    """Progress lines go nowhere unless a caller passes its own ``say``."""


@dataclass(frozen=True)
class TuneSettings:
    """What :func:`tune_to_files` tunes for and writes (None: not written)."""

    latency: list[Path]
    profile: str = DEFAULT_PROFILE
    batch: int | None = None
    context: int | None = None
    max_budget: int | None = None
    acceptance_model: str = "independent"
    engine: str | None = None
    output: Path | None = None
    curve: Path | None = None
    plot: Path | None = None
    say: Callable[[str], None] = _quiet  # which latency file is used, once it proved good


@dataclass(frozen=True)
class TuneOutcome:
    """The tuned tree and what it was tuned on.

    Attributes:
        latency_file: the latency file used (a measured one beats a prediction).
        passed_over: the other latency files given.
        table: its latency table.
        tuned: the speedup curve, best size and its tree.
        batches: the best size per batch size at the tuned context.
        provenance: what the written files say about their origin.
        vllm_schedule: with engine ``vllm-medusa``, the predicted best chain per batch
            size as vLLM's ``num_speculative_tokens_per_batch_size``.
    """

    latency_file: str
    passed_over: list[str]
    table: LatencyTable
    tuned: TunedTree
    batches: list[BatchBest]
    provenance: dict[str, Any]
    vllm_schedule: Any = None


def tune_provenance(settings: TuneSettings, latency_file: str, table: LatencyTable,
                    tuned: TunedTree) -> dict[str, Any]:
    """The provenance of a tuned tree: profile, setting, predicted speedup, latency source."""
    best = tuned.result.best
    return provenance(
        tool="treeopt tune", profile=settings.profile, acceptance_model=settings.acceptance_model,
        budget=best.num_tokens, batch=tuned.result.batch, context=tuned.result.context,
        predicted_speedup=round(best.speedup, 4), overhead=round(best.overhead, 4),
        latency_source=table.source, latency_device=table.device, latency_arch=table.arch,
        latency_dtype=table.dtype, latency_file=Path(latency_file).name,
        weighting=tuned.weighting, engine=settings.engine,
    )


def plot_title(settings: TuneSettings, table: LatencyTable, result: TuneResult) -> str:
    """The tune plot's title: profile, device and setting."""
    return f"{settings.profile} on {table.device}, batch {result.batch}, context {result.context}"


def tune_to_files(settings: TuneSettings) -> TuneOutcome:
    """Pick the tree size of best predicted speedup; write the curve, plot and tree asked for.

    Raises TreeoptError, before writing anything, when a tree file is asked for and
    no tree beats plain decoding at the setting (best size 1).
    """
    from treeopt.files.latency_file import load_latency, prefer_measured
    from treeopt.files.profile_file import load_profile
    from treeopt.optimize.tune import batch_view, curve_rows, tune_tree

    if not settings.latency:
        raise TreeoptError("give --latency FILE (make one with `treeopt overhead`), or --measure")
    tables = [(name, load_latency(name)) for name in dict.fromkeys(map(str, settings.latency))]
    latency_file, table = prefer_measured(tables)
    passed_over = [name for name, _ in tables if name != latency_file]
    try:  # the table must cover the setting tuned for: its gaps are errors naming the file
        table.latency_curve(*table.setting(settings.batch, settings.context))
    except TreeoptError as exc:
        raise TreeoptError(f"{latency_file}: {exc}") from None
    tuned = tune_tree(load_profile(settings.profile), table, settings.batch, settings.context,
                      settings.max_budget, settings.acceptance_model, engine=settings.engine)
    result = tuned.result
    if settings.output is not None and result.best.num_tokens == 1:
        raise TreeoptError(
            f"at batch {result.batch}, context {result.context} no tree beats plain "
            f"decoding on {table.device} (best size 1): nothing to write"
        )
    # Said once the inputs proved good: a bad table or profile is one error line alone.
    settings.say(f"latency: {latency_file}: {table.describe()}")
    if passed_over:
        settings.say(f"  (preferred over {', '.join(passed_over)})")
    for line in latency_warnings(table):
        settings.say(f"warning: {line}")
    batches = batch_view(tuned.accept_curve, table, result.context, tuned.max_budget)
    schedule = None
    if settings.engine == "vllm-medusa":
        from treeopt.files.engines import vllm_batch_schedule
        from treeopt.optimize.tune import chain_lengths_per_batch

        schedule = vllm_batch_schedule(chain_lengths_per_batch(batches))
    facts = tune_provenance(settings, latency_file, table, tuned)
    rows = curve_rows(result, table.latency_curve(result.batch, result.context))
    from treeopt.core.atomic import output_set

    with output_set():  # curve, plot and tree: all written, or none
        if settings.curve is not None:
            from treeopt.files.curve_file import write_curve

            write_curve(settings.curve, rows, facts)
        if settings.plot is not None:
            from treeopt.pictures.plots import plot_curve

            plot_curve(rows, settings.plot, plot_title(settings, table, result))
        if settings.output is not None:
            from treeopt.files.tree_file import write_tree

            write_tree(settings.output, tuned.tree, tuned.score, facts)
    return TuneOutcome(latency_file, passed_over, table, tuned, batches, facts, schedule)


@dataclass(frozen=True)
class MeasuredTuneSettings:
    """What :func:`tune_by_measurement` decodes with, how long it searches, and where the tree
    goes (see :class:`treeopt.model.study.StudyConfig`)."""

    model: str | None
    prompts: str | None
    profile: str | None = None  # None: the model's shipped profile, else an error
    heads: str | None = None
    max_prompts: int = 8
    max_new_tokens: int = 128
    trials: int = 20
    seed: int = 0
    storage: str | None = None
    study_name: str = "treeopt-tune"
    device: str = "cuda"
    dtype: str = "auto"
    max_budget: int | None = None
    acceptance_model: str = "independent"
    output: Path | None = None


def tune_by_measurement(settings: MeasuredTuneSettings) -> StudyOutcome:
    """Run (or resume) the optuna study over measured tokens/s; write the best trial's tree."""
    from treeopt.model.study import run_study_cli

    outcome = run_study_cli(
        profile=settings.profile, model=settings.model, heads=settings.heads,
        prompts=settings.prompts, max_prompts=settings.max_prompts,
        max_new_tokens=settings.max_new_tokens, trials=settings.trials, seed=settings.seed,
        storage=settings.storage, study_name=settings.study_name, device=settings.device,
        dtype=settings.dtype, max_budget=settings.max_budget,
        acceptance_model=settings.acceptance_model)
    if settings.output is not None:
        from treeopt.files.tree_file import write_tree

        write_tree(settings.output, outcome.tree, outcome.expected_accept_length, provenance(
            tool="treeopt tune --measure", profile=outcome.profile, model=settings.model,
            prompts=str(settings.prompts), device=settings.device, **outcome.params,
            measured_tokens_per_second=round(outcome.tokens_per_second, 3),
            measured_acceleration_rate=round(outcome.acceleration_rate, 4),
            plain_tokens_per_second=None if outcome.plain_tokens_per_second is None
            else round(outcome.plain_tokens_per_second, 3),
            measured_speedup=None if outcome.measured_speedup is None
            else round(outcome.measured_speedup, 4),
            trials=outcome.num_trials, storage=settings.storage))
    return outcome


@dataclass(frozen=True)
class DraftTuneSettings:
    """What :func:`tune_draft_to_file` tunes: a draft profile, the two shapes, the GPU."""

    profile: str
    draft_arch: str
    target_arch: str
    gpu: str
    batch: int = 1
    context: int = DEFAULT_CONTEXT
    max_gamma: int | None = None
    max_budget: int = DEFAULT_DRAFT_BUDGET
    acceptance_model: str = "independent"
    kernel_overhead_us: float = 0.0
    output: Path | None = None
    say: Callable[[str], None] = _quiet  # a warning when the profile is not a draft model's


@dataclass(frozen=True)
class DraftTuneOutcome:
    """The scored chains and trees (all predicted), the chosen one and its provenance."""

    result: DraftTuneResult
    cost_label: str  # what predicted the step times
    provenance: dict[str, Any]


def draft_step_predictor(settings: DraftTuneSettings) -> tuple[Callable[[Tree], float], str]:
    """``step_seconds(tree)`` of a draft step on the roofline, and a label of the ceilings.

    ``kernel_overhead_us`` charges a fixed cost per operator (eager launches) on top of
    the GPU's datasheet ceilings, as ``benchmarks/draft_gamma_table.py`` does.
    """
    from treeopt.cost.arch import get_arch
    from treeopt.cost.drafts import predict_draft_step
    from treeopt.cost.roofline import DeviceProfile
    from treeopt.workflows.devices import gpu_spec

    if not 0.0 <= settings.kernel_overhead_us < math.inf:
        raise TreeoptError(f"--kernel-overhead-us must be >= 0, not {settings.kernel_overhead_us}")
    if settings.batch < 1:
        raise TreeoptError(f"--batch must be positive, not {settings.batch}")
    if settings.context < 0:
        raise TreeoptError(f"--context must be >= 0, not {settings.context}")
    draft, target = get_arch(settings.draft_arch), get_arch(settings.target_arch)
    gpu = gpu_spec(settings.gpu)
    label = f"{gpu.name} datasheet roofline"
    device = None
    if settings.kernel_overhead_us:
        label += f" + {settings.kernel_overhead_us:g} us/operator"
        device = DeviceProfile(label, gpu.peak_tflops, gpu.bandwidth_gbs,
                               settings.kernel_overhead_us)

    def step_seconds(tree: Tree) -> float:
        return predict_draft_step(target, draft, tree, gpu, settings.batch, settings.context,
                                  device_profile=device).step_s

    return step_seconds, label


def tune_draft_to_file(settings: DraftTuneSettings) -> DraftTuneOutcome:
    """Score every draft chain and built draft tree on the roofline; write the best one.

    The best of the best chain and the best tree (:attr:`DraftTuneResult.best`) is
    written as ``treeopt.tree/1`` with its provenance (shapes, GPU, setting, gamma for a
    chain, predicted figures). Raises TreeoptError, before writing, on bad input or when
    a tree file is asked for and nothing beats plain decoding.
    """
    from treeopt.files.profile_file import load_profile
    from treeopt.optimize.draft_tune import tune_draft

    step_seconds, label = draft_step_predictor(settings)
    if settings.max_budget < 0:
        raise TreeoptError(f"--max-budget must be >= 0 (0 or 1: chains only), not "
                           f"{settings.max_budget}")
    profile = load_profile(settings.profile)
    if profile.provenance.get("drafter") != "draft_model":
        settings.say(f"warning: {settings.profile} was not made by `treeopt profile "
                     f"--draft-model`: its ranks are read as a draft model's")
    result = tune_draft(profile, step_seconds, step_seconds(Tree.chain(0)), settings.max_gamma,
                        settings.max_budget, settings.acceptance_model)
    best = result.best
    if settings.output is not None and best.num_tokens == 1:
        raise TreeoptError(f"no draft chain or tree beats plain decoding at batch "
                           f"{settings.batch}, context {settings.context} (predicted): "
                           f"nothing to write")
    is_chain = best.tree.paths == Tree.chain(best.draft_passes).paths  # by shape alone
    facts = provenance(
        tool="treeopt tune --draft-arch", profile=settings.profile,
        drafter=profile.provenance.get("drafter"), draft_model=profile.provenance.get(
            "draft_model"), draft_arch=settings.draft_arch, target_arch=settings.target_arch,
        gpu=settings.gpu, cost=f"predicted: {label}", batch=settings.batch,
        context=settings.context, acceptance_model=settings.acceptance_model,
        kind="chain" if is_chain else "tree", gamma=best.draft_passes if is_chain else None,
        draft_passes=best.draft_passes, budget=best.num_tokens,
        predicted_tokens_per_step=round(best.expected_accept_length, 4),
        predicted_step_ms=round(best.step_seconds * 1e3, 4),
        predicted_speedup=round(best.speedup, 4))
    if settings.output is not None:
        from treeopt.files.tree_file import write_tree

        write_tree(settings.output, best.tree, best.expected_accept_length, facts)
    return DraftTuneOutcome(result, label, facts)
