"""``treeopt study``: tune by measured tokens/s with an optuna study, shareable by workers.

Each trial builds the profile's optimal tree for a (budget, max depth), decodes
the calibration prompts with ``medusa_runtime.generate`` under Medusa's typical
acceptance (threshold, alpha), and reports new tokens per second of wall time.
The sampler is seeded by trial number and the study lives in a database storage
(``sqlite:///study.db``, or a PostgreSQL URL for workers on several machines), so
running the command again resumes it and several workers share it. optuna and
torch are imported inside the functions.
"""

from __future__ import annotations

import random
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from treeopt.errors import ParameterError, TreeoptError, first_line
from treeopt.optimize.build import MIN_BUDGET

# Search space. Medusa's defaults (threshold 0.09, alpha 0.3 = sqrt(0.09)) sit
# inside both ranges; thresholds span an order of magnitude each way, so they are
# searched on a log scale.
THRESHOLD_RANGE = (0.01, 0.3)
ALPHA_RANGE = (0.05, 0.6)
DEFAULT_MAX_BUDGET = 128
WARMUP_NEW_TOKENS = 4  # an untimed call per trial: kernels loaded, CUDA graphs captured


@dataclass(frozen=True)
class StudyConfig:
    """What ``run_study`` searches over and how."""

    trials: int
    seed: int = 0
    max_budget: int = DEFAULT_MAX_BUDGET
    max_new_tokens: int = 128
    acceptance_model: str = "independent"
    storage: str | None = None
    study_name: str = "treeopt-tune"


@dataclass(frozen=True)
class StudyOutcome:
    """The best trial: its parameters, measured tokens/s and tree."""

    params: dict[str, Any]
    tokens_per_second: float
    acceleration_rate: float
    tree: Any
    expected_accept_length: float
    num_trials: int
    pruned_trials: int = 0
    profile: str = ""  # the profile the trees were built from (run_study_cli sets it)
    plain_tokens_per_second: float | None = None  # plain decoding of the same prompts
    own_trials: int = 0  # trials this worker ran
    best_trial: int = 0  # the best trial's number in the study
    writes_best: bool = True  # this worker finished the study's last trial: it writes -o

    @property
    def measured_speedup(self) -> float | None:
        """The best trial's tokens/s over plain decoding's, on the same prompts."""
        if not self.plain_tokens_per_second:
            return None
        return self.tokens_per_second / self.plain_tokens_per_second


def run_study(model: Any, heads: Any, prompts: Sequence[Sequence[int]], profile: Any,
              config: StudyConfig, eos_token_id: int | None = None,
              show_progress: bool = True) -> StudyOutcome:
    """Take trials of the study until it holds ``config.trials`` finished ones; return its best.

    ``config.trials`` counts the whole study, not this call: several workers on one
    storage finish that many in total (a trial is claimed before it runs, and one
    claimed past the total is dropped as surplus), and a rerun of a finished study
    runs nothing. Proposals are seeded by trial number, so no two workers propose
    the same trial and one worker's study is reproducible.

    Objective: total new tokens / total wall time over ``prompts`` (token ids),
    maximized: the decoding rate with the prefill left out
    (:func:`treeopt.model.speed.decode_speed`, the one definition); plain decoding of
    the same prompts, timed the same way, is the baseline (``plain_tokens_per_second``,
    said on stderr with the measured speedup).
    Guarantees the returned tree is the one the best trial measured, and
    ``writes_best`` is true in exactly one of the workers that share a study: the one
    whose trial finished last. Parameters the profile cannot build a tree for are
    pruned, never an error; a study with no feasible trial is a one-line TreeoptError.
    Prompts that leave no room in the model's context for ``max_new_tokens`` and the
    deepest tree are dropped before any trial (said on stderr); none left is a
    one-line TreeoptError.
    """
    if config.trials < 1:
        raise ParameterError("trials", f"must be >= 1, not {config.trials}")
    if config.max_budget < MIN_BUDGET:
        raise ParameterError("max_budget", f"must be >= {MIN_BUDGET}, not {config.max_budget}")
    if not prompts:
        raise ParameterError("prompts", "hold no calibration prompt")
    max_depth = min(profile.num_heads, heads.num_heads)
    prompts = prompts_with_room(model, prompts, config.max_new_tokens, max_depth)
    measure = _trial_objective(model, heads, prompts, profile, config, max_depth, eos_token_id)
    study = open_study(config)
    mine = _take_trials(study, measure, config.trials, show_progress)
    outcome = _best_of(study, profile, config, mine)
    plain = _plain_speed(model, prompts, config, eos_token_id)
    print(f"plain decoding: {plain:.1f} tokens/s on the same {len(prompts)} prompts; best "
          f"trial {outcome.tokens_per_second:.1f} tokens/s: measured speedup "
          f"{outcome.tokens_per_second / plain:.3f}x", file=sys.stderr)
    return replace(outcome, plain_tokens_per_second=plain)


