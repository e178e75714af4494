"""``treeopt tune --measure``: tune by measured tokens/s with an optuna study.

Each trial builds the profile's optimal tree for a (budget, max depth), decodes
the calibration prompts with ``medusa_runtime.generate`` under Medusa's typical
acceptance (threshold, alpha), and reports new tokens per second of wall time.
The sampler is seeded and the study lives in ``--storage`` (e.g.
``sqlite:///study.db``), so running the command again resumes it. optuna and
torch are imported inside the functions.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from treeopt.errors import TreeoptError, first_line
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

    @property
    def measured_speedup(self) -> float | None:
        """The best trial's tokens/s over plain decoding's, on the same prompts."""
        if not self.plain_tokens_per_second:
            return None
        return self.tokens_per_second / self.plain_tokens_per_second


def run_study(model: Any, heads: Any, prompts: Sequence[Sequence[int]], profile: Any,
              config: StudyConfig, eos_token_id: int | None = None,
              show_progress: bool = True) -> StudyOutcome:
    """Run ``config.trials`` more trials and return the best of the whole study.

    Objective: total new tokens / total wall time over ``prompts`` (token ids),
    maximized; plain decoding of the same prompts, timed the same way, is the baseline
    (``plain_tokens_per_second``, said on stderr with the measured speedup).
    Guarantees the returned tree is the one the best trial measured.
    Parameters the profile cannot build a tree for are pruned, never an error; a
    study with no feasible trial is a one-line TreeoptError. Prompts that leave no
    room in the model's context for ``max_new_tokens`` and the deepest tree are
    dropped before any trial (said on stderr), as ``profile`` and ``autotune`` do;
    none left is a one-line TreeoptError.
    """
    import torch

    from medusa_runtime.acceptance import TypicalAcceptance
    from treeopt.core.tree import Tree
    from treeopt.optimize.build import build_tree

    if config.trials < 1:
        raise TreeoptError(f"--trials must be >= 1, not {config.trials}")
    if config.max_budget < MIN_BUDGET:
        raise TreeoptError(f"--max-budget must be >= {MIN_BUDGET}, not {config.max_budget}")
    if not prompts:
        raise TreeoptError("--measure needs at least one calibration prompt")
    max_depth = min(profile.num_heads, heads.num_heads)
    prompts = prompts_with_room(model, prompts, config.max_new_tokens, max_depth)

    def tree_for(params: dict[str, Any]) -> Any:
        return build_tree(profile, params["budget"], acceptance_model=config.acceptance_model,
                          max_depth=params["max_depth"])

    import optuna

    def objective(trial: Any) -> float:
        params = {
            "budget": trial.suggest_int("budget", MIN_BUDGET, config.max_budget, log=True),
            "max_depth": trial.suggest_int("max_depth", 1, max_depth),
            "posterior_threshold": trial.suggest_float("posterior_threshold",
                                                       *THRESHOLD_RANGE, log=True),
            "posterior_alpha": trial.suggest_float("posterior_alpha", *ALPHA_RANGE),
        }
        try:
            tree = tree_for(params).tree
        except TreeoptError as exc:
            # Infeasible corner of the search space (e.g. a budget above the candidates a
            # shallow depth leaves): prune it, the study goes on.
            trial.set_user_attr("pruned_because", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        acceptance = TypicalAcceptance(params["posterior_threshold"], params["posterior_alpha"])
        torch.manual_seed(config.seed)
        rate, per_step = decode_rate(model, heads, tree, prompts, config.max_new_tokens,
                                     acceptance, eos_token_id)
        trial.set_user_attr("acceleration_rate", per_step)
        return rate

    study = open_study(config)
    study.optimize(objective, n_trials=config.trials, show_progress_bar=show_progress)
    # The baseline every trial is compared with: plain decoding of the same prompts,
    # timed the same way (once per run: the machine may differ from a resumed study's).
    plain, _ = decode_rate(model, None, Tree.empty(heads.num_heads), prompts,
                           config.max_new_tokens, None, eos_token_id)
    pruned = sum(trial.state == optuna.trial.TrialState.PRUNED for trial in study.trials)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise TreeoptError(
            f"all {len(study.trials)} trials were infeasible for this profile "
            f"(top-k {profile.top_k}, {profile.num_heads} heads): lower --max-budget")
    best = study.best_trial
    built = tree_for(best.params)
    print(f"plain decoding: {plain:.1f} tokens/s on the same {len(prompts)} prompts; best "
          f"trial {float(best.value):.1f} tokens/s: measured speedup "
          f"{float(best.value) / plain:.3f}x", file=sys.stderr)
    return StudyOutcome(
        params=dict(best.params), tokens_per_second=float(best.value),
        acceleration_rate=float(best.user_attrs.get("acceleration_rate", 0.0)),
        tree=built.tree, expected_accept_length=built.expected_accept_length,
        num_trials=len(study.trials), pruned_trials=pruned, plain_tokens_per_second=plain,
    )


def decode_rate(model: Any, heads: Any, tree: Any, prompts: Sequence[Sequence[int]],
                max_new_tokens: int, acceptance: Any, eos_token_id: int | None
                ) -> tuple[float, float]:
    """(tokens/s, tokens/step) decoding ``prompts`` with ``tree`` after one untimed warm-up
    call; tokens/s counts every token returned over wall time, prefill included, the
    study's one definition for trials and the plain-decoding baseline alike."""
    from medusa_runtime.decode import generate

    step_heads = None if tree.num_tokens == 1 else heads
    options = {} if acceptance is None else {"acceptance": acceptance}
    generate(model, step_heads, tree, prompts[0], WARMUP_NEW_TOKENS, eos_token_id=eos_token_id,
             **options)
    tokens = steps = 0
    seconds = 0.0
    for prompt in prompts:
        result = generate(model, step_heads, tree, prompt, max_new_tokens,
                          eos_token_id=eos_token_id, **options)
        tokens += len(result.tokens)
        steps += result.steps
        seconds += result.wall_time_s
    return (tokens / seconds if seconds > 0 else 0.0), (tokens / steps if steps else 0.0)


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
        raise TreeoptError(
            f"no calibration prompt leaves room for --max-new-tokens {max_new_tokens} and a "
            f"{max_depth}-deep tree in the model's {context}-token context (lower "
            "--max-new-tokens or give shorter prompts)")
    if len(kept) < len(prompts):
        print(f"note: dropped {len(prompts) - len(kept)} of {len(prompts)} prompts too long "
              f"for --max-new-tokens {max_new_tokens} in the model's {context}-token context",
              file=sys.stderr)
    return kept


