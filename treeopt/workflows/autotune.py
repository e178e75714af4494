"""From a model, its Medusa heads and some prompts to a tuned, engine-ready tree: one call.

:func:`autotune` runs these stages, each writing its files into the output folder:

1. ``profile``: split the prompts into calibration and held-out ones (or take
   ``holdout_data``), profile the heads on both (:func:`treeopt.model.profiling.profile_model`;
   greedy targets cached beside each profile, an interrupted profile resumes);
2. ``build``: the nested trees of the calibration profile, weighted by decoding
   steps (:func:`treeopt.optimize.build.build_tree`, with the engine's limits), and
   the held-out check: tokens per step replayed on the held-out prompts
   (:mod:`treeopt.optimize.replay`) for the built trees, the published trees and a
   tree built on the held-out prompts themselves;
3. ``latency``: the verification step's latency per tree size, measured here with
   the runtime (:func:`treeopt.model.measure.measure_latency`) or predicted for a GPU
   (:func:`treeopt.cost.predict.predict_latency`), with sanity checks
   (:func:`treeopt.core.latency.latency_warnings`);
4. ``tune``: the best tree per batch size (:func:`treeopt.optimize.tune.tune_tree`),
   one tree per bucket of batch sizes sharing it;
5. ``export``: each bucket's tree in the engine's format
   (:func:`treeopt.files.engines.export_text`);
6. ``verify`` (measured runs only): decode the held-out prompts with plain
   decoding, the tuned tree and ``mc_sim_7b_63``; the measured speedup;
7. ``report``: ``report.md`` and its pictures (:mod:`treeopt.workflows.report`).

Finished stages, and every file the run wrote, are recorded in
``autotune.state.json``; running again continues after the last finished stage.
The folder's rules (never overwrite a file autotune did not write, inputs compared
by content, which settings a rerun may change) are in
:mod:`treeopt.workflows.autotune_state` and docs/tuning.md.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from treeopt.core.atomic import atomic_write_text
from treeopt.core.dtypes import loadable_dtype
from treeopt.core.latency import DEFAULT_REPEATS, DEFAULT_WARMUP
from treeopt.errors import ParameterError, TreeoptError
from treeopt.files.engines import ENGINE_TARGETS, FORMATS
from treeopt.workflows.autotune_state import (
    INPUT_SETTINGS,
    STAGES,
    STATE_FILE,
    STATE_FORMAT,
    compare,
    first_stage_to_redo,
    flag_of,
    foreign_files,
    input_identity,
    refuse_foreign_files,
)

# Where the tree goes: the bundled runtime (treeopt's own tree file) or an export format.
ENGINES = ("bundled", *FORMATS)
# The builder's limits for each engine that has some (the others take any tree), and
# each format's file suffix: from the one record per target (treeopt.files.engines).
BUILDER_ENGINE = {name: ENGINE_TARGETS[name].builder for name in FORMATS
                  if ENGINE_TARGETS[name].builder is not None}
EXPORT_SUFFIX = {name: ENGINE_TARGETS[name].suffix for name in FORMATS}
# Tree sizes timed: dense where small trees win (a small model or a CPU), sparse to 64,
# the size of the published trees the held-out check compares against.
DEFAULT_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
# The Medusa paper's default tree: the measured comparison in ``verify``.
COMPARED_TREE = "mc_sim_7b_63"
DEFAULT_HOLDOUT_FRACTION = 0.2
# Decoding rounds in ``verify``: every tree decodes every held-out prompt once per
# round, trees interleaved, and each tree's fastest round is kept (load on a shared
# machine only ever slows a round down).
DEFAULT_DECODE_ROUNDS = 3


@dataclass(frozen=True)
class AutotuneSettings:
    """Everything an autotune run depends on (all but ``output`` and ``progress``
    must match for a rerun to continue a run).

    Attributes:
        model: registry name, folder or hub id of the base model.
        data: calibration prompts (MT-Bench ``question.jsonl``, ``.txt``, a dataset).
        output: folder for every file of the run.
        heads: Medusa heads (folder or hub id); default: the model's published ones.
        holdout_data: held-out prompts; default: ``holdout_fraction`` of ``data``.
        engine: where the tree goes: ``bundled`` (medusa_runtime, treeopt JSON),
            ``medusa``, ``trtllm``, ``vllm`` or ``eagle``.
        gpu: predict latency for this GPU (roofline model) instead of measuring here.
        arch: model shape for ``gpu`` predictions (default: the model's config).
        device, dtype: where and how the model runs here.
        batches: batch sizes to tune for.
        contexts: context lengths timed; default: the held-out prompts' mean length
            plus half of ``max_new_tokens`` (the mean cache length while decoding them).
        sizes: tree sizes (tokens per step, root included) timed and built up to.
        threads: CPU threads for timing and decoding (default 1: steady timings).
        compile_step: time and decode the ``torch.compile``d step (faster on CPU, where
            the eager step is mostly Python overhead, but each size compiles first,
            minutes on a loaded machine; on CUDA the step is a CUDA graph anyway).
        verify: decode the held-out prompts to measure the speedup (measured runs).
        redo: redo this stage and every later one (not part of the run's settings).
    """

    model: str
    data: str
    output: Path
    heads: str | None = None
    holdout_data: str | None = None
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION
    engine: str = "bundled"
    gpu: str | None = None
    arch: str | None = None
    device: str = "cpu"
    dtype: str = "auto"
    batches: tuple[int, ...] = (1,)
    contexts: tuple[int, ...] | None = None
    sizes: tuple[int, ...] = DEFAULT_SIZES
    max_prompts: int | None = None
    max_new_tokens: int = 128
    top_k: int = 10
    acceptance_model: str = "joint"
    chat_template: bool = True
    seed: int = 0
    threads: int | None = None
    warmup: int = DEFAULT_WARMUP
    repeats: int = DEFAULT_REPEATS
    compile_step: bool = False
    verify: bool = True
    decode_rounds: int = DEFAULT_DECODE_ROUNDS
    progress: bool = True
    redo: str | None = None

    def check(self) -> None:
        """One-line TreeoptError for a bad setting (before anything loads)."""
        if self.engine not in ENGINES:
            raise ParameterError("engine", f"must be one of {', '.join(ENGINES)}, not "
                                 f"{self.engine!r}")
        if self.holdout_data is None and not 0.0 < self.holdout_fraction < 1.0:
            raise TreeoptError("the held-out fraction must be strictly between 0 and 1, not "
                               f"{self.holdout_fraction}")
        for name in ("batches", "sizes", "contexts"):
            values = getattr(self, name)
            if values is not None and (not values or min(values) < 1):
                raise ParameterError(name, f"takes positive integers, not {list(values)}")
        if 1 not in self.sizes or max(self.sizes) < 2:
            raise ParameterError("sizes", "must include 1 (plain decoding) and a size >= 2")
        for name in ("max_new_tokens", "top_k", "repeats", "decode_rounds"):
            if getattr(self, name) < 1:
                raise ParameterError(name, f"must be >= 1, not {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ParameterError("threads", f"must be >= 1, not {self.threads}")
        if self.redo is not None and self.redo not in STAGES:
            raise ParameterError("redo", f"must be one of {', '.join(STAGES)}, not {self.redo!r}")
        if self.redo == "verify" and not (self.measured and self.verify):
            raise ParameterError("redo", "verify needs a measured run that verifies (no GPU "
                                 "prediction, verification on)")

    def fingerprint(self) -> dict[str, Any]:
        """The settings a run's results depend on, JSON-able (output and progress left out)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)
                if f.name not in ("output", "progress", "redo")}

    def inputs(self) -> dict[str, dict[str, Any]]:
        """Each input's identity: resolved path and content digest when local, else its name."""
        return {name: input_identity(getattr(self, name)) for name in INPUT_SETTINGS}

    @property
    def measured(self) -> bool:
        """True when latency is measured here (no ``gpu`` to predict for)."""
        return self.gpu is None


@dataclass
class AutotuneResult:
    """What a run produced: the report, each stage's summary, what ran this time."""

    directory: Path
    report: Path
    stages: dict[str, dict[str, Any]]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def headline(self) -> str:
        return str(self.stages.get("report", {}).get("headline", ""))


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return value


# ------------------------------------------------------------------- state
def state_path(directory: Path) -> Path:
    return Path(directory) / STATE_FILE


def read_state(directory: Path, settings: AutotuneSettings) -> dict[str, Any]:
    """The run's state in ``directory``: a new one, or the recorded run to continue.

    A recorded run with no finished stage is replaced (it blocks nothing). Otherwise
    its settings must match, inputs by content (see
    :mod:`treeopt.workflows.autotune_state`); a change of only ``--rounds``,
    ``--threads`` or ``--verify``, or ``settings.redo``, drops the stages to redo
    (``state["redo"]`` says which and why). Anything else: a one-line TreeoptError
    naming the flags.
    """
    path = state_path(directory)
    fresh: dict[str, Any] = {"format": STATE_FORMAT, "settings": settings.fingerprint(),
                             "inputs": settings.inputs(), "files": [], "stages": {}}
    if not path.exists():
        return fresh
    from treeopt.files.jsondoc import read_json

    state = read_json(path, "autotune state")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TreeoptError(f"{path} is not a {STATE_FORMAT} file: delete it or use another -o")
    # A state from before files were recorded: its folder's autotune names are its own.
    fresh["files"] = list(state.get("files", foreign_files(Path(directory), [])))
    if not state.get("stages"):  # a run that never finished a stage blocks nothing
        if compare(state.get("settings", {}), fresh["settings"], state.get("inputs", {}),
                   fresh["inputs"]):
            fresh["stale"] = [name for name in fresh["files"] if name.endswith(".partial.npz")]
        return fresh
    changed = compare(state.get("settings", {}), fresh["settings"], state.get("inputs", {}),
                      fresh["inputs"])
    first = first_stage_to_redo(changed, settings.redo, Path(directory))
    # The recorded settings stay as first spelled; only the changes a rerun may make land.
    fresh["settings"] = {**state["settings"], **{key: fresh["settings"][key] for key in changed}}
    fresh["inputs"] = state.get("inputs", fresh["inputs"])
    fresh["stages"] = dict(state["stages"])
    if first is not None:
        fresh["stages"] = {stage: summary for stage, summary in state["stages"].items()
                           if STAGES.index(stage) < STAGES.index(first)}
        fresh["redo"] = {"from": first, "changed": [flag_of(key) for key in changed]}
    return fresh


def _state_text(state: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in state.items() if k not in ("redo", "stale")},
                      indent=1) + "\n"


