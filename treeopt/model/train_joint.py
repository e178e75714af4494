"""Medusa-2 (``train-heads --joint``): LoRA on the backbone, trained together with the heads.

The recipe of the Medusa paper (arXiv:2401.10774, Sec. 2.2.2) as
:class:`treeopt.model.train_heads.JointSettings` sets it: LoRA through ``peft``
(rank 32, alpha 16, dropout 0.05) on every linear layer, the LM head included;
heads at 4x the backbone's learning rate; loss ``lambda_0 x backbone + sum_k
0.8^k x head_k``, the backbone loss either next-token cross-entropy or a KL to the
frozen original model (the same weights with the adapters switched off, so no
second copy is held). QLoRA (4-bit base) needs CUDA and bitsandbytes.

The result is written as a merged FasterDecoding ``medusa-1.0`` checkpoint: the
fine-tuned model's own files with the heads' tensors inside (``medusa_head.*``),
which :func:`treeopt.model.loading.load_medusa` loads with no separate heads.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treeopt.core.atomic import new_file_mode, os_error_in
from treeopt.errors import TreeoptError, first_line
from treeopt.model.profiling import hidden_at
from treeopt.model.training import (
    HEADS_LR_RATIO,
    Batch,
    JointSettings,
    LossTotals,
    Trainee,
    TrainSettings,
    init_heads,
    medusa_loss,
)


def check_joint_available(joint: JointSettings) -> None:
    """One-line errors for what the run needs and lacks, before any model loads."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise TreeoptError("--joint trains LoRA adapters with peft: pip install peft") from None
    if joint.qlora:
        import torch

        if not torch.cuda.is_available():
            raise TreeoptError("--qlora needs a CUDA GPU (bitsandbytes 4-bit); drop --qlora "
                               "to train in full precision")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise TreeoptError("--qlora needs bitsandbytes: pip install bitsandbytes") from None