def open_study(config: StudyConfig) -> Any:
    """The optuna study of ``config`` (resumed if its storage has it); one-line error if not."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.create_study(
            study_name=config.study_name, storage=config.storage, direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=config.seed), load_if_exists=True,
        )
    except Exception as exc:  # bad URL, missing driver, locked file: all one message
        raise TreeoptError(f"cannot open --storage {config.storage}: {first_line(exc)}") \
            from None


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
    raise TreeoptError(
        f"--measure builds its trees from --profile: give the profile of {model} and its "
        "heads (make one with `treeopt profile`); shipped profiles are for "
        f"{', '.join(shipped_profile_names())} only")


def run_study_cli(*, profile: str | None, model: str | None, heads: str | None,
                  prompts: str | None,
                  max_prompts: int, max_new_tokens: int, trials: int, seed: int,
                  storage: str | None, study_name: str, device: str, dtype: str,
                  max_budget: int | None, acceptance_model: str) -> StudyOutcome:
    """Load model, heads, prompts and profile; run the study; return its best trial.

    Printing it and writing its tree is the caller's (``treeopt.workflows.tuning``).
    """
    if model is None or prompts is None:
        raise TreeoptError("--measure needs --model and --prompts (calibration prompts)")
    from treeopt.files.profile_file import load_profile
    from treeopt.model.calibration import encode_prompts, read_prompts
    from treeopt.model.loading import load_medusa, require_heads

    # Everything that can fail cheaply fails before the model loads.
    config = StudyConfig(trials=trials, seed=seed,
                         max_budget=max_budget or DEFAULT_MAX_BUDGET,
                         max_new_tokens=max_new_tokens, acceptance_model=acceptance_model,
                         storage=storage, study_name=study_name)
    profile = study_profile(profile, model)
    loaded_profile = load_profile(profile)
    texts = read_prompts(prompts, max_prompts=max_prompts, seed=seed)
    require_heads(model, heads)
    open_study(config)
    loaded = load_medusa(model, heads, device=device, dtype=dtype)
    outcome = run_study(loaded.model, loaded.heads, encode_prompts(loaded.tokenizer, texts),
                        loaded_profile, config, eos_token_id=loaded.tokenizer.eos_token_id)
    return replace(outcome, profile=profile)