def _write_state(directory: Path, state: dict[str, Any]) -> None:
    """Write the state unless the file already says exactly that (a kept run stays untouched)."""
    path = state_path(directory)
    text = _state_text(state)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def _read_json(path: Path) -> Any:
    from treeopt.files.jsondoc import read_json

    return read_json(path, "autotune file")


# --------------------------------------------------------------- the pipeline
def autotune(settings: AutotuneSettings,
             log: Callable[[str], None] | None = None) -> AutotuneResult:
    """Run (or continue) the whole pipeline in ``settings.output``; see the module docstring.

    Guarantees: every stage's files are written atomically and the stage is
    recorded as finished only after them, so an interruption at any point loses
    at most the unfinished stage (and a profile keeps its partial work); a rerun
    with the same settings skips every finished stage and loads the model only if
    a remaining stage needs it. Predicted figures are labelled "predicted" in every
    file and picture.
    """
    settings.check()
    say = log if log is not None else (lambda line: print(line, file=sys.stderr))
    directory = Path(settings.output)
    if directory.exists() and not directory.is_dir():
        raise TreeoptError(f"cannot write into {directory}: it is a file, give a folder")
    check_inputs(settings)  # every input, before the state file is written
    state = read_state(directory, settings)  # before any loading: a mismatch fails fast
    refuse_foreign_files(directory, state["files"])
    directory.mkdir(parents=True, exist_ok=True)
    _write_state(directory, state)  # unchanged when a finished run is only continued
    for name in state.pop("stale", []):  # a replaced run's partial profile: not this run's
        (directory / name).unlink(missing_ok=True)
    if "redo" in state:
        changed = state["redo"]["changed"]
        why = f"{', '.join(changed)} changed" if changed else f"{settings.redo} asked to be redone"
        say(f"{why}: redoing {state['redo']['from']} and every later stage")
    run = _Run(settings, directory, state, say)
    result = AutotuneResult(directory, directory / "report.md", state["stages"])
    todo = [stage for stage in STAGES if stage != "verify" or
            (settings.measured and settings.verify)]
    for index, stage in enumerate(todo, start=1):
        if stage in state["stages"]:
            say(f"[{index}/{len(todo)}] {stage}: finished earlier, kept")
            result.skipped.append(stage)
            continue
        say(f"[{index}/{len(todo)}] {stage} ...")
        started = time.perf_counter()
        summary = getattr(run, f"stage_{stage}")()
        summary["seconds"] = round(time.perf_counter() - started, 2)
        state["stages"][stage] = summary
        _write_state(directory, state)
        result.ran.append(stage)
        say(f"[{index}/{len(todo)}] {stage}: done in {summary['seconds']:.1f} s")
    return result


