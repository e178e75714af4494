"""Knob targets: one record per engine target, configs in the engine's words, checked."""

from __future__ import annotations

import pytest

from treeopt.core.expansion import BeamSetting
from treeopt.errors import TreeoptError
from treeopt.files.engines import (
    ENGINE_TARGETS,
    FORMATS,
    KNOB_TARGETS,
    check_knob_config,
    check_pairing,
    sglang_flags,
    sglang_server_args,
    trtllm_pytorch_config,
    vllm_spec_config,
)
from treeopt.optimize.build import ENGINES
from treeopt.workflows.autotune import EXPORT_SUFFIX


def test_every_target_has_one_record_with_its_sources() -> None:
    assert set(FORMATS) | set(KNOB_TARGETS) == set(ENGINE_TARGETS)
    assert KNOB_TARGETS == ("sglang", "vllm-spec", "trtllm-pytorch")
    for target in ENGINE_TARGETS.values():
        assert target.checked_against and target.rules and target.suffix.startswith(".")
        assert all("@" in source or "PR #" in source for source in target.checked_against)
    # The facts other modules used to hold come from the records now.
    assert EXPORT_SUFFIX["trtllm-triton"] == ".txt" and ENGINES == ("trtllm", "vllm",
                                                                    "vllm-medusa")


def test_sglang_flags_and_rules() -> None:
    args = sglang_server_args(BeamSetting(3, 4, 8), "draft_model", "./d")
    check_knob_config("sglang", args)
    assert sglang_flags(args) == (
        "--speculative-algorithm STANDALONE --speculative-draft-model-path ./d "
        "--speculative-num-steps 3 --speculative-eagle-topk 4 --speculative-num-draft-tokens 8")
    with pytest.raises(TreeoptError, match="must be 4 for 3 steps, topk 1"):
        check_knob_config("sglang", {**args, "speculative_eagle_topk": 1})
    with pytest.raises(TreeoptError, match="sglang config"):
        check_knob_config("sglang", {**args, "speculative_num_steps": 0})


def test_vllm_schedule_and_trtllm_schedule() -> None:
    config = vllm_spec_config([(1, 4), (4, 3), (16, 0)], "draft_model", "./d")
    assert config == {"method": "draft_model", "model": "./d", "num_speculative_tokens": 4,
                      "num_speculative_tokens_per_batch_size": [[1, 3, 4], [4, 15, 3],
                                                                [16, 16, 0]]}
    check_knob_config("vllm-spec", config)
    bad = {**config, "num_speculative_tokens_per_batch_size": [[2, 3, 4]]}
    with pytest.raises(TreeoptError, match="start at 1"):
        check_knob_config("vllm-spec", bad)
    trt = trtllm_pytorch_config([(1, BeamSetting(4, 1, 5)), (4, BeamSetting(2, 1, 3)),
                                 (16, None)], "draft_model", "./d")
    assert trt["speculative_config"]["draft_len_schedule"] == {1: 4, 4: 2, 16: 0}
    check_knob_config("trtllm-pytorch", trt)
    eagle = trtllm_pytorch_config([(1, BeamSetting(3, 4, 10))], "eagle", "./e")
    check_knob_config("trtllm-pytorch", eagle)
    eagle["speculative_config"]["max_total_draft_tokens"] = 13  # > topK * max_draft_len
    with pytest.raises(TreeoptError, match="dynamic_tree_max_topK \\* max_draft_len"):
        check_knob_config("trtllm-pytorch", eagle)


def test_unsupported_pairing_is_one_line_saying_what_the_engine_takes() -> None:
    with pytest.raises(TreeoptError) as caught:
        check_pairing("sglang", "medusa")
    assert str(caught.value) == ("sglang does not run medusa drafters: it takes knobs for "
                                 "draft model, eagle (Medusa heads: not supported)")
    with pytest.raises(TreeoptError, match="unknown engine target 'tgi'"):
        check_pairing("tgi", "draft_model")
    assert check_pairing("vllm-spec", "draft_model").takes == "chain"


def test_best_per_batch_and_switch_off_below_break_even() -> None:
    from treeopt.optimize.engine_tune import choose_per_batch, engine_settings

    one, two = BeamSetting(1, 1, 2), BeamSetting(2, 1, 3)
    rates = {one: 1.8, two: 2.4}
    # Plain steps cost 1 s; a step costs 1.2 s (+0.1 per extra draft) at batch 1, and
    # grows with the batch as verification turns compute-bound.
    choices = choose_per_batch(rates, [1, 8],
                               lambda s, b: (1.1 + 0.1 * s.steps) * (1 if b == 1 else 2.0),
                               lambda b: 1.0)
    assert choices[0].best == two and choices[0].speedup == pytest.approx(2.4 / 1.3)
    # At batch 8: 1.8 / 2.4 and 2.4 / 2.6 tokens per plain step: speculation loses.
    assert choices[1].best is None and choices[1].speedup < 1
    grid = engine_settings("knobs", 2, 2, 5)
    assert BeamSetting(2, 1, 3) in grid and BeamSetting(2, 1, 2) not in grid
    assert max(s.num_tokens for s in grid) == 5
    assert engine_settings("chain", 3, 4, 16) == [BeamSetting(k, 1, k + 1) for k in (1, 2, 3)]


METRICS = """\
# HELP vllm:spec_decode_num_drafts Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 1000.0
vllm:spec_decode_num_drafts_total{engine="1",model_name="m"} 1000.0
# TYPE vllm:spec_decode_num_accepted_tokens_per_pos counter
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="0"} 800.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="1"} 500.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="2"} 200.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="1",model_name="m",position="0"} 800.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="1",model_name="m",position="1"} 500.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="1",model_name="m",position="2"} 200.0
vllm:num_requests_running{engine="0",model_name="m"} 3.0
"""


def test_vllm_prometheus_counters_tune_k_per_batch(tmp_path) -> None:
    import json

    from treeopt.files.prometheus import parse_vllm_spec_counters
    from treeopt.workflows.engine_knobs import EngineKnobSettings, tune_engine_knobs

    counters = parse_vllm_spec_counters(METRICS)
    assert counters.drafts == 2000 and counters.accepted_per_position == (1600, 1000, 400)
    assert [counters.tokens_per_step(k) for k in range(4)] == [1.0, 1.8, 2.3, 2.5]
    with pytest.raises(TreeoptError, match="up to 3 drafts"):
        counters.tokens_per_step(4)
    with pytest.raises(TreeoptError, match="must not rise"):
        parse_vllm_spec_counters(METRICS.replace("} 200.0", "} 900.0"))
    metrics = tmp_path / "metrics.txt"
    metrics.write_text(METRICS)
    outcome = tune_engine_knobs(EngineKnobSettings(
        "vllm-spec", str(metrics), "llama-68m", "llama-7b", "a100-80gb-sxm", (1, 64, 512),
        output=tmp_path / "spec.json"))
    config = json.loads((tmp_path / "spec.json").read_text())
    assert config == outcome.configs["spec.json"] and config["method"] == "draft_model"
    ks = [0 if c.best is None else c.best.steps for c in outcome.choices]
    assert ks[0] >= 1 and ks == sorted(ks, reverse=True)  # shorter chains as batches grow
    with pytest.raises(TreeoptError, match="chain counters"):
        tune_engine_knobs(EngineKnobSettings("sglang", str(metrics), "llama-68m", "llama-7b",
                                             "a100-80gb-sxm"))
