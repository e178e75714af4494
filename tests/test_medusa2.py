"""Medusa-2 checkpoints: fine-tuned base + ``medusa_head.*`` tensors in the model's own files.

Folders are built from stories260K as FasterDecoding publishes ``medusa-1.0-*``: the
base's config plus ``medusa_num_heads``/``medusa_num_layers``, the base's weights
(perturbed: a fine-tuned base differs from the original) and the heads' tensors in
one safetensors file, a sharded index, or a ``.bin``. Each loads with no ``--heads``
and decodes exactly what greedy ``model.generate`` of *that* fine-tuned base writes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medusa_runtime.decode import generate
from treeopt.cli import app
from treeopt.errors import TreeoptError
from treeopt.model.loading import checkpoint_kind, load_medusa

STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"
pytestmark = pytest.mark.skipif(not STORIES.is_dir(), reason="needs ../shared/models/stories260K")
NUM_HEADS, HIDDEN, VOCAB = 4, 64, 512  # mc_sim_7b_63 is 4 deep
PROMPT = "Once upon a time"
NEW_TOKENS = 24
torch.set_num_threads(1)


def fine_tuned_state() -> dict[str, torch.Tensor]:
    """stories260K's weights, perturbed (seeded) as fine-tuning would, + Medusa heads."""
    from safetensors.torch import load_file

    generator = torch.Generator().manual_seed(0)
    state = {key: value + 0.02 * torch.randn(value.shape, generator=generator)
             for key, value in load_file(str(STORIES / "model.safetensors")).items()}
    embed = state["model.embed_tokens.weight"]  # tied: the LM head
    for k in range(NUM_HEADS):
        state[f"medusa_head.{k}.0.linear.weight"] = 0.05 * torch.randn(
            HIDDEN, HIDDEN, generator=generator)
        state[f"medusa_head.{k}.0.linear.bias"] = torch.zeros(HIDDEN)
        state[f"medusa_head.{k}.1.weight"] = embed + 0.01 * torch.randn(
            VOCAB, HIDDEN, generator=generator)
    return state


def medusa2_folder(folder: Path, layout: str = "single") -> Path:
    """A Medusa-2 checkpoint in ``folder``: layout "single", "sharded" or "bin"."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(STORIES / name, folder / name)
    config = json.loads((STORIES / "config.json").read_text())
    config.update(medusa_num_heads=NUM_HEADS, medusa_num_layers=1)
    (folder / "config.json").write_text(json.dumps(config))
    state = fine_tuned_state()
    if layout == "single":
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    elif layout == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    else:  # the base in one shard, the heads in the other, as a big model is split
        shards = {"model-00001-of-00002.safetensors": {}, "model-00002-of-00002.safetensors": {}}
        for key, value in state.items():
            name = sorted(shards)[key.startswith("medusa_head.")]
            shards[name][key] = value
        for name, part in shards.items():
            save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map = {key: name for name, part in shards.items() for key in part}
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.fixture(scope="module")
def medusa2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return medusa2_folder(tmp_path_factory.mktemp("m2") / "medusa2-stories")


def greedy_reference(folder: Path) -> list[int]:
    """Greedy ``model.generate`` of the checkpoint's own (fine-tuned) base."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False,
                         eos_token_id=tokenizer.eos_token_id)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("layout", ["single", "sharded", "bin"])
def test_layouts_load_as_medusa2_and_decode_losslessly(tmp_path: Path, layout: str) -> None:
    from safetensors.torch import load_file

    folder = medusa2_folder(tmp_path / layout, layout)
    assert checkpoint_kind(folder) == "medusa-2"
    loaded = load_medusa(str(folder))
    assert (loaded.kind, loaded.heads_id) == ("medusa-2", str(folder))
    expected = fine_tuned_state()
    assert torch.equal(loaded.heads.heads[2][1].weight, expected["medusa_head.2.1.weight"])
    assert torch.equal(loaded.model.model.embed_tokens.weight,
                       expected["model.embed_tokens.weight"])  # the fine-tuned base
    original = load_file(str(STORIES / "model.safetensors"))["model.embed_tokens.weight"]
    assert not torch.equal(loaded.model.model.embed_tokens.weight, original)
    ids = loaded.tokenizer(PROMPT, return_tensors="pt").input_ids
    from treeopt.files.tree_file import load_tree

    result = generate(loaded.model, loaded.heads, load_tree("mc_sim_7b_63"), ids, NEW_TOKENS,
                      eos_token_id=loaded.tokenizer.eos_token_id)
    assert result.tokens == greedy_reference(folder)