def _trial_objective(model: Any, heads: Any, prompts: Sequence[Sequence[int]], profile: Any,
                     config: StudyConfig, max_depth: int,
                     eos_token_id: int | None) -> Any:
    """optuna's objective: one trial's parameters, its tree, its measured tokens/s."""
    import optuna
    import torch

    from medusa_runtime.acceptance import TypicalAcceptance
    from treeopt.model.speed import decode_speed

    def objective(trial: Any) -> float:
        params = {
            "budget": trial.suggest_int("budget", MIN_BUDGET, config.max_budget, log=True),
            "max_depth": trial.suggest_int("max_depth", 1, max_depth),
            "posterior_threshold": trial.suggest_float("posterior_threshold",
                                                       *THRESHOLD_RANGE, log=True),
            "posterior_alpha": trial.suggest_float("posterior_alpha", *ALPHA_RANGE),
        }
        try:
            tree = _tree_for(profile, config, params).tree
        except TreeoptError as exc:
            # Infeasible corner of the search space (e.g. a budget above the candidates a
            # shallow depth leaves): prune it, the study goes on.
            trial.set_user_attr("pruned_because", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        acceptance = TypicalAcceptance(params["posterior_threshold"], params["posterior_alpha"])
        torch.manual_seed(config.seed)
        speed = decode_speed(model, heads, tree, prompts, config.max_new_tokens,
                             acceptance=acceptance, eos_token_id=eos_token_id,
                             warmup_new_tokens=WARMUP_NEW_TOKENS)
        trial.set_user_attr("acceleration_rate", speed.tokens_per_step)
        return speed.tokens_per_second

    return objective


def _tree_for(profile: Any, config: StudyConfig, params: dict[str, Any]) -> Any:
    from treeopt.optimize.build import build_tree

    return build_tree(profile, params["budget"], acceptance_model=config.acceptance_model,
                      max_depth=params["max_depth"])


def _plain_speed(model: Any, prompts: Sequence[Sequence[int]], config: StudyConfig,
                 eos_token_id: int | None) -> float:
    """The baseline every trial is compared with: plain decoding of the same prompts,
    timed the same way (once per run: a resumed study's machine may differ)."""
    from treeopt.core.tree import Tree
    from treeopt.model.speed import decode_speed

    return decode_speed(model, None, Tree.empty(), prompts, config.max_new_tokens,
                        eos_token_id=eos_token_id,
                        warmup_new_tokens=WARMUP_NEW_TOKENS).tokens_per_second


class _SurplusTrial(Exception):
    """A trial claimed after the study already had its total: dropped (state FAIL)."""


def _count(study: Any, states: tuple[Any, ...], below: int | None = None) -> int:
    return sum(below is None or trial.number < below
               for trial in study.get_trials(deepcopy=False, states=states))


def _take_trials(study: Any, objective: Any, total: int,
                 show_progress: bool) -> list[int] | None:
    """Run trials until the study holds ``total`` finished or running ones; this worker's
    trial numbers (None: the study had its total before this worker came, a rerun).
    A trial numbered past the total (two workers claimed the last one together)
    stops this worker and is dropped as a failed "surplus" trial."""
    import optuna

    state = optuna.trial.TrialState
    claimed = (state.COMPLETE, state.PRUNED, state.RUNNING)
    mine: list[int] = []

    def claim_then_run(trial: Any) -> float:
        if _count(study, claimed, below=trial.number) >= total:
            trial.set_user_attr("surplus", f"the study already had its {total} trials")
            study.stop()
            raise _SurplusTrial()
        mine.append(trial.number)
        return objective(trial)

    def stop_when_done(study: Any, trial: Any) -> None:
        if _count(study, (state.COMPLETE, state.PRUNED)) >= total:
            study.stop()

    left = total - _count(study, claimed)
    if left <= 0:
        return None
    study.optimize(claim_then_run, n_trials=left, callbacks=[stop_when_done],
                   catch=(_SurplusTrial,), show_progress_bar=show_progress)
    return mine


def _best_of(study: Any, profile: Any, config: StudyConfig,
             mine: list[int] | None) -> StudyOutcome:
    """The study's best trial rebuilt, and whether this worker is the one to write it."""
    import optuna

    state = optuna.trial.TrialState
    finished = study.get_trials(deepcopy=False, states=(state.COMPLETE, state.PRUNED))
    completed = [t for t in finished if t.state == state.COMPLETE]
    if not completed:
        raise TreeoptError(
            f"all {len(finished)} trials were infeasible for this profile "
            f"(top-k {profile.top_k}, {profile.num_heads} heads): lower the largest budget")
    running = _count(study, (state.RUNNING,))
    last = max(finished, key=lambda t: (t.datetime_complete, t.number))
    best = study.best_trial
    built = _tree_for(profile, config, best.params)
    return StudyOutcome(
        params=dict(best.params), tokens_per_second=float(best.value),
        acceleration_rate=float(best.user_attrs.get("acceleration_rate", 0.0)),
        tree=built.tree, expected_accept_length=built.expected_accept_length,
        num_trials=len(finished), pruned_trials=len(finished) - len(completed),
        own_trials=len(mine or ()), best_trial=best.number,
        # The worker that finished the last trial writes; on a rerun of a finished study,
        # the rerun does. A worker whose trials all went to others writes nothing.
        writes_best=running == 0 and (mine is None or last.number in mine),
    )


def prompts_with_room(model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                      max_depth: int) -> list[Sequence[int]]:
    """The prompts whose decoding, ``max_new_tokens`` with trees up to ``max_depth`` deep,
    stays inside the model's context; the rest dropped with one stderr line.

    Checked here, before any trial, so a too-long prompt is not an optuna traceback
    in the middle of the study. None left is a one-line TreeoptError.
    """
    from treeopt.model.profiling import max_positions

    context = max_positions(model)
    if context is None:
        return list(prompts)
    room = context - max_new_tokens - max_depth  # the runtime's last position stays < context
    kept = [prompt for prompt in prompts if len(prompt) <= room]
    if not kept:
        raise ParameterError(
            "max_new_tokens", f"{max_new_tokens} and a {max_depth}-deep tree leave no "
            f"calibration prompt room in the model's {context}-token context (lower it, or "
            "give shorter prompts)")
    if len(kept) < len(prompts):
        print(f"note: dropped {len(prompts) - len(kept)} of {len(prompts)} prompts too long "
              f"for {max_new_tokens} new tokens in the model's {context}-token context",
              file=sys.stderr)
    return kept


# A worker that dies mid-trial leaves it "running": with a database storage every
# worker beats a heartbeat, and a trial silent this long is failed and taken again.
HEARTBEAT_SECONDS = 60
GRACE_SECONDS = 180
OPEN_ATTEMPTS = 4


def trial_seeded_sampler(seed: int) -> Any:
    """A TPE sampler reseeded from (``seed``, trial number) for every trial.

    Workers sharing a study get different trial numbers from the storage, so they
    never propose the same parameters, and a one-worker study is reproducible. TPE
    keeps no state of its own between trials (it reads the study's history), so a
    fresh one per trial loses nothing; ``constant_liar`` keeps parallel workers away
    from the points others are measuring.
    """
    import optuna

    class TrialSeededSampler(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self._number = -1
            self._sampler: Any = None

        def _for(self, trial: Any) -> Any:
            if trial.number != self._number:
                self._number = trial.number
                self._sampler = optuna.samplers.TPESampler(
                    seed=(seed * 1_000_003 + trial.number) % 2**32, constant_liar=True)
            return self._sampler

        def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
            return self._for(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study: Any, trial: Any, space: Any) -> Any:
            return self._for(trial).sample_relative(study, trial, space)

        def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any
                               ) -> Any:
            return self._for(trial).sample_independent(study, trial, name, distribution)

        def before_trial(self, study: Any, trial: Any) -> None:
            self._for(trial).before_trial(study, trial)

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            self._for(trial).after_trial(study, trial, state, values)

    return TrialSeededSampler()


def open_study(config: StudyConfig) -> Any:
    """The optuna study of ``config`` (resumed if its storage has it); one-line error if not.

    ``config.storage`` is a database URL (``sqlite:///study.db``,
    ``postgresql://user:password@host/db``) that every worker of a shared study opens.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    for attempt in range(OPEN_ATTEMPTS):
        try:
            return _create_study(config)
        except Exception as exc:  # bad URL, missing driver, locked file: all one message
            # Workers started together race to create the schema and the study: the
            # loser's error goes away on a second try; a bad URL fails every time.
            if attempt + 1 == OPEN_ATTEMPTS:
                raise ParameterError("storage", f"cannot be opened ({config.storage}): "
                                     f"{first_line(exc)}") from None
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.3)
    raise AssertionError("unreachable")


def _create_study(config: StudyConfig) -> Any:
    import optuna

    with warnings.catch_warnings():  # heartbeats are "experimental" in optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = None if config.storage is None else optuna.storages.RDBStorage(
            config.storage, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS)
    return optuna.create_study(
        study_name=config.study_name, storage=storage, direction="maximize",
        sampler=trial_seeded_sampler(config.seed), load_if_exists=True)


def study_profile(profile: str | None, model: str) -> str:
    """The profile a study builds its trees from: ``profile``, else the shipped profile of
    a registry model of that name (said aloud), else a one-line error.

    A study on one model with trees built from another model's acceptance (the shipped
    vicuna-7b profile, say) searches the wrong trees, so it is never a silent default.
    """
    from treeopt.files.shipped import shipped_profile_names

    if profile is not None:
        return profile
    if model in shipped_profile_names():
        print(f"profile: {model} (shipped, measured for {model}'s published heads)",
              file=sys.stderr)
        return model
    raise ParameterError(
        "profile", f"is needed: the study builds its trees from the profile of {model} and "
        "its heads (make one with `treeopt profile`); shipped profiles are for "
        f"{', '.join(shipped_profile_names())} only")


def run_study_from(*, model: str, heads: str | None, data: str, profile: str | None,
                   max_prompts: int, config: StudyConfig, device: str, dtype: str,
                   show_progress: bool = True) -> StudyOutcome:
    """Load model, heads, prompts and profile; run (a worker of) the study; its best trial.

    Everything that can fail cheaply (profile, prompts, heads, storage) fails before
    the model loads. Writing the tree is the caller's (``treeopt.workflows.study``).
    """
    from treeopt.files.profile_file import load_profile
    from treeopt.model.calibration import encode_prompts, read_prompts
    from treeopt.model.loading import load_medusa, require_heads

    profile = study_profile(profile, model)
    loaded_profile = load_profile(profile)
    texts = read_prompts(data, max_prompts=max_prompts, seed=config.seed)
    require_heads(model, heads)
    open_study(config)
    loaded = load_medusa(model, heads, device=device, dtype=dtype, quiet=not show_progress)
    outcome = run_study(loaded.model, loaded.heads, encode_prompts(loaded.tokenizer, texts),
                        loaded_profile, config, eos_token_id=loaded.tokenizer.eos_token_id,
                        show_progress=show_progress)
    return replace(outcome, profile=profile)
