"""Medusa-1 head training: frozen base model, heads only, self-distilled targets.

Recipe of the Medusa paper (Cai et al. 2024, "Medusa: Simple LLM Inference
Acceleration Framework with Multiple Decoding Heads", arXiv:2401.10774, Sec. 2.2):

- The base model is frozen; only the heads train (Medusa-1).
- Head k's cross-entropy is weighted ``HEAD_LOSS_DECAY ** k`` (k = 1..K): later
  heads are harder and matter less, since a token k deep is only used when all
  k - 1 before it were accepted.
- Self-distillation (Sec. 2.3.2): when no training data matches the model, the
  targets are the model's own greedy continuations of the calibration prompts,
  which are exactly what greedy verification will accept.

Training positions are those decoding visits (the last prompt token onwards), as
in :mod:`treeopt.model.profiling`. Checkpoints: after every epoch the heads are saved in
the runtime's layout (``MedusaHeads.save_pretrained``) together with
``training_state.pt`` (optimizer, epoch), which ``resume=True`` continues from.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medusa_runtime.padding import pad_rows
from treeopt.core.atomic import atomic_path, atomic_write_text
from treeopt.errors import TreeoptError
from treeopt.model.profiling import Sequence_, decode_positions, future_targets, hidden_at

# Medusa paper, Sec. 2.2.1: loss of head k weighted lambda_k = 0.8 ** k.
HEAD_LOSS_DECAY = 0.8
STATE_FILE = "training_state.pt"
REPORT_FILE = "train_report.json"
TARGETS_FILE = "targets.json"
# Held-out accuracies reported: top-1 and top-5, as the Medusa training logs do.
REPORT_TOP_K = (1, 5)


@dataclass(frozen=True)
class TrainSettings:
    """Head shape and optimization of a ``train-heads`` run (AdamW, cosine decay)."""

    num_heads: int = 5
    num_layers: int = 1
    epochs: int = 3
    learning_rate: float = 1e-3
    batch_size: int = 8
    warmup_fraction: float = 0.05
    held_out_fraction: float = 0.1
    max_new_tokens: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        # Checked at construction, so a bad setting fails before any model loads.
        for name in ("num_heads", "epochs", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise TreeoptError(f"{name} must be >= 1, not {getattr(self, name)}")
        if self.num_layers < 0:
            raise TreeoptError(f"num_layers must be >= 0, not {self.num_layers}")
        if not self.learning_rate > 0:
            raise TreeoptError(f"learning_rate must be > 0, not {self.learning_rate}")
        if not 0.0 < self.held_out_fraction < 1.0:
            raise TreeoptError(
                f"held-out fraction must be in (0, 1): the report needs held-out prompts, "
                f"not {self.held_out_fraction}"
            )
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise TreeoptError(f"warmup_fraction must be in [0, 1), not {self.warmup_fraction}")


def head_loss_weights(num_heads: int) -> list[float]:
    """Per-head loss weights ``HEAD_LOSS_DECAY ** k`` for k = 1..num_heads."""
    return [HEAD_LOSS_DECAY ** k for k in range(1, num_heads + 1)]


def _batch_tensors(
    batch: Sequence[Sequence_], num_heads: int, pad_token_id: int
) -> tuple[Any, Any, Any, Any, Any]:
    """(input_ids, attention, rows, cols, targets [n, K]) for the batch's decode positions."""
    import torch

    input_ids, attention = pad_rows([seq.ids for seq in batch], pad_token_id, left=False)
    rows, cols, targets = [], [], []
    for row, seq in enumerate(batch):
        positions = decode_positions(len(seq.prompt), len(seq.ids), include_prompt=False)
        rows.extend([row] * len(positions))
        cols.extend(positions)
        targets.append(future_targets(seq.ids, positions, num_heads))
    target = np.concatenate(targets) if targets else np.zeros((0, num_heads), dtype=np.int64)
    return (input_ids, attention, torch.tensor(rows, dtype=torch.long),
            torch.tensor(cols, dtype=torch.long), torch.from_numpy(target))


