"""What Medusa-1 and Medusa-2 training share: settings, batches, the heads' loss, init.

:mod:`treeopt.model.train_heads` runs a training (both kinds) and
:mod:`treeopt.model.train_joint` adds Medusa-2's LoRA backbone; both build on this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from medusa_runtime.padding import pad_rows
from treeopt.errors import TreeoptError
from treeopt.model.profiling import Sequence_, decode_positions, future_targets

# Medusa paper, Sec. 2.2.1: loss of head k weighted lambda_k = 0.8 ** k.
HEAD_LOSS_DECAY = 0.8
# Fewer optimizer steps than this and heads barely leave their initialisation (the
# base's lm_head, which predicts one token too early): with the default epochs, a
# small run trains for more epochs until it gets this many steps.
MIN_DEFAULT_STEPS = 300
# ... but never more epochs than this on its own (the user can ask for more).
MAX_DEFAULT_EPOCHS = 50
DEFAULT_EPOCHS = 3
# Medusa-1 heads' default peak learning rate. The Medusa README's 1e-3 suits its
# tens of thousands of steps; in the few hundred of a calibration-sized run heads
# barely move with it (stories260K, 216 prompts, 81 steps: head-1 top-1 0.13 at
# 1e-3, 0.67 at 1e-2).
DEFAULT_HEADS_LR = 1e-2

@dataclass(frozen=True)
class JointSettings:
    """Medusa-2: LoRA on every linear layer (LM head included) trained with the heads.

    ``backbone_loss`` "ce": next-token cross-entropy on the data with a constant
    ``lambda_0 = CE_LAMBDA0`` (two-stage: start from Medusa-1 heads, ``init_heads``).
    "distill": KL to the frozen original model's distribution, ``lambda_0`` rising on
    a sine to ``DISTILL_LAMBDA0`` at the last step. Heads learn ``HEADS_LR_RATIO`` x
    ``backbone_lr``; both follow a cosine schedule after ``warmup_steps``.
    """

    backbone_loss: str = "ce"
    backbone_lr: float = 1e-4
    warmup_steps: int = 20
    lora_rank: int = 32
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    init_heads: str | None = None
    qlora: bool = False

    def __post_init__(self) -> None:
        if self.backbone_loss not in BACKBONE_LOSSES:
            raise TreeoptError(f"backbone loss must be one of {', '.join(BACKBONE_LOSSES)}, "
                               f"not {self.backbone_loss!r}")
        if not self.backbone_lr > 0 or not np.isfinite(self.backbone_lr):
            raise TreeoptError(f"backbone_lr must be a finite number > 0, not {self.backbone_lr}")
        if self.warmup_steps < 0 or self.lora_rank < 1 or self.lora_alpha < 1:
            raise TreeoptError("warmup_steps must be >= 0, lora_rank and lora_alpha >= 1")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise TreeoptError(f"lora_dropout must be in [0, 1), not {self.lora_dropout}")

    def lambda0(self, step: int, total: int) -> float:
        """Weight of the backbone loss at optimizer step ``step`` (0-based) of ``total``."""
        if self.backbone_loss == "ce":
            return CE_LAMBDA0
        return DISTILL_LAMBDA0 * float(np.sin(0.5 * np.pi * (step + 1) / max(1, total)))


# Medusa paper, Sec. 2.2.2: lambda_0 = 0.2 with the cross-entropy backbone loss; with
# self-distillation a much smaller weight (0.01) keeps the backbone near the original.
BACKBONE_LOSSES = ("ce", "distill")
CE_LAMBDA0 = 0.2
DISTILL_LAMBDA0 = 0.01
HEADS_LR_RATIO = 4.0


@dataclass(frozen=True)
class TrainSettings:
    """Head shape and optimization of a ``train-heads`` run (AdamW, cosine decay).

    ``epochs`` None: ``DEFAULT_EPOCHS``, or more on a small run so that it makes at
    least ``MIN_DEFAULT_STEPS`` optimizer steps (at most ``MAX_DEFAULT_EPOCHS``).
    ``joint``: Medusa-2 settings (None: Medusa-1, heads only, at ``learning_rate``).
    """

    num_heads: int = 5
    num_layers: int = 1
    epochs: int | None = None
    learning_rate: float = DEFAULT_HEADS_LR
    batch_size: int = 8
    warmup_fraction: float = 0.05
    held_out_fraction: float = 0.1
    max_new_tokens: int = 256
    seed: int = 0
    joint: JointSettings | None = field(default=None)

    def __post_init__(self) -> None:
        # Checked at construction, so a bad setting fails before any model loads.
        for name in ("num_heads", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise TreeoptError(f"{name} must be >= 1, not {getattr(self, name)}")
        if self.epochs is not None and self.epochs < 1:
            raise TreeoptError(f"epochs must be >= 1, not {self.epochs}")
        if self.num_layers < 0:
            raise TreeoptError(f"num_layers must be >= 0, not {self.num_layers}")
        if not self.learning_rate > 0 or not np.isfinite(self.learning_rate):
            raise TreeoptError(f"learning_rate must be a finite number > 0, "
                               f"not {self.learning_rate}")
        if not 0.0 < self.held_out_fraction < 1.0:
            raise TreeoptError(
                f"held-out fraction must be in (0, 1): the report needs held-out prompts, "
                f"not {self.held_out_fraction}"
            )
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise TreeoptError(f"warmup_fraction must be in [0, 1), not {self.warmup_fraction}")

    def epochs_for(self, steps_per_epoch: int) -> int:
        """Epochs to run given the data: ``epochs``, or the default rule above."""
        return epochs_for(self.epochs, steps_per_epoch)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def epochs_for(epochs: int | None, steps_per_epoch: int) -> int:
    """``epochs`` when given, else enough for about ``MIN_DEFAULT_STEPS`` optimizer steps
    (``DEFAULT_EPOCHS`` to ``MAX_DEFAULT_EPOCHS``): the one default rule of every trainer."""
    if epochs is not None:
        return epochs
    wanted = -(-MIN_DEFAULT_STEPS // max(1, steps_per_epoch))
    return min(MAX_DEFAULT_EPOCHS, max(DEFAULT_EPOCHS, wanted))


def head_loss_weights(num_heads: int) -> list[float]:
    """Per-head loss weights ``HEAD_LOSS_DECAY ** k`` for k = 1..num_heads."""
    return [HEAD_LOSS_DECAY ** k for k in range(1, num_heads + 1)]


# ------------------------------------------------------------------ batches
@dataclass(frozen=True)
class Batch:
    """Right-padded ids, mask, the decode positions (rows, cols) and their targets.

    ``targets`` [n, K]: ``x_{t+1+k}`` for head k (-1 past the end); ``next_tokens``
    [n]: ``x_{t+1}``, what the base model itself must predict there.
    """

    input_ids: Any
    mask: Any
    rows: Any
    cols: Any
    targets: Any
    next_tokens: Any


def make_batch(batch: Sequence[Sequence_], num_heads: int, pad_token_id: int) -> Batch:
    """The :class:`Batch` of ``batch``'s decode positions."""
    import torch

    input_ids, mask = pad_rows([seq.ids for seq in batch], pad_token_id, left=False)
    rows: list[int] = []
    cols: list[int] = []
    nexts: list[int] = []
    targets = []
    for row, seq in enumerate(batch):
        positions = decode_positions(len(seq.prompt), len(seq.ids), include_prompt=False)
        rows.extend([row] * len(positions))
        cols.extend(positions)
        nexts.extend(seq.ids[t + 1] for t in positions)
        targets.append(future_targets(seq.ids, positions, num_heads))
    target = np.concatenate(targets) if targets else np.zeros((0, num_heads), dtype=np.int64)
    return Batch(input_ids, mask, torch.tensor(rows, dtype=torch.long),
                 torch.tensor(cols, dtype=torch.long), torch.from_numpy(target),
                 torch.tensor(nexts, dtype=torch.long))


