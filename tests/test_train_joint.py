"""Medusa-2 training (``train-heads --joint``) on stories260K: recipe, checkpoint, round trip.

Tiny settings (a dozen prompts, 12 new tokens, one or two epochs) keep each run to
seconds on CPU. The merged checkpoint must load with no --heads and decode exactly
greedy ``model.generate`` of its *own* fine-tuned base.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from treeopt.cli import app
from treeopt.errors import TreeoptError
from treeopt.model.train_heads import (
    CE_LAMBDA0,
    DISTILL_LAMBDA0,
    STATE_FILE,
    JointSettings,
    TrainSettings,
    check_output_folder,
    train_heads,
)

STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"
STORY_PROMPTS = Path(__file__).parent / "data" / "story_prompts.txt"
needs_stories = pytest.mark.skipif(not STORIES.is_dir(),
                                   reason="needs ../shared/models/stories260K")
PROMPT = "Once upon a time"
torch.set_num_threads(1)


def test_lambda0_schedules_follow_the_paper() -> None:
    ce = JointSettings(backbone_loss="ce")
    assert [ce.lambda0(step, 10) for step in (0, 9)] == [CE_LAMBDA0, CE_LAMBDA0] == [0.2, 0.2]
    distill = JointSettings(backbone_loss="distill")
    assert DISTILL_LAMBDA0 == 0.01
    assert distill.lambda0(9, 10) == pytest.approx(0.01)  # the peak, at the last step
    assert distill.lambda0(4, 10) == pytest.approx(0.01 * math.sin(math.pi / 4))
    values = [distill.lambda0(step, 10) for step in range(10)]
    assert values == sorted(values)
    assert (distill.lora_rank, distill.lora_alpha, distill.lora_dropout) == (32, 16, 0.05)
    assert (distill.backbone_lr, distill.warmup_steps) == (1e-4, 20)
    with pytest.raises(TreeoptError, match="backbone loss must be one of ce, distill"):
        JointSettings(backbone_loss="mse")


def test_bad_or_mismatched_saved_state_is_refused_before_loading(tmp_path: Path) -> None:
    settings = TrainSettings(epochs=1)
    (tmp_path / STATE_FILE).write_text("{not json")
    with pytest.raises(TreeoptError, match="pass --resume"):
        check_output_folder(tmp_path, settings, resume=False)
    with pytest.raises(TreeoptError, match=r"cannot read .*start over") as info:
        check_output_folder(tmp_path, settings, resume=True)
    assert "\n" not in str(info.value)
    (tmp_path / STATE_FILE).write_text(json.dumps({"format": "x"}))
    with pytest.raises(TreeoptError, match=r"is not a treeopt\.training-state/1 file"):
        check_output_folder(tmp_path, settings, resume=True)
    # Through the CLI: refused although the model does not even exist (checked first).
    result = CliRunner().invoke(app, ["train-heads", "-m", str(tmp_path / "no-model"), "-d",
                                      str(STORY_PROMPTS), "-o", str(tmp_path)])
    assert result.exit_code == 2 and "pass --resume" in result.stderr


def test_qlora_without_cuda_and_lr_with_joint_are_one_line_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    common = ["train-heads", "-m", str(tmp_path / "no-model"), "-d", str(STORY_PROMPTS),
              "-o", str(tmp_path / "out")]
    if not torch.cuda.is_available():
        result = runner.invoke(app, [*common, "--joint", "--qlora"])
        assert result.exit_code == 2
        assert "--qlora needs a CUDA GPU" in result.stderr or "bitsandbytes" in result.stderr
    result = runner.invoke(app, [*common, "--joint", "--lr", "0.1"])
    assert result.exit_code == 2 and "drop --lr" in result.stderr
    result = runner.invoke(app, [*common, "--init-heads", "x"])
    assert result.exit_code == 2 and "are for --joint" in result.stderr


def greedy_of(folder: Path, new_tokens: int) -> str:
    """Greedy ``model.generate`` text of the checkpoint's own base model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False,
                         eos_token_id=tokenizer.eos_token_id)
    return PROMPT + tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@needs_stories
