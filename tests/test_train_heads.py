"""Medusa-1 head training: loss weights, loss value, init, a learnable task, checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from shift_lm import ShiftLM, V  # the hand-built model with known greedy text

from medusa_runtime.heads import MedusaHeads
from treeopt.errors import TreeoptError
from treeopt.model.train_heads import (
    HEAD_LOSS_DECAY,
    REPORT_FILE,
    TrainSettings,
    head_loss_weights,
    init_heads,
    medusa_loss,
    train_heads,
)

torch.set_num_threads(1)
# No EOS: every continuation runs its 8 tokens, cycling through its start's parity class,
# so the training prompts show every token with every head's target.
TOKENIZER = SimpleNamespace(eos_token_id=None, pad_token_id=None)
PROMPTS = [[a] for a in range(V)] + [[a, (a + 2) % V] for a in range(V)]


def test_head_loss_weights_are_medusa_decay() -> None:
    assert HEAD_LOSS_DECAY == 0.8
    assert head_loss_weights(3) == pytest.approx([0.8, 0.64, 0.512])


def test_medusa_loss_exact_value_and_missing_targets() -> None:
    logits = torch.zeros(3, 2, V)  # uniform: cross-entropy log V for every target
    targets = torch.tensor([[1, 2, -1], [3, -1, -1]])  # head 3 has no target at all
    loss = medusa_loss(logits, targets, head_loss_weights(3))
    assert float(loss) == pytest.approx((0.8 + 0.64) * math.log(V))
    logits[0, 0, 1] = 100.0  # head 1 certain and right at position 0
    loss = medusa_loss(logits, targets, head_loss_weights(3))
    assert float(loss) == pytest.approx(0.8 * math.log(V) / 2 + 0.64 * math.log(V), rel=1e-5)


def test_fresh_heads_predict_what_the_base_predicts() -> None:
    model = ShiftLM()
    heads = init_heads(model, TrainSettings(num_heads=2), model_id="shift")
    hidden = model.embed(torch.arange(V))[None]
    base = model.lm_head(hidden)
    for logits in heads(hidden):
        torch.testing.assert_close(logits, base)
    assert heads.config.base_model_name_or_path == "shift"


def test_heads_learn_the_shift_task_and_save_the_runtime_layout(tmp_path: Path) -> None:
    settings = TrainSettings(num_heads=3, epochs=60, learning_rate=0.1, batch_size=4,
                             held_out_fraction=0.25, max_new_tokens=8, seed=0)
    report = train_heads(ShiftLM(), TOKENIZER, PROMPTS, tmp_path, settings, model_id="shift",
                         progress=False)
    # Head k must map token a to a + 2 (k + 1): learnable exactly from one-hot inputs.
    assert report["held_out_accuracy"]["top1"] == [1.0, 1.0, 1.0]
    assert report["held_out_accuracy"]["top5"] == [1.0, 1.0, 1.0]
    assert report["held_out_prompts"] == 4 and report["train_prompts"] == 12
    assert json.loads((tmp_path / REPORT_FILE).read_text()) == report
    heads = MedusaHeads.from_pretrained(tmp_path)
    assert heads.config.medusa_num_heads == 3 and heads.config.vocab_size == V
    predicted = heads(torch.eye(V)[None]).argmax(-1)[:, 0]  # [K, V]
    for k in range(1, 4):
        assert predicted[k - 1].tolist() == [(a + 2 * (k + 1)) % V for a in range(V)]
    with pytest.raises(TreeoptError, match="pass --resume"):
        train_heads(ShiftLM(), TOKENIZER, PROMPTS, tmp_path, settings, model_id="shift",
                    progress=False)
    # Resuming a finished run trains no further and reports the same heads.
    again = train_heads(ShiftLM(), TOKENIZER, PROMPTS, tmp_path, settings, model_id="shift",
                        resume=True, progress=False)
    assert again["held_out_accuracy"] == report["held_out_accuracy"]


def test_too_few_prompts_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TreeoptError, match="at least 2 prompts"):
        train_heads(ShiftLM(), TOKENIZER, [[1]], tmp_path, TrainSettings(), model_id="s",
                    progress=False)


def test_default_epochs_give_small_runs_enough_steps() -> None:
    from treeopt.model.train_heads import (
        DEFAULT_EPOCHS,
        MAX_DEFAULT_EPOCHS,
        MIN_DEFAULT_STEPS,
    )

    settings = TrainSettings()
    assert settings.epochs_for(10) == MIN_DEFAULT_STEPS // 10 == 30
    assert settings.epochs_for(1000) == DEFAULT_EPOCHS
    assert settings.epochs_for(1) == MAX_DEFAULT_EPOCHS
    assert TrainSettings(epochs=2).epochs_for(1) == 2


def test_near_chance_accuracy_warns() -> None:
    from treeopt.model.train_heads import near_chance_warning

    learned = {"top1": [0.4, 0.2], "top5": [0.6, 0.4], "baseline_top1": [0.1, 0.1]}
    assert near_chance_warning(learned) is None
    stuck = {"top1": [0.003, 0.0], "top5": [0.01, 0.0], "baseline_top1": [0.05, 0.05]}
    warning = near_chance_warning(stuck)
    assert warning is not None and "0.003" in warning and "0.050" in warning


def test_shared_targets_file_follows_the_weights(tmp_path: Path) -> None:
    from treeopt.model.train_heads import shared_targets_file

    model = ShiftLM()
    first = shared_targets_file(model, "shift", tmp_path)
    assert shared_targets_file(ShiftLM(), "shift", tmp_path) == first
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)  # a fine-tuned copy under the same name
    assert shared_targets_file(model, "shift", tmp_path) != first
    assert shared_targets_file(ShiftLM(), "other", tmp_path) != first