def check_inputs(settings: AutotuneSettings) -> None:
    """One-line TreeoptError for an input that cannot work, before anything is written:
    the dtype, the device, a local -m/--heads/-d/--holdout-data/--arch that does not
    exist (a path-looking name is never taken for a hub id), a model without heads,
    and local prompt files with too few prompts to hold some out."""
    if settings.gpu is None and settings.dtype != "auto":
        loadable_dtype(settings.dtype)  # the one dtype check (a ParameterError)
    for name, what in (("model", "model folder"), ("heads", "Medusa heads folder"),
                       ("arch", "architecture file or folder")):
        value = getattr(settings, name)
        if value is not None and not Path(value).exists() and _looks_like_path(value):
            raise ParameterError(name, f"{what} {value} does not exist")
        if name != "arch" and value is not None and Path(value).is_dir() and \
                not (Path(value) / "config.json").is_file():
            raise ParameterError(name, f"{value} holds no config.json: not a "
                                 f"{'model' if name == 'model' else 'Medusa heads'} folder")
    from treeopt.model.calibration import read_prompts
    from treeopt.model.loading import require_heads, resolve_device

    if settings.heads is None:
        require_heads(settings.model, None)
    resolve_device(settings.device)  # no CUDA here: one line, and no folder left behind
    for name in ("data", "holdout_data"):
        value = getattr(settings, name)
        if value is not None and (Path(value).is_file() or _looks_like_path(value)):
            prompts = read_prompts(value, max_prompts=settings.max_prompts if name == "data"
                                   else None, seed=settings.seed)
            if name == "data" and settings.holdout_data is None and len(prompts) < 2:
                raise ParameterError("data", f"{value} holds {len(prompts)} prompt: too few to "
                                     "hold some out (give more, or separate held-out prompts)")


