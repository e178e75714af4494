"""Medusa heads: shapes, identity at init, FasterDecoding layout round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from medusa_runtime.heads import MedusaConfig, MedusaHeads
from treeopt.errors import TreeoptError

HIDDEN, VOCAB = 8, 11


def _config(**overrides: object) -> MedusaConfig:
    values: dict[str, object] = dict(
        medusa_num_heads=3, medusa_num_layers=2, hidden_size=HIDDEN, vocab_size=VOCAB
    )
    values.update(overrides)
    return MedusaConfig(**values)  # type: ignore[arg-type]


def test_untrained_head_is_projection_of_hidden() -> None:
    torch.manual_seed(0)
    heads = MedusaHeads(_config())
    hidden = torch.randn(2, 5, HIDDEN)
    logits = heads(hidden)
    assert logits.shape == (3, 2, 5, VOCAB)
    for k in range(3):  # zero-initialised residual blocks: head k = its Linear on hidden
        assert torch.allclose(logits[k], hidden @ heads.heads[k][-1].weight.T)


def test_shared_lm_head_uses_base_projection_and_is_not_saved(tmp_path: Path) -> None:
    torch.manual_seed(0)
    lm_head = nn.Linear(HIDDEN, VOCAB, bias=False)
    heads = MedusaHeads(_config(share_lm_head=True), base_lm_head=lm_head)
    hidden = torch.randn(1, 4, HIDDEN)
    assert torch.allclose(heads(hidden)[1], lm_head(hidden))
    assert all("weight" not in key or "linear" in key for key in heads.state_dict())
    heads.save_pretrained(tmp_path)
    loaded = MedusaHeads.from_pretrained(tmp_path, base_lm_head=lm_head)
    assert loaded.config.share_lm_head
    with pytest.raises(TreeoptError, match="lm_head"):
        MedusaHeads.from_pretrained(tmp_path)


def test_faster_decoding_pt_layout_loads(tmp_path: Path) -> None:
    torch.manual_seed(1)
    # FasterDecoding's ModuleList([Sequential(ResBlock, Linear)]) state dict.
    state = {}
    for k in range(2):
        state[f"{k}.0.linear.weight"] = torch.randn(HIDDEN, HIDDEN)
        state[f"{k}.0.linear.bias"] = torch.randn(HIDDEN)
        state[f"{k}.1.weight"] = torch.randn(VOCAB, HIDDEN)
    torch.save(state, tmp_path / "medusa_lm_head.pt")
    (tmp_path / "config.json").write_text(
        json.dumps(
            {"medusa_num_heads": 2, "medusa_num_layers": 1, "base_model_name_or_path": "m"}
        )
    )
    heads = MedusaHeads.from_pretrained(tmp_path)
    assert heads.config == MedusaConfig(2, 1, HIDDEN, VOCAB, "m", False)
    hidden = torch.randn(1, 3, HIDDEN)
    block = hidden + torch.nn.functional.silu(hidden @ state["1.0.linear.weight"].T
                                              + state["1.0.linear.bias"])
    assert torch.allclose(heads(hidden)[1], block @ state["1.1.weight"].T, atol=1e-5)


def test_safetensors_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(2)
    heads = MedusaHeads(_config(base_model_name_or_path="base"))
    for parameter in heads.parameters():
        nn.init.normal_(parameter)
    heads.save_pretrained(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json", "medusa_lm_head.safetensors"
    ]
    loaded = MedusaHeads.from_pretrained(tmp_path / "out")
    assert loaded.config == heads.config
    hidden = torch.randn(1, 2, HIDDEN)
    assert torch.equal(loaded(hidden), heads(hidden))


def test_missing_folder_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(TreeoptError) as info:
        MedusaHeads.from_pretrained(tmp_path / "nope")
    assert "\n" not in str(info.value)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(TreeoptError, match="no medusa_lm_head"):
        MedusaHeads.from_pretrained(tmp_path)