@dataclass(frozen=True)
class LossTotals:
    """What a data-parallel step's loss averages over, summed over every rank's share.

    ``heads[k]``: positions where head k has a target; ``rows``: decode positions.
    Each rank divides its own sums by these, so the ranks' losses (and gradients)
    add up to the one-process mean over the whole batch.
    """

    heads: tuple[int, ...]
    rows: int


def medusa_loss(logits: Any, targets: Any, weights: Sequence[float],
                totals: LossTotals | None = None) -> Any:
    """``sum_k weights[k] * CE(head k)`` over positions where head k has a target.

    ``logits`` [K, n, V]; ``targets`` [n, K] with -1 where the sequence ended. With
    ``totals`` (data parallel) each head's summed CE is divided by its positions
    over all ranks instead of averaged here.
    """
    import torch.nn.functional as F

    total = logits.new_zeros(())
    for k, weight in enumerate(weights):
        target = targets[:, k]
        if totals is not None:
            if totals.heads[k]:
                total = total + weight * F.cross_entropy(
                    logits[k].float(), target, ignore_index=-1, reduction="sum"
                ) / totals.heads[k]
        elif bool((target >= 0).any()):
            total = total + weight * F.cross_entropy(logits[k].float(), target, ignore_index=-1)
    return total


def init_heads(model: Any, settings: TrainSettings, model_id: str) -> Any:
    """Fresh heads: identity ResBlocks, vocabulary projections copied from ``lm_head``.

    Medusa starts every head from the base model's own ``lm_head`` so that, before
    training, each head predicts what the base would at its own position.
    """
    import torch

    from medusa_runtime.heads import MedusaConfig, MedusaHeads

    lm_head = model.get_output_embeddings()
    vocab_size, hidden_size = lm_head.weight.shape
    config = MedusaConfig(
        medusa_num_heads=settings.num_heads, medusa_num_layers=settings.num_layers,
        hidden_size=int(hidden_size), vocab_size=int(vocab_size),
        base_model_name_or_path=model_id,
    )
    heads = MedusaHeads(config)
    with torch.no_grad():
        for head in heads.heads:
            head[-1].weight.copy_(lm_head.weight.float())
    return heads.to(lm_head.weight.device)


@dataclass
class Trainee:
    """What one run optimizes: the model heads read, the heads, the optimizer.

    ``trainable``: every tensor the run changes, by name (saved for resume);
    ``joint``: the Medusa-2 helper (None for Medusa-1).
    """

    model: Any
    heads: Any
    optimizer: Any
    trainable: dict[str, Any]
    base_lrs: list[float]
    joint: Any = None