def _stable_id(name: str) -> str:
    """A local input's resolved path (however it was spelled), else the name itself."""
    return str(Path(name).resolve()) if Path(name).exists() else name


def _looks_like_path(name: str) -> bool:
    """A name only a path would have: absolute, ./ or ../, a trailing slash, a file
    suffix, or more than one slash (hub ids have exactly one)."""
    return (Path(name).is_absolute() or name.startswith(".") or name.endswith(("/", "\\"))
            or name.count("/") > 1 or Path(name).suffix.lower() in (".json", ".jsonl", ".txt"))


class _Run:
    """The stages of one run; the model loads lazily, once, only when a stage needs it."""

    def __init__(self, settings: AutotuneSettings, directory: Path, state: dict[str, Any],
                 say: Callable[[str], None]) -> None:
        self.settings = settings
        self.dir = directory
        self.state = state
        self.say = say
        self._loaded: tuple[Any, Any, Any] | None = None

    # ------------------------------------------------------------- helpers
    def path(self, name: str) -> Path:
        return self.dir / name

    def claim(self, *names: str) -> None:
        """Record ``names`` as this run's files before writing them (a rerun may then
        overwrite them, and only them)."""
        new = [name for name in names if name not in self.state["files"]]
        if new:
            self.state["files"].extend(new)
            _write_state(self.dir, self.state)

    def out(self, name: str) -> Path:
        """The path of a file this stage writes, claimed first."""
        self.claim(name)
        return self.path(name)

    def loaded(self) -> tuple[Any, Any, Any]:
        """(model, tokenizer, heads), loaded on first use."""
        if self._loaded is None:
            from treeopt.model.loading import load_medusa

            self.say(f"  loading {self.settings.model} with heads {self.heads_id()}")
            loaded = load_medusa(self.settings.model, self.settings.heads,
                                 device=self.settings.device, dtype=self.settings.dtype,
                                 quiet=not self.settings.progress)
            self._loaded = (loaded.model, loaded.tokenizer, loaded.heads)
        return self._loaded

    def heads_id(self) -> str:
        from treeopt.model.loading import require_heads

        return require_heads(self.settings.model, self.settings.heads)

    def budget(self) -> int:
        """The largest tree built: the largest size timed, within the engine's limit."""
        from treeopt.optimize.build import engine_max_budget

        limit = engine_max_budget(self.builder_engine(),
                                  self.state["stages"]["profile"]["num_heads"])
        budget = max(self.settings.sizes)
        return budget if limit is None else min(budget, limit)

    def builder_engine(self) -> str | None:
        return BUILDER_ENGINE.get(self.settings.engine)

    def profiles(self) -> tuple[Any, Any]:
        from treeopt.files.profile_file import load_profile

        return (load_profile(self.path("profile.json")),
                load_profile(self.path("holdout-profile.json")))

    def cpu_threads(self) -> int | None:
        from treeopt.model.measure import CPU_TIMING_THREADS

        if str(self.settings.device).startswith("cuda"):
            return None
        return self.settings.threads or CPU_TIMING_THREADS

    # -------------------------------------------------------------- stages
    def stage_profile(self) -> dict[str, Any]:
        from treeopt.model.calibration import encode_prompts, read_prompts, split_held_out
        from treeopt.model.profiling import ProfileSettings, max_positions
        from treeopt.workflows.profiling import profile_prompts

        s = self.settings
        texts = read_prompts(s.data, max_prompts=s.max_prompts, seed=s.seed)
        if s.holdout_data is not None:
            calibration, held_out = texts, read_prompts(s.holdout_data, seed=s.seed)
        else:
            calibration, held_out = split_held_out(texts, s.holdout_fraction, s.seed)
        if not calibration or not held_out:
            raise ParameterError("data", f"{s.data} holds {len(texts)} prompt(s): too few to "
                                 "hold some out (give more, or held-out prompts of their own)")
        model, tokenizer, heads = self.loaded()
        # Room for the whole continuation and the largest tree in the model's context,
        # so the profile, the timing and the decoding all see the same new tokens.
        context = max_positions(model)
        room = None if context is None else context - s.max_new_tokens - max(s.sizes)

        def fitting(prompts: Sequence[str]) -> list[list[int]]:
            ids = encode_prompts(tokenizer, prompts, chat_template=s.chat_template)
            return [p for p in ids if room is None or len(p) <= room]

        calibration_ids, held_ids = fitting(calibration), fitting(held_out)
        if not calibration_ids or not held_ids:
            raise ParameterError(
                "max_new_tokens", f"{s.max_new_tokens} and a {max(s.sizes)}-token tree leave no "
                f"prompt room in the model's {context}-token context")
        profile_settings = ProfileSettings(top_k=s.top_k, max_new_tokens=s.max_new_tokens)
        heads_id = self.heads_id()
        summary: dict[str, Any] = {}
        for name, ids in (("profile.json", calibration_ids), ("holdout-profile.json", held_ids)):
            self.say(f"  profiling {len(ids)} prompts -> {name}")
            self.claim(name, *(f"{name}.{end}" for end in ("ranks.npz", "targets.json",
                                                           "partial.npz")))
            profile = profile_prompts(model, tokenizer, heads, ids, self.path(name),
                                      profile_settings, model_id=_stable_id(s.model),
                                      heads_id=_stable_id(heads_id), resume=True,
                                      progress=s.progress)
            summary[name] = {"prompts": len(ids), "positions": profile.num_positions}
        _write_json(self.out("holdout-prompts.json"), held_ids)
        _write_json(self.out("calibration-prompts.json"), calibration_ids)
        mean_length = statistics.fmean(len(p) for p in held_ids)
        summary.update({
            "calibration_prompts": len(calibration_ids), "held_out_prompts": len(held_ids),
            "dropped_prompts": len(calibration) + len(held_out) - len(calibration_ids)
            - len(held_ids),
            "num_heads": int(heads.num_heads),
            "decode_context": round(mean_length + s.max_new_tokens / 2),
        })
        return summary

    def stage_build(self) -> dict[str, Any]:
        from treeopt.files.shipped import shipped_tree_names, shipped_tree_path
        from treeopt.files.tree_file import load_tree, write_tree
        from treeopt.optimize.build import build_tree
        from treeopt.optimize.replay import nested_tokens_per_step, tokens_per_step

        s = self.settings
        profile, holdout = self.profiles()
        budget = self.budget()
        engine = self.builder_engine()
        built = build_tree(profile, budget, s.acceptance_model, engine=engine, weighting="steps")
        # What the runtime would measure on the held-out prompts, every nested size.
        if built.branching is None:
            held = nested_tokens_per_step(built.order, holdout.sequences).tolist()
        else:
            held = [tokens_per_step(built.tree_at(n), holdout) for n in range(1, budget + 1)]
        in_sample = build_tree(holdout, budget, s.acceptance_model, engine=engine,
                               weighting="steps")
        write_tree(self.out(f"built-{budget}.json"), built.tree, built.expected_accept_length,
                   {"tool": "treeopt autotune", "profile": "profile.json", "weighting": "steps",
                    "acceptance_model": s.acceptance_model, "engine": s.engine})
        published = []
        for name in shipped_tree_names():
            tree = load_tree(name)
            if tree.depth > profile.num_heads or tree.num_tokens > budget:
                continue
            published.append({
                "name": name, "num_tokens": tree.num_tokens,
                # Only FasterDecoding's trees (reference/) are published; tuned/ holds
                # treeopt's own shipped tuned trees.
                "published": shipped_tree_path(name).parent.name == "reference",
                "held_out_tokens_per_step": round(tokens_per_step(tree, holdout), 4),
                "built_same_size": round(held[tree.num_tokens - 1], 4),
            })
        return {
            "budget": budget,
            "weighting": built.weighting,
            "calibration_tokens_per_step": [round(v, 4) for v in built.curve],
            "held_out_tokens_per_step": [round(v, 4) for v in held],
            # A tree built on the held-out prompts themselves, replayed on them: an
            # in-sample figure for the builder's heuristic, not a bound on every tree.
            "in_sample_tokens_per_step": round(in_sample.expected_accept_length, 4),
            "published": published,
        }

    def stage_latency(self) -> dict[str, Any]:
        from treeopt.core.latency import latency_warnings
        from treeopt.files.latency_file import write_latency

        s = self.settings
        decode_context = self.state["stages"]["profile"]["decode_context"]
        contexts = list(s.contexts) if s.contexts else [decode_context]
        sizes = sorted(n for n in set(s.sizes) if n <= self.budget())
        if s.measured:
            from treeopt.model.measure import measure_latency

            model, _, heads = self.loaded()
            dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
            # One statistic for every measured table (the fastest sample; see
            # treeopt.core.latency.TIMING_STATISTIC), as `treeopt overhead` keeps.
            table = measure_latency(model, heads, s.model, list(s.batches), contexts, sizes,
                                    s.device, dtype, s.warmup, s.repeats,
                                    show_progress=s.progress, compile_step=s.compile_step,
                                    threads=self.cpu_threads())
        else:
            from treeopt.cost.arch import get_arch
            from treeopt.cost.gpus import resolve_gpu
            from treeopt.cost.predict import predict_latency

            if s.gpu.lower() == "auto":  # type: ignore[union-attr]
                from treeopt.model.measure import gpu_auto

                gpu = gpu_auto()
            else:
                gpu = resolve_gpu(s.gpu)
            arch = get_arch(s.arch or s.model)
            dtype = "bfloat16" if s.dtype == "auto" else s.dtype
            table = predict_latency(arch, gpu, list(s.batches), contexts, sizes, dtype)
        warnings = latency_warnings(table)
        for line in warnings:
            self.say(f"  warning: {line}")
        write_latency(self.out("latency.json"), table)
        return {"source": table.source, "describe": table.describe(), "contexts": contexts,
                "warnings": warnings}

    def stage_tune(self) -> dict[str, Any]:
        from treeopt.files.latency_file import load_latency
        from treeopt.files.tree_file import write_tree
        from treeopt.optimize.tune import curve_rows

        s = self.settings
        profile, _ = self.profiles()
        table = load_latency(self.path("latency.json"))
        context = table.nearest_context(self.state["stages"]["profile"]["decode_context"])
        predicted = "" if table.source == "measured" else "predicted "
        rows, buckets = [], []
        for batch in table.batches:
            tuned = self._tune(profile, table, batch, context)
            best, tree = tuned.result.best, tuned.tree
            rows.append({
                "batch": batch, "context": context, "num_tokens": best.num_tokens,
                "tokens_per_step": round(tuned.score, 4), "overhead": round(best.overhead, 4),
                "predicted_speedup": round(tuned.score / best.overhead, 4),
                "limited_by": tuned.result.limited_by,
                "curve": curve_rows(tuned.result, table.latency_curve(batch, context)),
            })
            if batch == 1 and s.measured and s.verify and best.num_tokens > 1:
                tree, rows[-1]["measured_choice"] = self._measured_choice(profile, table,
                                                                         context, best)
                point = tuned.result.points[tree.num_tokens - 1]
                rows[-1].update(num_tokens=tree.num_tokens,
                                tokens_per_step=round(point.expected_accept_length, 4),
                                overhead=round(point.overhead, 4),
                                predicted_speedup=round(point.speedup, 4))
            paths = [list(p) for p in tree.paths]
            if buckets and buckets[-1]["paths"] == paths:
                buckets[-1]["batches"].append(batch)
            else:
                buckets.append({"batches": [batch], "paths": paths, "row": len(rows) - 1,
                                "tree": tree})
        for bucket in buckets:
            tree = bucket.pop("tree")
            row = rows[bucket.pop("row")]
            name = _bucket_name(bucket["batches"])
            bucket.update(num_tokens=tree.num_tokens, file=None)
            if tree.num_tokens > 1:
                bucket["file"] = f"tree-{name}.json"
                write_tree(self.out(bucket["file"]), tree, row["tokens_per_step"], {
                    "tool": "treeopt autotune", "batches": bucket["batches"],
                    "context": context, "latency": table.describe(),
                    f"{predicted}speedup": row["predicted_speedup"],
                    "engine": s.engine, "acceptance_model": s.acceptance_model})
                self.say(f"  batch {name}: n* = {tree.num_tokens}, {predicted or 'predicted '}"
                         f"speedup {row['predicted_speedup']:.3f}x -> {bucket['file']}")
            else:
                self.say(f"  batch {name}: no tree beats plain decoding here")
        _write_json(self.out("tune.json"), {"rows": rows, "buckets": buckets})
        return {"context": context, "buckets": [
            {k: v for k, v in b.items() if k != "paths"} for b in buckets]}

    def _measured_choice(self, profile: Any, table: Any, context: int,
                         best: Any) -> tuple[Any, dict[str, Any]]:
        """The fastest of the builder's trees up to n* when decoding calibration prompts.

        The timed step leaves out per-step work of the decoding loop that grows with the
        tree (on a small model on a CPU, the predicted n* ran slower than plain decoding),
        so the sizes the table measured up to n* are decoded on calibration prompts (never
        the held-out ones) and the fastest is kept; plain decoding when none beats it.
        """
        import random

        from treeopt.core.tree import Tree
        from treeopt.optimize.build import build_tree

        s = self.settings
        built = build_tree(profile, best.num_tokens, s.acceptance_model,
                           engine=self.builder_engine())
        sizes = sorted({n for n in table.measured_sizes(1, context) if 1 < n < best.num_tokens}
                       | {best.num_tokens})
        trees = {"1": Tree.empty(profile.num_heads),
                 **{str(n): built.tree_at(n) for n in sizes}}
        calibration = _read_json(self.path("calibration-prompts.json"))
        count = min(len(calibration), self.state["stages"]["profile"]["held_out_prompts"])
        prompts = random.Random(s.seed).sample(calibration, count)
        runs = self._decode(trees, prompts, "decoding calibration prompts per size")
        fastest = max(runs, key=lambda name: (runs[name]["tokens_per_s"], -int(name)))
        self.say(f"  decoded: fastest is {fastest} tokens/step "
                 f"({runs[fastest]['tokens_per_s']:.0f} tokens/s; predicted n* "
                 f"{best.num_tokens}: {runs[str(best.num_tokens)]['tokens_per_s']:.0f})")
        return trees[fastest], {"prompts": count, "tokens_per_s": {
            name: run["tokens_per_s"] for name, run in runs.items()}, "chosen": int(fastest)}

    def _decode(self, trees: dict[str, Any], prompts: list[list[int]],
                description: str) -> dict[str, dict[str, Any]]:
        """Decode ``prompts`` with every tree, rounds interleaved; each tree's fastest round.

        Returns per tree: tokens/s (fastest round) and its median over rounds, tokens
        per verification step, the tokens decoded (the last round's) and the fastest
        round's new tokens and seconds per prompt (``per_prompt``, for intervals);
        tokens/s as :func:`treeopt.model.speed.decode_speed` defines it (prefill excluded).
        """
        import torch
        from tqdm import tqdm

        from treeopt.model.speed import decode_speed

        s = self.settings
        model, tokenizer, heads = self.loaded()
        eos = getattr(tokenizer, "eos_token_id", None)
        rates: dict[str, list[float]] = {name: [] for name in trees}
        per_prompt: dict[str, list[tuple[list[int], list[float]]]] = {name: [] for name in trees}
        per_step: dict[str, float] = {}
        outputs: dict[str, list[list[int]]] = {}
        threads = self.cpu_threads()
        previous = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            with tqdm(total=s.decode_rounds * len(trees) * len(prompts), desc=description,
                      unit="prompt", disable=not s.progress) as bar:
                for _ in range(s.decode_rounds):
                    for name, tree in trees.items():
                        speed = decode_speed(model, heads, tree, prompts, s.max_new_tokens,
                                             eos_token_id=eos, compile_step=s.compile_step,
                                             on_prompt=bar.update)
                        rates[name].append(speed.tokens_per_second)
                        per_prompt[name].append(([p[0] for p in speed.per_prompt],
                                                 [p[2] for p in speed.per_prompt]))
                        per_step[name] = speed.tokens_per_step
                        outputs[name] = speed.outputs
        finally:
            torch.set_num_threads(previous)
        # The fastest round of each tree: load on a shared machine only slows a round.
        fastest = {name: max(range(len(rates[name])), key=rates[name].__getitem__)
                   for name in trees}
        return {name: {"tokens_per_s": rates[name][fastest[name]],
                       "tokens_per_s_median": statistics.median(rates[name]),
                       "tokens_per_step": per_step[name], "tokens": outputs[name],
                       "per_prompt": per_prompt[name][fastest[name]]}
                for name in trees}

    def _tune(self, profile: Any, table: Any, batch: int, context: int) -> Any:
        """The tuned tree at (batch, context), built within the engine's limits."""
        from treeopt.optimize.tune import tune_tree

        return tune_tree(profile, table, batch, context, self.budget(),
                         self.settings.acceptance_model, engine=self.builder_engine())

    def stage_export(self) -> dict[str, Any]:
        from treeopt.files.engines import export_text, static_tree_warning
        from treeopt.files.tree_file import load_tree

        s = self.settings
        written = []
        warning = static_tree_warning(s.engine)
        if warning:
            self.say(f"  warning: {warning}")
        for bucket in self.state["stages"]["tune"]["buckets"]:
            if bucket["file"] is None:
                continue
            if s.engine == "bundled":  # medusa_runtime reads treeopt's own tree file
                written.append(bucket["file"])
                continue
            text = export_text(load_tree(self.path(bucket["file"])), s.engine)
            name = f"{s.engine}-{_bucket_name(bucket['batches'])}{EXPORT_SUFFIX[s.engine]}"
            atomic_write_text(self.out(name), text + "\n")
            written.append(name)
            self.say(f"  wrote {name}")
        return {"engine": s.engine, "files": written, "warning": warning}

    def stage_verify(self) -> dict[str, Any]:
        from treeopt.core.tree import Tree
        from treeopt.files.tree_file import load_tree

        s = self.settings
        _, _, heads = self.loaded()
        prompts = _read_json(self.path("holdout-prompts.json"))
        first = self.state["stages"]["tune"]["buckets"][0]  # decoding here: one sequence
        trees: dict[str, Any] = {"plain": Tree.empty(heads.num_heads)}
        if first["file"] is not None:
            trees[f"tuned (n={first['num_tokens']})"] = load_tree(self.path(first["file"]))
        compared = load_tree(COMPARED_TREE)
        if compared.depth <= heads.num_heads:
            trees[COMPARED_TREE] = compared
        decoded = self._decode(trees, prompts, "decoding held-out prompts")
        runs = {name: _verified_run(tree, decoded[name], decoded["plain"], s.seed)
                for name, tree in trees.items()}
        for name, run in runs.items():
            low, high = run["speedup_interval"]
            self.say(f"  {name}: {run['tokens_per_s']:.0f} tokens/s, "
                     f"{run['tokens_per_step']:.3f} tokens/step, "
                     f"measured speedup {run['measured_speedup']:.3f}x "
                     f"(95% interval {low:.3f}-{high:.3f})")
        threads = self.cpu_threads()
        device = str(s.device) if threads is None else (
            f"cpu, {threads} thread{'s' if threads > 1 else ''}")
        verify = {"device": device, "prompts": len(prompts), "rounds": s.decode_rounds,
                  "max_new_tokens": s.max_new_tokens, "compiled_step": s.compile_step,
                  "runs": runs}
        _write_json(self.out("verify.json"), verify)
        return verify

    def stage_report(self) -> dict[str, Any]:
        from treeopt.workflows.report import REPORT_FILES, write_report

        self.claim(*REPORT_FILES)
        return write_report(self.dir, self.settings.fingerprint(), self.state["stages"])


