"""Model registry and loading: names, heads, one-line errors when offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from treeopt.errors import TreeoptError
from treeopt.model.loading import (
    REGISTRY,
    load_base_model,
    load_heads,
    require_heads,
    resolve_model,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
STORIES = SHARED / "models" / "stories260K"
FAKE_ID = "treeopt-tests/no-such-model-xyz"


def test_registry_names_map_to_published_checkpoints() -> None:
    assert resolve_model("vicuna-7b") == (
        "lmsys/vicuna-7b-v1.3", "FasterDecoding/medusa-vicuna-7b-v1.3"
    )
    assert resolve_model("vicuna-33b")[1] == "FasterDecoding/medusa-vicuna-33b-v1.3"
    assert resolve_model("vicuna-13b", heads="my/heads") == ("lmsys/vicuna-13b-v1.3", "my/heads")
    # Medusa-2: one checkpoint holds the fine-tuned base and its heads.
    zephyr = "FasterDecoding/medusa-1.0-zephyr-7b-beta"
    assert resolve_model("zephyr-7b") == (zephyr, zephyr)
    assert resolve_model("medusa2-zephyr-7b") == (zephyr, zephyr)
    assert resolve_model("./local-model") == ("./local-model", None)


def test_registry_holds_the_seven_models_of_the_medusa_readme() -> None:
    assert {name: (spec.kind, spec.base, spec.heads) for name, spec in REGISTRY.items()} == {
        **{f"medusa1-vicuna-{size}": ("medusa-1", f"lmsys/vicuna-{size}-v1.3",
                                      f"FasterDecoding/medusa-vicuna-{size}-v1.3")
           for size in ("7b", "13b", "33b")},
        **{f"medusa2-vicuna-{size}": ("medusa-2", f"FasterDecoding/medusa-1.0-vicuna-{size}-v1.5",
                                      None) for size in ("7b", "13b", "33b")},
        "medusa2-zephyr-7b": ("medusa-2", "FasterDecoding/medusa-1.0-zephyr-7b-beta", None),
    }
    for old, new in (("vicuna-7b", "medusa1-vicuna-7b"), ("zephyr-7b", "medusa2-zephyr-7b")):
        assert resolve_model(old) == resolve_model(new)


def test_heads_are_required_unless_the_checkpoint_carries_them() -> None:
    with pytest.raises(TreeoptError, match=r"heads is needed: .* has no registered Medusa heads"):
        require_heads("some/model", None)
    assert require_heads("zephyr-7b", None) == "FasterDecoding/medusa-1.0-zephyr-7b-beta"
    assert require_heads("zephyr-7b", "x/y") == "x/y"


def _offline_error(code: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_offline_uncached_model_is_one_line_error_naming_the_download() -> None:
    message = _offline_error(
        "from treeopt.model.loading import load_base_model\n"
        "from treeopt.errors import TreeoptError\n"
        "try:\n"
        f"    load_base_model({FAKE_ID!r})\n"
        "except TreeoptError as exc:\n"
        "    print(exc)\n"
    )
    assert message.count("\n") == 0
    assert FAKE_ID in message and f"hf download {FAKE_ID}" in message
    assert "HF_HUB_OFFLINE=1" in message


def test_cli_offline_uncached_model_exits_2_with_one_line(tmp_path: Path) -> None:
    data = tmp_path / "p.txt"
    data.write_text("hello\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", "from treeopt.cli import main; main()", "profile",
         "-m", FAKE_ID, "--heads", "x/y", "-d", str(data), "-o", str(tmp_path / "p.json")],
        env=env, capture_output=True, text=True, timeout=120,
    )
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and FAKE_ID in lines[0]


def test_missing_local_folders_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(TreeoptError, match="does not exist"):
        load_base_model(str(tmp_path / "nope" / "deeper" / "model"))
    with pytest.raises(TreeoptError) as info:
        load_heads(str(tmp_path / "no-heads"))
    assert "\n" not in str(info.value)


def test_bad_dtype_and_device_map() -> None:
    with pytest.raises(TreeoptError, match="unknown dtype 'float8'"):
        load_base_model("x/y", dtype="float8")
    with pytest.raises(TreeoptError, match="dtype must be bf16, fp16, fp32 for a real model"):
        load_base_model("x/y", dtype="fp8")
    with pytest.raises(TreeoptError, match="device_map must be one of"):
        load_base_model("x/y", device_map="balanced")


@pytest.mark.skipif(not STORIES.is_dir(), reason="needs ../shared/models/stories260K")
def test_loads_a_local_model_frozen_in_the_requested_dtype() -> None:
    import torch

    model, tokenizer = load_base_model(str(STORIES), dtype="bf16")  # = bfloat16
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training
    assert tokenizer.eos_token_id == 2


def test_heads_sharing_the_base_lm_head_load_with_it(tmp_path: Path) -> None:
    import torch

    from medusa_runtime.heads import MedusaConfig, MedusaHeads

    lm_head = torch.nn.Linear(16, 40, bias=False)
    saved = MedusaHeads(MedusaConfig(2, 1, 16, 40, share_lm_head=True), base_lm_head=lm_head)
    saved.save_pretrained(tmp_path)
    loaded = load_heads(str(tmp_path), base_lm_head=lm_head)
    hidden = torch.randn(3, 16)
    assert torch.equal(loaded(hidden), saved(hidden))
    with pytest.raises(TreeoptError, match="share the base lm_head; pass base_lm_head"):
        load_heads(str(tmp_path))