def test_cli_joint_checkpoint_round_trips_losslessly(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    runner = CliRunner()
    common = ["-m", str(STORIES), "-d", str(STORY_PROMPTS), "--max-prompts", "12",
              "--max-new-tokens", "12", "--batch-size", "4", "--num-heads", "4", "-q",
              "--targets-cache", str(tmp_path / "cache"), "--no-chat-template"]
    # Two-stage: Medusa-1 heads first, then the joint run starts from them.
    result = runner.invoke(app, ["train-heads", *common, "--epochs", "1",
                                 "-o", str(tmp_path / "heads")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "medusa2"
    result = runner.invoke(app, ["train-heads", *common, "--joint", "--epochs", "2",
                                 "--backbone-lr", "1e-2", "--warmup-steps", "1",
                                 "--init-heads", str(tmp_path / "heads"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "a Medusa-2 checkpoint" in result.stderr
    # One targets file, reused by the second run (same model, prompts and length).
    assert len(list((tmp_path / "cache").iterdir())) == 1
    config = json.loads((out / "config.json").read_text())
    assert (config["medusa_num_heads"], config["medusa_num_layers"]) == (4, 1)
    state = load_file(str(out / "model.safetensors"))
    assert {f"medusa_head.{k}.1.weight" for k in range(4)} <= set(state)
    original = load_file(str(STORIES / "model.safetensors"))
    assert not torch.equal(state["model.layers.0.self_attn.q_proj.weight"],
                           original["model.layers.0.self_attn.q_proj.weight"])  # fine-tuned
    assert not torch.equal(state["lm_head.weight"], original["model.embed_tokens.weight"])
    assert torch.equal(state["model.embed_tokens.weight"], original["model.embed_tokens.weight"])
    result = runner.invoke(app, ["generate", "--model", str(out), "--tree", "mc_sim_7b_63",
                                 "--prompt", PROMPT, "--max-new-tokens", "24"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == greedy_of(out, 24).strip()
    assert greedy_of(out, 24) != greedy_of(STORIES, 24)  # its own base, not the original
    result = runner.invoke(app, ["profile", "-m", str(out), "-d", str(STORY_PROMPTS),
                                 "--max-prompts", "4", "--max-new-tokens", "12", "--top-k", "4",
                                 "-q", "-o", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output


@needs_stories
def test_self_distilled_run_resumes_and_stays_close_to_the_base(tmp_path: Path) -> None:
    from treeopt.model.calibration import encode_prompts
    from treeopt.model.loading import load_base_model, load_medusa

    texts = STORY_PROMPTS.read_text().splitlines()[:12]
    settings = TrainSettings(num_heads=2, epochs=2, batch_size=4, max_new_tokens=12,
                             held_out_fraction=0.25,
                             joint=JointSettings(backbone_loss="distill", backbone_lr=1e-3,
                                                 warmup_steps=1))
    model, tokenizer = load_base_model(str(STORIES))
    prompts = encode_prompts(tokenizer, texts, chat_template=False)
    report = train_heads(model, tokenizer, prompts, tmp_path, settings, model_id="stories",
                         progress=False)
    assert report["kind"] == "medusa-2" and report["epochs"] == 2
    loaded = load_medusa(str(tmp_path))
    assert loaded.kind == "medusa-2"
    ids = torch.tensor([prompts[0]])
    torch.testing.assert_close(loaded.model(ids).logits, model(ids).logits)  # merged = saved
    again, _ = load_base_model(str(STORIES))
    resumed = train_heads(again, tokenizer, prompts, tmp_path, settings, model_id="stories",
                          resume=True, progress=False)
    assert resumed["held_out_accuracy"] == report["held_out_accuracy"]
    torch.testing.assert_close(again(ids).logits, model(ids).logits)


@needs_stories
def test_the_distillation_teacher_is_the_original_model() -> None:
    from treeopt.model.loading import load_base_model
    from treeopt.model.profiling import Sequence_
    from treeopt.model.train_heads import make_batch
    from treeopt.model.train_joint import joint_trainee, lora_target_modules

    original, _ = load_base_model(str(STORIES))
    model, _ = load_base_model(str(STORIES))
    assert "lm_head" in lora_target_modules(model)
    settings = TrainSettings(num_heads=2, joint=JointSettings(backbone_loss="distill"))
    trainee = joint_trainee(model, settings, "stories")
    assert [group["lr"] for group in trainee.optimizer.param_groups] == [1e-4, 4e-4]
    batch = make_batch([Sequence_([1, 5, 9], [20, 30, 40, 50])], 2, 0)
    # Before any step the adapters add nothing: the KL to the original is 0.
    no_heads = trainee.joint.loss(trainee, batch, [0.0, 0.0], step=9, total=10)
    assert float(no_heads.detach()) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():  # move the adapters: the student changes, the teacher does not
        for name, parameter in trainee.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)
    moved = trainee.joint.loss(trainee, batch, [0.0, 0.0], step=9, total=10)
    assert float(moved.detach()) > 1e-3
    ids = batch.input_ids
    with torch.no_grad(), trainee.model.disable_adapter():
        torch.testing.assert_close(trainee.model(input_ids=ids).logits, original(ids).logits)