def _hidden_at(model: Any, input_ids: Any, attention: Any, rows: Any, cols: Any) -> Any:
    """The frozen base's final hidden states at (rows, cols), detached."""
    import torch

    with torch.no_grad():
        return hidden_at(model, input_ids, attention, rows, cols)


def medusa_loss(logits: Any, targets: Any, weights: Sequence[float]) -> Any:
    """``sum_k weights[k] * CE(head k)`` over positions where head k has a target.

    ``logits`` [K, n, V]; ``targets`` [n, K] with -1 where the sequence ended.
    """
    import torch.nn.functional as F

    total = logits.new_zeros(())
    for k, weight in enumerate(weights):
        target = targets[:, k]
        if bool((target >= 0).any()):
            total = total + weight * F.cross_entropy(logits[k].float(), target, ignore_index=-1)
    return total


def init_heads(model: Any, settings: TrainSettings, model_id: str) -> Any:
    """Fresh heads: identity ResBlocks, vocabulary projections copied from ``lm_head``.

    Medusa starts every head from the base model's own ``lm_head`` so that, before
    training, each head predicts what the base would at its own position.
    """
    import torch

    from medusa_runtime.heads import MedusaConfig, MedusaHeads

    lm_head = model.lm_head
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


def held_out_accuracy(
    model: Any, heads: Any, sequences: Sequence[Sequence_], batch_size: int, pad_token_id: int
) -> dict[str, list[float]]:
    """Per-head top-k accuracy (k in REPORT_TOP_K) over held-out decode positions.

    A position counts for head k only where the sequence has a token k + 1 ahead.
    """
    import torch

    num_heads = heads.config.medusa_num_heads
    hits = {k: np.zeros(num_heads) for k in REPORT_TOP_K}
    counts = np.zeros(num_heads)
    heads.eval()
    with torch.no_grad():
        for begin in range(0, len(sequences), batch_size):
            input_ids, attention, rows, cols, targets = _batch_tensors(
                sequences[begin:begin + batch_size], num_heads, pad_token_id
            )
            if len(rows) == 0:
                continue
            hidden = _hidden_at(model, input_ids, attention, rows, cols)
            logits = heads(hidden.unsqueeze(0))[:, 0]  # [K, n, V]
            top = torch.topk(logits, max(REPORT_TOP_K), dim=-1).indices  # [K, n, top]
            target = targets.T.to(top.device)  # [K, n]
            valid = target >= 0
            counts += valid.sum(dim=1).cpu().numpy()
            for k in REPORT_TOP_K:
                hit = (top[..., :k] == target.unsqueeze(-1)).any(dim=-1) & valid
                hits[k] += hit.sum(dim=1).cpu().numpy()
    safe = np.maximum(counts, 1)
    return {f"top{k}": [round(float(x), 6) for x in hits[k] / safe] for k in REPORT_TOP_K}


def _lr_at(step: int, total: int, settings: TrainSettings) -> float:
    """Linear warm-up then cosine decay to zero."""
    warmup = max(1, round(total * settings.warmup_fraction))
    if step < warmup:
        return settings.learning_rate * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return settings.learning_rate * 0.5 * (1.0 + float(np.cos(np.pi * progress)))


