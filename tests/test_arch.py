"""Model shapes: named table, HF configs, parameter counts."""

import json
from pathlib import Path

import pytest

from treeopt.cost.arch import ARCHS, get_arch
from treeopt.errors import TreeoptError

SHARED_MODEL = Path(__file__).resolve().parents[1] / ".." / "shared" / "models" / "stories260K"


def test_llama_7b_parameter_count_is_the_published_6_74b():
    # 6,738,415,616 is the parameter count of LLaMA-1 7B / Vicuna-7B (untied head).
    assert get_arch("llama-7b").num_parameters() == 6_738_415_616
    assert get_arch("llama-7b").weight_bytes(2) == 2 * 6_738_415_616


def test_gqa_shapes_follow_kv_heads():
    llama70 = get_arch("llama-2-70b")
    assert llama70.kv_size == 8 * 128 and llama70.q_size == 64 * 128
    assert llama70.num_parameters() == 68_976_648_192  # Llama-2-70B's published count
    assert get_arch("mistral-7b").num_parameters() == 7_241_732_096


def test_names_are_case_insensitive_and_all_named_shapes_exist():
    assert get_arch("LLaMA-13B") is ARCHS["llama-13b"]
    assert set(ARCHS) >= {"llama-7b", "llama-13b", "llama-33b", "llama-65b", "llama-2-70b",
                          "mistral-7b"}


def test_hf_config_dict_round_trips(tmp_path):
    arch = get_arch("mistral-7b")
    (tmp_path / "config.json").write_text(json.dumps(arch.to_hf_config_dict()))
    again = get_arch(tmp_path)
    assert again.as_dict() | {"name": arch.name} == arch.as_dict()
    assert get_arch(tmp_path / "config.json").hidden_size == 4096


def test_hf_config_defaults_mha_and_head_dim(tmp_path):
    config = {"hidden_size": 64, "intermediate_size": 100, "num_hidden_layers": 2,
              "num_attention_heads": 4, "vocab_size": 10}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    arch = get_arch(path)
    assert arch.num_key_value_heads == 4 and arch.head_dim == 16


@pytest.mark.parametrize("bad, message", [
    ("llama-8b", "unknown arch"),
])
def test_unknown_name_lists_known(bad, message):
    with pytest.raises(TreeoptError, match=message) as info:
        get_arch(bad)
    assert "llama-7b" in str(info.value) and "\n" not in str(info.value)


def test_config_missing_fields_is_one_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(TreeoptError, match="lacks intermediate_size") as info:
        get_arch(tmp_path)
    assert "\n" not in str(info.value)


def test_non_positive_field_is_rejected(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hidden_size": 0, "intermediate_size": 1, "num_hidden_layers": 1,
                                "num_attention_heads": 1, "vocab_size": 1}))
    with pytest.raises(TreeoptError, match="hidden_size must be a positive integer"):
        get_arch(path)


@pytest.mark.skipif(not SHARED_MODEL.is_dir(), reason="../shared not present")
def test_shared_tiny_model_folder():
    arch = get_arch(SHARED_MODEL)
    assert (arch.hidden_size, arch.num_key_value_heads, arch.head_dim) == (64, 4, 8)