def test_generate_needs_no_heads_and_equals_greedy_of_its_base(medusa2: Path) -> None:
    from transformers import AutoTokenizer

    runner = CliRunner()
    result = runner.invoke(app, ["generate", "--model", str(medusa2), "--tree", "mc_sim_7b_63",
                                 "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS)])
    assert result.exit_code == 0, result.output
    tokenizer = AutoTokenizer.from_pretrained(str(medusa2))
    expected = PROMPT + tokenizer.decode(greedy_reference(medusa2), skip_special_tokens=True)
    assert result.stdout.strip() == expected.strip()
    assert greedy_reference(medusa2) != greedy_reference(STORIES)  # its own base, not stories'
    assert f"{NEW_TOKENS} tokens" in result.stderr


def test_profile_and_overhead_need_no_heads(medusa2: Path, tmp_path: Path) -> None:
    data = tmp_path / "prompts.txt"
    data.write_text("Once upon a time\nThe dog ran\nLily saw a bird\n")
    runner = CliRunner()
    out = tmp_path / "p.json"
    result = runner.invoke(app, ["profile", "-m", str(medusa2), "-d", str(data), "-o", str(out),
                                 "--max-new-tokens", "12", "--top-k", "4", "-q"])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["provenance"]["heads"] == str(medusa2)
    assert doc["provenance"]["greedy_mismatches"] == 0
    assert len(doc["marginal"]) == NUM_HEADS
    latency = tmp_path / "lat.json"
    result = runner.invoke(app, ["overhead", "-m", str(medusa2), "--device", "cpu", "--dtype",
                                 "fp32", "--batch", "1", "--context", "16", "--sizes", "1,4",
                                 "--warmup", "0", "--repeats", "1", "-q", "-o", str(latency)])
    assert result.exit_code == 0, result.output
    assert latency.is_file()


def run_treeopt(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "treeopt", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_hub_id_of_a_medusa2_checkpoint_loads_from_the_offline_cache(
    medusa2: Path, tmp_path: Path
) -> None:
    from test_hub_cache import cache_repo

    cache = tmp_path / "hub"
    cache_repo(cache, "tiny-org/medusa-1.0-stories", medusa2)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HOME", None)
    common = ["generate", "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS)]
    medusa = run_treeopt(env, *common, "--model", "tiny-org/medusa-1.0-stories",
                         "--tree", "mc_sim_7b_63")
    plain = run_treeopt(env, *common, "--model", str(medusa2), "--tree", "root")
    assert medusa.returncode == 0 and plain.returncode == 0, medusa.stderr + plain.stderr
    assert medusa.stdout == plain.stdout


def test_uncached_hub_id_without_network_fails_in_one_line(tmp_path: Path) -> None:
    # No HF_HUB_OFFLINE: the closed endpoint stands in for "no network"; the probe
    # refuses it at once instead of retrying for a minute.
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_ENDPOINT": "http://127.0.0.1:9"}
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME"):
        env.pop(key, None)
    result = run_treeopt(env, "generate", "--prompt", "x", "--model", "tiny-org/not-cached")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(errors) == 1 and "hub is unreachable" in errors[0], result.stderr


def test_bad_weights_and_mismatched_heads_are_one_line_errors(tmp_path: Path) -> None:
    from medusa_runtime.heads import MedusaConfig, MedusaHeads

    garbage = medusa2_folder(tmp_path / "garbage")
    (garbage / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(TreeoptError, match="cannot read weights") as info:
        load_medusa(str(garbage))
    assert "\n" not in str(info.value)
    truncated = medusa2_folder(tmp_path / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(TreeoptError):
        load_medusa(str(truncated))
    for name, config in (("hidden", MedusaConfig(2, 1, 32, VOCAB)),
                         ("vocab", MedusaConfig(2, 1, HIDDEN, 1000))):
        MedusaHeads(config).save_pretrained(tmp_path / name)
        with pytest.raises(TreeoptError, match="belong to another model"):
            load_medusa(str(STORIES), heads=str(tmp_path / name))
    (tmp_path / "notheads").mkdir()
    torch.save({"weights": [1, 2]}, tmp_path / "notheads" / "medusa_lm_head.pt")
    (tmp_path / "notheads" / "config.json").write_text(
        json.dumps({"medusa_num_heads": 1, "medusa_num_layers": 1}))
    with pytest.raises(TreeoptError, match=r"not a state dict|cannot read weights"):
        load_medusa(str(STORIES), heads=str(tmp_path / "notheads"))


def test_a_medusa1_heads_folder_as_model_loads_the_base_it_names(tmp_path: Path) -> None:
    from medusa_runtime.heads import MedusaConfig, MedusaHeads

    MedusaHeads(MedusaConfig(2, 1, HIDDEN, VOCAB, base_model_name_or_path=str(STORIES))) \
        .save_pretrained(tmp_path / "heads")
    loaded = load_medusa(str(tmp_path / "heads"))
    assert (loaded.kind, loaded.model_id) == ("medusa-1", str(STORIES))
    assert loaded.heads.num_heads == 2 and checkpoint_kind(STORIES) == "base"


def test_train_heads_into_an_unwritable_place_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "p.txt"
    data.write_text("a\nb\nc\n")
    result = CliRunner().invoke(app, ["train-heads", "-m", str(STORIES), "-d", str(data),
                                      "-o", "/proc/treeopt-heads", "-q"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "/proc/treeopt-heads" in result.stderr