def train_heads(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    output_dir: str | Path,
    settings: TrainSettings,
    model_id: str,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train Medusa-1 heads on ``model`` and save them in ``output_dir``.

    Prompts are split by prompt into train and held-out parts (seeded); targets are
    the model's greedy continuations (cached in ``output_dir/targets.json``).
    Returns the report written to ``output_dir/train_report.json``: settings, final
    training loss, and per-head top-1/top-5 on the held-out split.
    """
    import torch
    from tqdm import tqdm

    from treeopt.model.calibration import split_held_out
    from treeopt.model.profiling import greedy_continuations, new_token_limit, pad_token_id_of

    if settings.num_heads < 1 or settings.num_layers < 0:
        raise TreeoptError("--num-heads must be >= 1 and --num-layers >= 0")
    if settings.epochs < 1:
        raise TreeoptError(f"--epochs must be >= 1, not {settings.epochs}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    state_file = output_dir / STATE_FILE
    if state_file.exists() and not resume:
        raise TreeoptError(
            f"{output_dir} holds an unfinished or finished run ({STATE_FILE}): pass --resume "
            "to continue it or choose another output folder"
        )
    torch.manual_seed(settings.seed)
    eos = getattr(tokenizer, "eos_token_id", None)
    pad = pad_token_id_of(tokenizer, eos)
    kept = [list(p) for p in prompts if new_token_limit(model, len(p), settings.max_new_tokens)]
    if len(kept) < 2:
        raise TreeoptError("train-heads needs at least 2 prompts that fit the model's context")
    continuations = greedy_continuations(
        model, kept, settings.max_new_tokens, eos, output_dir / TARGETS_FILE, model_id,
        batch_size=settings.batch_size, pad_token_id=pad, progress=progress,
    )
    sequences = [Sequence_(p, c) for p, c in zip(kept, continuations, strict=True) if c]
    index = [str(i) for i in range(len(sequences))]
    train_idx, held_idx = split_held_out(index, settings.held_out_fraction, settings.seed)
    train_set = [sequences[int(i)] for i in train_idx]
    held_set = [sequences[int(i)] for i in held_idx]

    heads = init_heads(model, settings, model_id)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=settings.learning_rate)
    start_epoch = 0
    if resume and state_file.exists():
        from medusa_runtime.heads import MedusaHeads

        saved = torch.load(state_file, map_location="cpu", weights_only=False)
        if saved.get("settings") != asdict(settings):
            raise TreeoptError(f"{state_file} was made with other settings: use another folder")
        heads.load_state_dict(MedusaHeads.from_pretrained(output_dir).state_dict())
        optimizer.load_state_dict(saved["optimizer"])
        start_epoch = int(saved["epoch"])
    weights = head_loss_weights(settings.num_heads)
    steps_per_epoch = (len(train_set) + settings.batch_size - 1) // settings.batch_size
    total_steps = steps_per_epoch * settings.epochs
    tokens_per_epoch = sum(len(s.ids) for s in train_set)
    bar = tqdm(total=tokens_per_epoch * (settings.epochs - start_epoch), unit="tok",
               unit_scale=True, desc="train-heads", disable=not progress, leave=False)
    last_loss = float("nan")
    started = time.perf_counter()
    for epoch in range(start_epoch, settings.epochs):
        heads.train()
        order = list(range(len(train_set)))
        random.Random(settings.seed * 1_000_003 + epoch).shuffle(order)
        for step_in_epoch, begin in enumerate(range(0, len(order), settings.batch_size)):
            batch = [train_set[i] for i in order[begin:begin + settings.batch_size]]
            input_ids, attention, rows, cols, targets = _batch_tensors(
                batch, settings.num_heads, pad
            )
            if len(rows):
                hidden = _hidden_at(model, input_ids, attention, rows, cols)
                device = next(heads.parameters()).device
                logits = heads(hidden.unsqueeze(0).to(device))[:, 0]
                loss = medusa_loss(logits, targets.to(device), weights)
                for group in optimizer.param_groups:
                    group["lr"] = _lr_at(epoch * steps_per_epoch + step_in_epoch, total_steps,
                                         settings)
                if loss.requires_grad:  # False only when no head has a target here
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    last_loss = float(loss.detach())
            bar.update(sum(len(s.ids) for s in batch))
            bar.set_postfix(epoch=epoch + 1, loss=f"{last_loss:.3f}")
        # Checkpoint: heads in the runtime's layout + optimizer state for --resume.
        heads.save_pretrained(output_dir)
        with atomic_path(state_file) as tmp:
            torch.save({"settings": asdict(settings), "optimizer": optimizer.state_dict(),
                        "epoch": epoch + 1}, tmp)
    bar.close()
    accuracy = held_out_accuracy(model, heads, held_set, settings.batch_size, pad)
    report = {
        "model": model_id,
        "settings": asdict(settings),
        "head_loss_weights": weights,
        "train_prompts": len(train_set),
        "held_out_prompts": len(held_set),
        "train_tokens": tokens_per_epoch,
        "final_train_loss": round(last_loss, 6) if last_loss == last_loss else None,
        "train_seconds": round(time.perf_counter() - started, 2),
        "held_out_accuracy": accuracy,
    }
    atomic_write_text(output_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return report
