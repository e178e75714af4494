"""``treeopt tune`` as one call, :func:`tune`: pick sizes and settings from a latency table
or the roofline, for one of the targets in :data:`TUNE_TARGETS`.

* ``medusa`` (:func:`tune_to_files`): reads the latency table(s) and the profile,
  picks the tree size of best predicted speedup
  (:func:`treeopt.optimize.tune.tune_tree`, within ``engine``'s limits) and writes
  the curve, its plot and the tree, with provenance;
* ``draft`` (:func:`tune_draft_to_file`): a draft model's chains and trees, step
  times predicted on the roofline.

A new target (an engine's own knobs, say) is one entry of :data:`TUNE_TARGETS`: the
request fields it reads, and its function from :class:`TuneRequest` to an outcome;
:func:`tune_target` picks it. Tuning by measured tokens/s is ``treeopt study``
(:mod:`treeopt.workflows.study`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from treeopt.core.latency import DEFAULT_CONTEXT, LatencyTable, latency_warnings
from treeopt.core.tree import Tree
from treeopt.errors import ParameterError, TreeoptError
from treeopt.files.shipped import DEFAULT_PROFILE
from treeopt.optimize.draft_tune import DEFAULT_DRAFT_BUDGET, DraftTuneResult
from treeopt.optimize.tune import BatchBest, TunedTree, TuneResult
from treeopt.workflows.provenance import provenance


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
        raise ParameterError("latency", "is needed: a latency table from `treeopt overhead` (or "
                             "tune by measured tokens/s with `treeopt study`)")
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
        raise ParameterError("kernel_overhead_us",
                             f"must be >= 0, not {settings.kernel_overhead_us}")
    if settings.batch < 1:
        raise ParameterError("batch", f"must be positive, not {settings.batch}")
    if settings.context < 0:
        raise ParameterError("context", f"must be >= 0, not {settings.context}")
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
        raise ParameterError("max_budget", f"must be >= 0 (0 or 1: chains only), not "
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
        tool="treeopt tune (draft model)", profile=settings.profile,
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


# ------------------------------------------------------------------ one entry
@dataclass(frozen=True)
class TuneRequest:
    """Everything ``treeopt tune`` may be asked, for any target (None: not given).

    Field names are the verb's option names, so a ParameterError naming one reads as
    its flag. Which fields a target reads is :data:`TUNE_TARGETS`' business.
    """

    latency: tuple[Path, ...] = ()
    profile: str | None = None
    batch: int | None = None
    context: int | None = None
    max_budget: int | None = None
    acceptance_model: str = "independent"
    engine: str | None = None
    output: Path | None = None
    curve: Path | None = None
    plot: Path | None = None
    draft_arch: str | None = None
    arch: str | None = None
    gpu: str | None = None
    max_gamma: int | None = None
    kernel_overhead_us: float = 0.0
    say: Callable[[str], None] = _quiet


def _tune_medusa(request: TuneRequest) -> TuneOutcome:
    return tune_to_files(TuneSettings(
        latency=list(request.latency), profile=request.profile or DEFAULT_PROFILE,
        batch=request.batch, context=request.context, max_budget=request.max_budget,
        acceptance_model=request.acceptance_model, engine=request.engine,
        output=request.output, curve=request.curve, plot=request.plot, say=request.say))


def _tune_draft(request: TuneRequest) -> DraftTuneOutcome:
    if request.profile is None:
        raise ParameterError("profile", "is needed: the draft model's profile (from `treeopt "
                             "profile --draft-model`)")
    for name, what in (("arch", "the target's shape, e.g. llama-7b"),
                       ("gpu", "the GPU to predict for, e.g. a100-80gb-sxm")):
        if getattr(request, name) is None:
            raise ParameterError(name, f"is needed to tune a draft model: {what}")
    return tune_draft_to_file(DraftTuneSettings(
        profile=request.profile, draft_arch=str(request.draft_arch),
        target_arch=str(request.arch), gpu=str(request.gpu),
        batch=1 if request.batch is None else request.batch,
        context=DEFAULT_CONTEXT if request.context is None else request.context,
        max_gamma=request.max_gamma,
        max_budget=DEFAULT_DRAFT_BUDGET if request.max_budget is None else request.max_budget,
        acceptance_model=request.acceptance_model,
        kernel_overhead_us=request.kernel_overhead_us, output=request.output, say=request.say))


@dataclass(frozen=True)
class TuneTarget:
    """One thing ``tune`` can pick settings for: what it is, the request fields it reads
    (any other field given is refused), and the function that tunes it."""

    description: str
    fields: frozenset[str]
    run: Callable[[TuneRequest], Any]


_COMMON = frozenset({"profile", "batch", "context", "max_budget", "acceptance_model",
                     "output", "say"})
TUNE_TARGETS: dict[str, TuneTarget] = {
    "medusa": TuneTarget("Medusa trees by a latency table",
                         _COMMON | {"latency", "engine", "curve", "plot"}, _tune_medusa),
    "draft": TuneTarget("a draft model on the roofline",
                        _COMMON | {"draft_arch", "arch", "gpu", "max_gamma",
                                   "kernel_overhead_us"}, _tune_draft),
}


def tune_target(request: TuneRequest) -> str:
    """The target a request tunes: ``draft`` with a draft shape, an engine's own target
    when one is registered under its name, else ``medusa``."""
    if request.draft_arch is not None:
        return "draft"
    if request.engine is not None and request.engine in TUNE_TARGETS:
        return request.engine
    return "medusa"


def tune(request: TuneRequest) -> Any:
    """Tune the request's target (:func:`tune_target`); its outcome.

    Raises a ParameterError naming the first field given that the target does not
    read, before any work; the target's own errors otherwise.
    """
    name = tune_target(request)
    target = TUNE_TARGETS[name]
    defaults = TuneRequest()
    for item in fields(TuneRequest):
        given = getattr(request, item.name) != getattr(defaults, item.name)
        if given and item.name not in target.fields:
            raise ParameterError(item.name, f"does not apply when tuning {target.description}")
    return target.run(request)
