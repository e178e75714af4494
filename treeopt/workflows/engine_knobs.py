"""``treeopt tune --engine sglang|vllm-spec|trtllm-pytorch``: the best knobs per batch size.

From a draft-model profile (and, for tree knobs, its expansion: ``profile
--draft-model D --expand K,D``) every setting the engine takes is replayed
(:mod:`treeopt.optimize.beam_replay`; chains from the rank vectors), each step
predicted on the roofline (``S`` draft passes + verification of ``N`` tokens per
sequence, :func:`treeopt.cost.drafts.predict_beam_step`), and the best per batch
size written in the engine's own words, validated against its schema: SGLang
``--config`` YAML (one file per batch size whose best differs), vLLM
``--speculative-config`` JSON with ``num_speculative_tokens_per_batch_size``,
TensorRT-LLM ``speculative_config`` YAML with ``draft_len_schedule``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treeopt.core.expansion import BeamSetting
from treeopt.errors import TreeoptError

DEFAULT_MAX_KNOB_TOKENS = 16  # largest N scored for tree knobs (SGLang's Llama default is 8)


@dataclass(frozen=True)
class EngineKnobSettings:
    """What to tune: the engine, the profile, both shapes, the GPU, the batch sizes."""

    engine: str
    profile: str
    draft_arch: str
    target_arch: str
    gpu: str
    batches: tuple[int, ...] = (1, 4, 16)
    context: int = 1024
    max_tokens: int = DEFAULT_MAX_KNOB_TOKENS
    draft_model: str | None = None  # the draft's path as the engine should load it
    output: Path | None = None
    plot: Path | None = None
    say: Callable[[str], None] = field(default=lambda line: None)


@dataclass(frozen=True)
class EngineKnobOutcome:
    choices: list[Any]  # BatchChoice per batch size
    configs: dict[str, dict[str, Any]]  # file name -> config written (or that would be)
    table: list[dict[str, Any]]
    cost_label: str


def _rates(settings: EngineKnobSettings, takes: str) -> dict[BeamSetting, float]:
    """Replayed tokens/step of every setting the engine takes."""
    from treeopt.files.engines import check_pairing
    from treeopt.files.expansion_file import load_expansion
    from treeopt.files.profile_file import load_profile
    from treeopt.optimize.beam_replay import beam_tokens_per_step
    from treeopt.optimize.engine_tune import chain_settings, engine_settings
    from treeopt.optimize.replay import tokens_per_step

    counters = _vllm_counters(settings.profile)
    if counters is not None:
        if takes != "chain":
            raise TreeoptError(f"{settings.profile} holds vLLM's chain counters: they tune a "
                               "chain (--engine vllm-spec or trtllm-pytorch), not tree knobs")
        return {s: counters.tokens_per_step(s.steps)
                for s in chain_settings(len(counters.accepted_per_position))}
    profile = load_profile(settings.profile)
    check_pairing(settings.engine, profile.provenance.get("drafter") or "medusa")
    if profile.sequences is None:
        raise TreeoptError(f"{settings.profile} has no rank vectors: tune --engine replays "
                           "a measured `treeopt profile --draft-model` profile")
    if takes == "chain":
        from treeopt.core.tree import Tree

        return {s: tokens_per_step(Tree.chain(s.steps), profile)
                for s in chain_settings(profile.num_heads)}
    expansion = load_expansion(settings.profile, profile)
    grid = engine_settings(takes, expansion.d_max, expansion.k_max, settings.max_tokens)
    return beam_tokens_per_step(expansion, profile.sequences, grid)


def _vllm_counters(name: str) -> Any:
    """vLLM's Prometheus counters if ``name`` is such a text file, else None."""
    from treeopt.files.prometheus import looks_like_vllm_metrics, parse_vllm_spec_counters

    path = Path(name)
    if not path.is_file() or path.suffix == ".json":
        return None
    text = path.read_text(errors="replace")
    return parse_vllm_spec_counters(text, name) if looks_like_vllm_metrics(text) else None