def check_init_heads(joint: JointSettings, settings: TrainSettings) -> None:
    """``--init-heads`` must be heads of the shape this run trains (read config only)."""
    if joint.init_heads is None:
        return
    from treeopt.model.loading import HEADS_PATTERNS, checkpoint_dir

    directory = checkpoint_dir(joint.init_heads, "Medusa heads", HEADS_PATTERNS)
    import json

    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        shape = (int(config["medusa_num_heads"]), int(config["medusa_num_layers"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TreeoptError(f"--init-heads {joint.init_heads}: {first_line(exc)}") from None
    if shape != (settings.num_heads, settings.num_layers):
        raise TreeoptError(
            f"--init-heads {joint.init_heads} has {shape[0]} heads of {shape[1]} layers; this "
            f"run trains {settings.num_heads} of {settings.num_layers} (--num-heads, --num-layers)")


def untie_lm_head(model: Any) -> None:
    """Give the LM head its own weight when it shares the input embedding's.

    LoRA on a tied LM head would, once merged, change the input embeddings too.
    """
    from torch import nn

    output, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if output.weight.data_ptr() == embedding.weight.data_ptr():
        output.weight = nn.Parameter(output.weight.detach().clone(), requires_grad=False)
    model.config.tie_word_embeddings = False
    text_config = getattr(model.config, "get_text_config", None)
    if text_config is not None:
        text_config().tie_word_embeddings = False


def lora_target_modules(model: Any) -> list[str]:
    """Every ``nn.Linear`` of the model by full name, the LM head included."""
    from torch import nn

    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


@dataclass
class JointTraining:
    """The Medusa-2 parts of a run: its settings, the LoRA model and the base's source."""

    joint: JointSettings
    source: str

    def loss(self, trainee: Trainee, batch: Batch, weights: list[float], step: int,
             total: int, totals: LossTotals | None = None) -> Any:
        """``lambda_0(step) x backbone loss + sum_k 0.8^k x head-k loss`` of one batch.

        ``totals`` (data parallel): sums divided by every rank's positions, not means.
        """
        import torch
        import torch.nn.functional as F

        model = trainee.model
        model.train()
        hidden = hidden_at(model, batch.input_ids, batch.mask, batch.rows, batch.cols)
        heads_dtype = next(trainee.heads.parameters()).dtype
        head_logits = trainee.heads(hidden.unsqueeze(0).to(heads_dtype))[:, 0]
        loss = medusa_loss(head_logits, batch.targets.to(head_logits.device), weights, totals)
        logits = model.get_output_embeddings()(hidden).float()
        reduction = "mean" if totals is None else "sum"
        if self.joint.backbone_loss == "ce":
            backbone = F.cross_entropy(logits, batch.next_tokens.to(logits.device),
                                       reduction=reduction)
        else:
            with torch.no_grad(), model.disable_adapter():
                original = hidden_at(model, batch.input_ids, batch.mask, batch.rows, batch.cols)
                teacher = model.get_output_embeddings()(original).float()
            backbone = F.kl_div(F.log_softmax(logits, dim=-1), F.log_softmax(teacher, dim=-1),
                                log_target=True,
                                reduction="batchmean" if totals is None else "sum")
        if totals is not None:
            backbone = backbone / totals.rows
        return self.joint.lambda0(step, total) * backbone + loss

    def write_checkpoint(self, trainee: Trainee, tokenizer: Any, output_dir: Path) -> None:
        """Merge the adapters and write the ``medusa-1.0`` checkpoint into ``output_dir``.

        Built in a temporary folder beside it and moved in file by file, so a failure
        leaves no half-written model files.
        """
        trainee.model.eval()
        merged = _merged_model(trainee.model, self.joint, self.source)
        staging = Path(tempfile.mkdtemp(prefix=".medusa2-", dir=output_dir))
        try:
            merged.save_pretrained(str(staging))
            if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
                tokenizer.save_pretrained(str(staging))
            trainee.heads.save_into_model(staging)
            mode = new_file_mode()
            for item in staging.iterdir():
                if item.is_file():  # safetensors writes 0600; outputs follow the umask
                    os.chmod(item, mode)
                os.replace(item, output_dir / item.name)
        except Exception as exc:  # safetensors' disk-full is not an OSError: os_error_in
            system = os_error_in(exc)
            if system is None:
                raise
            raise TreeoptError(f"cannot write the checkpoint into {output_dir}: "
                               f"{system.strerror or system}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _merged_model(peft_model: Any, joint: JointSettings, source: str) -> Any:
    """The base with the LoRA deltas merged in (a QLoRA base is reloaded in bf16 first)."""
    if not joint.qlora:
        return peft_model.merge_and_unload()
    import torch
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    adapters = get_peft_model_state_dict(peft_model)
    base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
    untie_lm_head(base)
    full = get_peft_model(base, peft_model.peft_config["default"])
    set_peft_model_state_dict(full, adapters)
    return full.merge_and_unload()


def _initial_heads(model: Any, settings: TrainSettings, model_id: str) -> Any:
    """Fresh heads from the LM head, or Medusa-1 heads (two-stage) from ``init_heads``."""
    joint = settings.joint
    assert joint is not None
    if joint.init_heads is None:
        return init_heads(model, settings, model_id)
    from treeopt.model.loading import check_heads_fit, load_heads

    heads = load_heads(joint.init_heads)
    check_heads_fit(heads, model, joint.init_heads)
    heads.config.base_model_name_or_path = model_id
    return heads.to(model.get_output_embeddings().weight.device).float()


def joint_trainee(model: Any, settings: TrainSettings, model_id: str) -> Trainee:
    """The Medusa-2 :class:`Trainee`: LoRA adapters on ``model`` (changed in place and
    merged at the end) and heads, with the heads' learning rate 4x the backbone's."""
    import torch
    from peft import LoraConfig, get_peft_model

    joint = settings.joint
    assert joint is not None
    check_joint_available(joint)
    heads = _initial_heads(model, settings, model_id)
    source = str(getattr(model.config, "_name_or_path", "") or model_id)
    untie_lm_head(model)
    config = LoraConfig(r=joint.lora_rank, lora_alpha=joint.lora_alpha,
                        lora_dropout=joint.lora_dropout, bias="none",
                        target_modules=lora_target_modules(model))
    peft_model = get_peft_model(model, config)
    lora = {f"lora.{name}": p for name, p in peft_model.named_parameters() if p.requires_grad}
    heads_lr = HEADS_LR_RATIO * joint.backbone_lr
    optimizer = torch.optim.AdamW([
        {"params": list(lora.values()), "lr": joint.backbone_lr},
        {"params": list(heads.parameters()), "lr": heads_lr},
    ])
    trainable = {**lora, **{f"heads.{name}": p for name, p in heads.named_parameters()}}
    return Trainee(peft_model, heads, optimizer, trainable, [joint.backbone_lr, heads_lr],
                   JointTraining(joint, source))