def _verified_run(tree: Any, run: dict[str, Any], plain: dict[str, Any],
                  seed: int) -> dict[str, Any]:
    """One tree's row of ``verify.json``: its rates, the speedup over plain decoding and
    that speedup's 95% interval (paired bootstrap over the held-out prompts, seeded)."""
    from treeopt.core.bootstrap import DEFAULT_RESAMPLES, speedup_interval

    low, high = speedup_interval(*run["per_prompt"], *plain["per_prompt"], seed=seed)
    return {
        "num_tokens": tree.num_tokens,
        "tokens_per_s": round(run["tokens_per_s"], 2),
        "tokens_per_s_median": round(run["tokens_per_s_median"], 2),
        "tokens_per_step": round(run["tokens_per_step"], 4),
        "measured_speedup": round(run["tokens_per_s"] / plain["tokens_per_s"], 4),
        "speedup_interval": [round(low, 4), round(high, 4)],
        "interval": f"95%, bootstrap over prompts ({DEFAULT_RESAMPLES} resamples, seed {seed})",
        "same_tokens_as_plain": run["tokens"] == plain["tokens"],
    }


def _bucket_name(batches: Sequence[int]) -> str:
    """``b1`` for one batch size, ``b4-16`` for a run of them."""
    return f"b{batches[0]}" if len(batches) == 1 else f"b{batches[0]}-{batches[-1]}"


def settings_from(**values: Any) -> AutotuneSettings:
    """:class:`AutotuneSettings` from keyword values, ``None`` meaning the default."""
    known = {f.name for f in fields(AutotuneSettings)}
    unknown = set(values) - known
    if unknown:
        raise TreeoptError(f"unknown autotune setting(s): {', '.join(sorted(unknown))}")
    return AutotuneSettings(**{k: v for k, v in values.items() if v is not None})


__all__ = ["AutotuneResult", "AutotuneSettings", "autotune", "settings_from"]