def tune_engine_knobs(settings: EngineKnobSettings) -> EngineKnobOutcome:
    """Score the engine's knob grid per batch size; write its config(s), table and plot."""
    from treeopt.cost.arch import get_arch
    from treeopt.cost.drafts import predict_beam_step
    from treeopt.files.engines import check_pairing
    from treeopt.optimize.engine_tune import choose_per_batch
    from treeopt.workflows.devices import gpu_spec

    target = check_pairing(settings.engine, "draft_model")
    if not settings.batches or min(settings.batches) < 1:
        raise TreeoptError(f"--batch must list sizes >= 1, not {settings.batches}")
    draft, model, gpu = (get_arch(settings.draft_arch), get_arch(settings.target_arch),
                         gpu_spec(settings.gpu))
    takes = "chain" if settings.engine in ("vllm-spec", "trtllm-pytorch") else target.takes
    rates = _rates(settings, takes)

    def step(s: BeamSetting, batch: int) -> float:
        return predict_beam_step(model, draft, s.steps, s.topk, s.num_tokens, gpu, batch,
                                 settings.context).step_s

    def plain(batch: int) -> float:
        return predict_beam_step(model, draft, 0, 1, 1, gpu, batch, settings.context).plain_s

    choices = choose_per_batch(rates, sorted(settings.batches), step, plain)
    configs = _configs(settings, choices)
    table = [{"batch": c.batch, "best": None if c.best is None else c.best.name,
              "predicted_tokens_per_s": round(c.best_point.tokens_per_second, 3),
              "plain_tokens_per_s": round(c.plain_tokens_per_second, 3),
              "predicted_speedup": round(c.speedup, 4),
              "tokens_per_step": round(c.best_point.tokens_per_step, 4),
              "advice": "switch speculation off" if c.best is None else "speculate"}
             for c in choices]
    label = f"predicted: {gpu.name} datasheet roofline"
    _write(settings, configs, table, choices, label)
    return EngineKnobOutcome(choices, configs, table, label)


def _configs(settings: EngineKnobSettings, choices: list[Any]) -> dict[str, dict[str, Any]]:
    """The engine's config(s), checked against its schema, by file name."""
    from treeopt.files.engines import (
        check_knob_config,
        sglang_server_args,
        trtllm_pytorch_config,
        vllm_spec_config,
    )

    stem = "knobs" if settings.output is None else settings.output.name
    if settings.engine == "vllm-spec":
        schedule = [(c.batch, 0 if c.best is None else c.best.steps) for c in choices]
        configs = {stem: vllm_spec_config(schedule, "draft_model", settings.draft_model)}
    elif settings.engine == "trtllm-pytorch":
        configs = {stem: trtllm_pytorch_config([(c.batch, c.best) for c in choices],
                                               "draft_model", settings.draft_model)}
    else:  # sglang: one setting per server; a file per batch size whose best differs
        distinct = {c.best for c in choices if c.best is not None}
        configs = {}
        for c in choices:
            if c.best is None:
                continue
            name = stem if len(distinct) == 1 else _bucket_name(stem, c.batch)
            configs.setdefault(name, sglang_server_args(c.best, "draft_model",
                                                        settings.draft_model))
    for config in configs.values():
        check_knob_config(settings.engine, config)
    return configs


def _bucket_name(stem: str, batch: int) -> str:
    base, dot, suffix = stem.rpartition(".")
    return f"{base}.batch{batch}.{suffix}" if dot else f"{stem}.batch{batch}"


def _write(settings: EngineKnobSettings, configs: dict[str, dict[str, Any]],
           table: list[dict[str, Any]], choices: list[Any], label: str) -> None:
    from treeopt.core.atomic import atomic_write_text, output_set

    if settings.output is None and settings.plot is None:
        return
    with output_set():
        if settings.output is not None:
            folder = settings.output.parent
            for name, config in configs.items():
                atomic_write_text(folder / name, _config_text(settings.engine, config))
            atomic_write_text(Path(f"{settings.output}.table.json"), json.dumps(
                {"engine": settings.engine, "cost": label, "profile": settings.profile,
                 "draft_arch": settings.draft_arch, "target_arch": settings.target_arch,
                 "gpu": settings.gpu, "context": settings.context, "batches": table},
                indent=2) + "\n")
        if settings.plot is not None:
            from treeopt.pictures.knob_plots import plot_knob_heatmap

            plot_knob_heatmap(choices, settings.plot, f"{settings.engine}: {label}, "
                              f"{settings.draft_arch} drafting for {settings.target_arch}")


def _config_text(engine: str, config: dict[str, Any]) -> str:
    if engine == "vllm-spec":
        return json.dumps(config) + "\n"
    import yaml

    return yaml.safe_dump(config, sort_keys=False)
