"""Medusa head training: Medusa-1 (frozen base, heads only) and Medusa-2 (joint, LoRA).

Recipe of the Medusa paper (Cai et al. 2024, "Medusa: Simple LLM Inference
Acceleration Framework with Multiple Decoding Heads", arXiv:2401.10774, Sec. 2.2):

- Medusa-1: the base model is frozen; only the heads train.
- Head k's cross-entropy is weighted ``HEAD_LOSS_DECAY ** k`` (k = 1..K): later
  heads are harder and matter less, since a token k deep is only used when all
  k - 1 before it were accepted.
- Self-distillation (Sec. 2.3.2): the targets are the model's own greedy
  continuations of the calibration prompts, which are exactly what greedy
  verification will accept.
- Medusa-2 (``joint``, Sec. 2.2.2): the backbone trains too, through LoRA, with
  ``lambda_0 x backbone loss + sum_k 0.8^k head-k loss``; see
  :mod:`treeopt.model.train_joint`.

Training positions are those decoding visits (the last prompt token onwards), as
in :mod:`treeopt.model.profiling`. After every epoch the run's state is saved in
``output_dir`` (trainable tensors and optimizer in safetensors, the rest in
``training_state.json``: no pickle is ever loaded), which ``resume=True`` continues.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from treeopt.core.atomic import atomic_path, atomic_write_text, output_set
from treeopt.errors import TreeoptError, first_line
from treeopt.files.jsondoc import parse_json, read_text
from treeopt.model.distributed import (
    all_reduce_sum,
    broadcast_tensors,
    current_world,
    leave_together,
    local_share,
    rank_device,
    run_on_every_rank,
    summed_counts,
    sync_gradients,
)
from treeopt.model.profiling import Sequence_, hidden_at
from treeopt.model.training import (
    BACKBONE_LOSSES,
    CE_LAMBDA0,
    DEFAULT_EPOCHS,
    DEFAULT_HEADS_LR,
    DISTILL_LAMBDA0,
    HEAD_LOSS_DECAY,
    HEADS_LR_RATIO,
    MAX_DEFAULT_EPOCHS,
    MIN_DEFAULT_STEPS,
    Batch,
    JointSettings,
    LossTotals,
    Trainee,
    TrainSettings,
    head_loss_weights,
    init_heads,
    make_batch,
    medusa_loss,
)

# The settings, batches and losses live in treeopt.model.training; they are part of
# this module's API too (one import for a training script).
__all__ = [
    "BACKBONE_LOSSES",
    "CACHE_ENV",
    "CE_LAMBDA0",
    "DEFAULT_EPOCHS",
    "DEFAULT_HEADS_LR",
    "DISTILL_LAMBDA0",
    "HEADS_LR_RATIO",
    "HEAD_LOSS_DECAY",
    "MAX_DEFAULT_EPOCHS",
    "MIN_DEFAULT_STEPS",
    "OPTIMIZER_FILE",
    "REPORT_FILE",
    "REPORT_TOP_K",
    "STATE_FILE",
    "STATE_FORMAT",
    "TARGETS_FILE",
    "TRAINABLE_FILE",
    "Batch",
    "JointSettings",
    "TrainSettings",
    "Trainee",
    "check_output_folder",
    "default_cache_dir",
    "head_loss_weights",
    "held_out_accuracy",
    "init_heads",
    "load_state",
    "make_batch",
    "medusa_loss",
    "near_chance_warning",
    "read_state",
    "save_state",
    "shared_targets_file",
    "train_heads",
    "train_heads_from",
]
STATE_FILE = "training_state.json"
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
REPORT_FILE = "train_report.json"
TARGETS_FILE = "targets.json"
STATE_FORMAT = "treeopt.training-state/1"
# Held-out accuracies reported: top-1 and top-5, as the Medusa training logs do.
REPORT_TOP_K = (1, 5)
# Greedy targets shared by runs live here unless TREEOPT_CACHE_DIR says otherwise.
CACHE_ENV = "TREEOPT_CACHE_DIR"


def held_out_accuracy(
    model: Any, heads: Any, sequences: Sequence[Sequence_], batch_size: int, pad_token_id: int
) -> dict[str, list[float]]:
    """Per-head top-k accuracy (k in REPORT_TOP_K) over held-out decode positions.

    A position counts for head k only where the sequence has a token k + 1 ahead.
    Also ``baseline_top1``: per head, how often the single most common target token
    is right (what a head that learned nothing but the token frequencies scores).
    """
    import torch

    num_heads = heads.config.medusa_num_heads
    hits = {k: np.zeros(num_heads) for k in REPORT_TOP_K}
    counts = np.zeros(num_heads)
    seen: list[np.ndarray] = []
    heads.eval()
    with torch.no_grad():
        for begin in range(0, len(sequences), batch_size):
            batch = make_batch(sequences[begin:begin + batch_size], num_heads, pad_token_id)
            if len(batch.rows) == 0:
                continue
            hidden = hidden_at(model, batch.input_ids, batch.mask, batch.rows, batch.cols)
            parameter = next(heads.parameters())
            logits = heads(hidden.unsqueeze(0).to(parameter.device, parameter.dtype))[:, 0]
            top = torch.topk(logits, max(REPORT_TOP_K), dim=-1).indices  # [K, n, top]
            target = batch.targets.T.to(top.device)  # [K, n]
            valid = target >= 0
            counts += valid.sum(dim=1).cpu().numpy()
            seen.append(batch.targets.numpy())
            for k in REPORT_TOP_K:
                hit = (top[..., :k] == target.unsqueeze(-1)).any(dim=-1) & valid
                hits[k] += hit.sum(dim=1).cpu().numpy()
    safe = np.maximum(counts, 1)
    result = {f"top{k}": [round(float(x), 6) for x in hits[k] / safe] for k in REPORT_TOP_K}
    result["baseline_top1"] = _majority_rate(seen, num_heads)
    return result


def _majority_rate(targets: list[np.ndarray], num_heads: int) -> list[float]:
    """Per head: share of its targets equal to its most common target."""
    if not targets:
        return [0.0] * num_heads
    stacked = np.concatenate(targets)
    rates = []
    for k in range(num_heads):
        column = stacked[:, k][stacked[:, k] >= 0]
        rates.append(round(float(np.bincount(column).max() / len(column)), 6)
                     if len(column) else 0.0)
    return rates


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + float(np.cos(np.pi * progress)))


# ------------------------------------------------------------------ checks and state
def make_output_folder(output_dir: str | Path, settings: Any, resume: bool,
                       overwrite: bool) -> Path:
    """:func:`check_output_folder`, then the folder made (one line if it cannot be)."""
    output_dir = check_output_folder(output_dir, settings, resume, overwrite)
    try:
        output_dir.mkdir(exist_ok=True)
    except OSError as exc:
        raise TreeoptError(f"cannot create {output_dir}: {exc.strerror or exc}") from None
    return output_dir


def check_output_folder(output_dir: str | Path, settings: TrainSettings, resume: bool,
                        overwrite: bool = False) -> Path:
    """The output folder, refused in one line before anything loads.

    Guarantees no earlier file is lost by accident: a folder that exists and is not
    empty is written into only when it holds this run's own saved state and
    ``resume`` continues it (same settings, read from ``training_state.json`` and
    validated like any input), or when ``overwrite`` says its files may be replaced.
    Published or copied heads, an earlier run and unrelated files are refused.
    """
    import os

    output_dir = Path(output_dir)
    if resume and overwrite:
        raise TreeoptError("give --resume (continue the run in the folder) or --overwrite "
                           "(replace its files), not both")
    if output_dir.exists() and not output_dir.is_dir():
        raise TreeoptError(f"cannot write into {output_dir}: it is a file, give a folder")
    nearest = output_dir if output_dir.exists() else output_dir.parent
    if not nearest.is_dir() or not os.access(nearest, os.W_OK | os.X_OK):
        raise TreeoptError(f"cannot write into {output_dir}: {nearest} is not a writable folder")
    try:
        entries = sorted(entry.name for entry in os.scandir(output_dir)) \
            if output_dir.is_dir() else []
    except OSError as exc:
        raise TreeoptError(f"cannot read folder {output_dir}: {exc.strerror or exc}") from None
    state_file = output_dir / STATE_FILE
    if not entries or overwrite:
        return output_dir
    if STATE_FILE not in entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise TreeoptError(
            f"{output_dir} is not empty ({shown}) and holds no train-heads run to "
            f"--resume: pass --overwrite to replace its files, or choose a new folder")
    if not resume:
        raise TreeoptError(
            f"{output_dir} holds an unfinished or finished run ({STATE_FILE}): pass --resume "
            "to continue it, --overwrite to start over in it, or choose another folder"
        )
    saved = read_state(output_dir)
    if saved["settings"] != settings.to_json():
        raise TreeoptError(f"{state_file} was made with other settings: use another folder "
                           "(or --overwrite to start over in this one)")
    return output_dir


def read_state(output_dir: Path) -> dict[str, Any]:
    """``training_state.json`` of a run, checked (one-line error naming the file)."""
    path = output_dir / STATE_FILE
    hint = f"delete {output_dir} (or choose another folder) to start over"
    try:
        state = parse_json(read_text(path, "training state"), "it")
    except TreeoptError as exc:
        raise TreeoptError(f"cannot read {path}: {exc}; {hint}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TreeoptError(f"{path} is not a {STATE_FORMAT} file; {hint}")
    epoch = state.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0 or \
            not isinstance(state.get("settings"), dict) or \
            not isinstance(state.get("param_groups"), list):
        raise TreeoptError(f"{path}: bad epoch, settings or param_groups; {hint}")
    return state


def save_state(output_dir: Path, trainable: dict[str, Any], optimizer: Any, epoch: int,
               settings: TrainSettings) -> None:
    """Trainable tensors + optimizer moments in safetensors, the rest in JSON.

    The JSON is written last, so a run killed mid-save resumes from the epoch before.
    """
    from safetensors.torch import save_file

    tensors = {name: value.detach().contiguous().cpu() for name, value in trainable.items()}
    moments = {}
    optimizer_state = optimizer.state_dict()
    for index, values in optimizer_state["state"].items():
        for key, value in values.items():
            moments[f"{index}.{key}"] = value.detach().contiguous().cpu().reshape(value.shape)
    for name, data in ((TRAINABLE_FILE, tensors), (OPTIMIZER_FILE, moments)):
        with atomic_path(output_dir / name) as tmp:
            save_file(data, str(tmp))
    document = {"format": STATE_FORMAT, "epoch": epoch, "settings": settings.to_json(),
                "param_groups": optimizer_state["param_groups"]}
    atomic_write_text(output_dir / STATE_FILE, json.dumps(document, indent=2) + "\n")


def load_state(output_dir: Path, trainable: dict[str, Any], optimizer: Any) -> int:
    """Restore ``trainable`` and ``optimizer`` from a saved run; the epochs it finished."""
    import torch

    from medusa_runtime.heads import read_weights

    state = read_state(output_dir)
    tensors = read_weights(output_dir / TRAINABLE_FILE)
    moments = read_weights(output_dir / OPTIMIZER_FILE)
    if set(tensors) != set(trainable) or any(
        tensors[name].shape != value.shape for name, value in trainable.items()
    ):
        raise TreeoptError(f"{output_dir / TRAINABLE_FILE} does not match this run's "
                           "parameters: delete the folder to start over")
    with torch.no_grad():
        for name, value in trainable.items():
            value.copy_(tensors[name])
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in moments.items():
        index, _, name = key.partition(".")
        per_param.setdefault(int(index), {})[name] = value
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise TreeoptError(f"{output_dir / OPTIMIZER_FILE}: {first_line(exc)}; delete the "
                           "folder to start over") from None
    return int(state["epoch"])


# ------------------------------------------------------------------ the run
def _medusa1_trainee(model: Any, settings: TrainSettings, model_id: str) -> Trainee:
    import torch

    heads = init_heads(model, settings, model_id)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=settings.learning_rate)
    trainable = {f"heads.{name}": p for name, p in heads.named_parameters()}
    return Trainee(model, heads, optimizer, trainable, [settings.learning_rate])


def _batch_loss(trainee: Trainee, batch: Batch, weights: list[float], step: int,
                total: int, totals: LossTotals | None = None) -> Any:
    """The loss of one batch: the heads' (Medusa-1) or the joint one (Medusa-2)."""
    import torch

    if trainee.joint is not None:
        return trainee.joint.loss(trainee, batch, weights, step, total, totals)
    with torch.no_grad():
        hidden = hidden_at(trainee.model, batch.input_ids, batch.mask, batch.rows, batch.cols)
    parameter = next(trainee.heads.parameters())
    logits = trainee.heads(hidden.unsqueeze(0).to(parameter.device, parameter.dtype))[:, 0]
    return medusa_loss(logits, batch.targets.to(parameter.device), weights, totals)


@dataclass(frozen=True)
class StepPlan:
    """Where one optimizer step is: its index, the run's steps, the LR factor, loss weights."""

    step: int
    total: int
    lr_factor: float
    weights: list[float]


def _train_step(trainee: Trainee, chosen: list[Sequence_], num_heads: int, pad: int,
                plan: StepPlan) -> float | None:
    """One optimizer step on the global batch ``chosen``: its loss, or None if none was taken.

    Under a launcher each rank takes its share of ``chosen`` (balanced by tokens),
    divides its loss sums by the whole batch's counts and the ranks sum their
    gradients, so every rank takes the one-process step and reports its loss.
    """
    import torch

    world = current_world()
    local = local_share(chosen, lambda seq: len(seq.ids))
    batch = make_batch(local, num_heads, pad) if local else None
    rows = 0 if batch is None else len(batch.rows)
    totals = None
    if world.distributed:
        valid = (batch.targets >= 0).sum(dim=0).tolist() if batch is not None and rows \
            else [0] * num_heads
        counts = summed_counts([*valid, rows])
        totals = LossTotals(tuple(counts[:-1]), counts[-1])
    if not (rows if totals is None else totals.rows):
        return None
    for group, base_lr in zip(trainee.optimizer.param_groups, trainee.base_lrs, strict=True):
        group["lr"] = base_lr * plan.lr_factor
    loss = _batch_loss(trainee, batch, plan.weights, plan.step, plan.total, totals) \
        if batch is not None and rows else None
    trainee.optimizer.zero_grad(set_to_none=True)
    if loss is not None and loss.requires_grad:  # False only when no head has a target here
        loss.backward()
    if totals is None:
        if loss is None or not loss.requires_grad:
            return None
    elif not sync_gradients(list(trainee.trainable.values())):
        return None
    trainee.optimizer.step()
    value = torch.tensor([0.0 if loss is None else float(loss.detach())], dtype=torch.float64)
    return float(all_reduce_sum(value)[0])


def _run_epochs(trainee: Trainee, train_set: list[Sequence_], settings: TrainSettings,
                output_dir: Path, start_epoch: int, pad: int, progress: bool) -> list[float]:
    """Train from ``start_epoch``; save the state after each epoch (rank 0). Each step's loss."""
    from tqdm import tqdm

    weights = head_loss_weights(settings.num_heads)
    steps_per_epoch = -(-len(train_set) // settings.batch_size)
    epochs = settings.epochs_for(steps_per_epoch)
    total = steps_per_epoch * epochs
    warmup = (settings.joint.warmup_steps if settings.joint is not None
              else max(1, round(total * settings.warmup_fraction)))
    bar = tqdm(total=sum(len(s.ids) for s in train_set) * (epochs - start_epoch), unit="tok",
               unit_scale=True, desc="train-heads", disable=not progress, leave=False)
    losses: list[float] = []
    for epoch in range(start_epoch, epochs):
        trainee.heads.train()
        order = list(range(len(train_set)))
        random.Random(settings.seed * 1_000_003 + epoch).shuffle(order)
        for step_in_epoch, begin in enumerate(range(0, len(order), settings.batch_size)):
            chosen = [train_set[i] for i in order[begin:begin + settings.batch_size]]
            step = epoch * steps_per_epoch + step_in_epoch
            plan = StepPlan(step, total, _lr_factor(step, total, min(warmup, total)), weights)
            loss = _train_step(trainee, chosen, settings.num_heads, pad, plan)
            if loss is not None:
                losses.append(loss)
            bar.update(sum(len(s.ids) for s in chosen))
            bar.set_postfix(epoch=f"{epoch + 1}/{epochs}",
                            loss=f"{losses[-1] if losses else float('nan'):.3f}")
        if not current_world().is_main:  # the ranks hold the same weights: one writer
            continue
        with output_set():  # state and heads of one epoch: all written, or none
            save_state(output_dir, trainee.trainable, trainee.optimizer, epoch + 1, settings)
            if trainee.joint is None:  # Medusa-1 heads usable after every epoch
                trainee.heads.save_pretrained(output_dir)
    bar.close()
    return losses


def _training_data(model: Any, tokenizer: Any, prompts: Sequence[list[int]],
                   settings: TrainSettings, targets_file: Path, model_id: str,
                   progress: bool) -> tuple[list[Sequence_], list[Sequence_], int]:
    """(train sequences, held-out sequences, pad id): greedy targets, split by prompt."""
    from treeopt.model.calibration import split_held_out
    from treeopt.model.profiling import greedy_continuations, new_token_limit, pad_token_id_of

    eos = getattr(tokenizer, "eos_token_id", None)
    pad = pad_token_id_of(tokenizer, eos)
    kept = [list(p) for p in prompts if new_token_limit(model, len(p), settings.max_new_tokens)]
    if len(kept) < 2:
        raise TreeoptError("train-heads needs at least 2 prompts that fit the model's context")
    generate = greedy_continuations
    if current_world().distributed:  # each rank generates a shard; rank 0 caches them all
        from treeopt.model.profiling import sharded_continuations as generate
    continuations = generate(
        model, kept, settings.max_new_tokens, eos, targets_file, model_id,
        batch_size=settings.batch_size, pad_token_id=pad, progress=progress,
    )
    sequences = [Sequence_(p, c) for p, c in zip(kept, continuations, strict=True) if c]
    index = [str(i) for i in range(len(sequences))]
    train_idx, held_idx = split_held_out(index, settings.held_out_fraction, settings.seed)
    return ([sequences[int(i)] for i in train_idx], [sequences[int(i)] for i in held_idx], pad)


def near_chance_warning(accuracy: dict[str, list[float]]) -> str | None:
    """A warning when head 1 learned no more than its targets' most common token."""
    top1, baseline = accuracy["top1"][0], accuracy["baseline_top1"][0]
    if top1 > baseline:
        return None
    return (f"held-out head-1 top-1 {top1:.3f} is no better than always guessing the most "
            f"common token ({baseline:.3f}): the heads learned nearly nothing; train longer "
            "(--epochs), on more prompts, or with a higher --lr")


def train_heads(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    output_dir: str | Path,
    settings: TrainSettings,
    model_id: str,
    resume: bool = False,
    progress: bool = True,
    targets_file: Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any] | None:
    """Train Medusa heads on ``model`` and save them in ``output_dir``.

    Medusa-1 (``settings.joint`` None) writes heads for the unchanged model;
    Medusa-2 writes a merged ``medusa-1.0`` checkpoint (fine-tuned model + heads).
    Prompts are split by prompt into train and held-out parts (seeded); targets are
    the model's greedy continuations (cached in ``targets_file``, default
    ``output_dir/targets.json``). Returns the report written to
    ``output_dir/train_report.json``: settings, final training loss, per-head
    top-1/top-5 on the held-out split and a warning when they are near chance.

    Under a launcher (``torchrun``/``accelerate launch``) the ranks train data
    parallel: same global batches, each rank a share, gradients summed, so the loss
    curve is the one-process one within float rounding (LoRA dropout aside: its
    masks are drawn per rank). Greedy targets are generated in shards and cached
    once by rank 0; rank 0 alone writes checkpoints and the report (resume needs
    ``output_dir`` visible to every rank); the others return None.
    """
    import torch

    world = current_world()
    progress = progress and world.is_main
    output_dir = make_output_folder(output_dir, settings, resume, overwrite)
    torch.manual_seed(settings.seed)
    train_set, held_set, pad = _training_data(
        model, tokenizer, prompts, settings, targets_file or output_dir / TARGETS_FILE,
        model_id, progress)
    if settings.joint is not None:
        from treeopt.model.train_joint import joint_trainee

        trainee = joint_trainee(model, settings, model_id)
    else:
        trainee = _medusa1_trainee(model, settings, model_id)
    start_epoch = 0
    if resume and (output_dir / STATE_FILE).exists():
        start_epoch = load_state(output_dir, trainee.trainable, trainee.optimizer)
    broadcast_tensors(list(trainee.trainable.values()))  # every rank starts from rank 0's
    started = time.perf_counter()
    losses = _run_epochs(trainee, train_set, settings, output_dir, start_epoch, pad, progress)
    seconds = time.perf_counter() - started
    # Rank 0 evaluates and writes; the others wait, so a failure there fails them all.
    report = run_on_every_rank(lambda: _finish(trainee, tokenizer, output_dir, settings,
                                               model_id, (train_set, held_set, pad), losses,
                                               seconds) if world.is_main else None)
    leave_together()
    return report


def _finish(trainee: Trainee, tokenizer: Any, output_dir: Path, settings: TrainSettings,
            model_id: str, data: tuple[list[Sequence_], list[Sequence_], int],
            losses: list[float], seconds: float) -> dict[str, Any]:
    """Held-out accuracy, the Medusa-2 checkpoint and ``train_report.json``; the report."""
    train_set, held_set, pad = data
    trainee.model.eval()
    accuracy = held_out_accuracy(trainee.model, trainee.heads, held_set, settings.batch_size, pad)
    if trainee.joint is not None:
        trainee.joint.write_checkpoint(trainee, tokenizer, output_dir)
    steps_per_epoch = -(-len(train_set) // settings.batch_size)
    report = {
        "model": model_id,
        "kind": "medusa-2" if settings.joint is not None else "medusa-1",
        "settings": settings.to_json(),
        "epochs": settings.epochs_for(steps_per_epoch),
        "head_loss_weights": head_loss_weights(settings.num_heads),
        "train_prompts": len(train_set),
        "held_out_prompts": len(held_set),
        "train_tokens": sum(len(s.ids) for s in train_set),
        "final_train_loss": round(losses[-1], 6) if losses else None,
        "train_loss_per_step": [round(loss, 6) for loss in losses],
        "train_seconds": round(seconds, 2),
        "world_size": current_world().size,
        "held_out_accuracy": accuracy,
        "warning": near_chance_warning(accuracy),
    }
    atomic_write_text(output_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return report


def default_cache_dir() -> Path:
    """``$TREEOPT_CACHE_DIR``, else ``~/.cache/treeopt``."""
    import os

    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "treeopt"


def shared_targets_file(model: Any, model_id: str, cache_dir: Path) -> Path:
    """The greedy-targets cache for this model's exact weights in ``cache_dir``.

    Keyed by the model id and a digest of its parameters (a fine-tuned copy under the
    same name gets its own file); within it each prompt is keyed by its tokens and
    the new-token budget, so model + data + length that match are never regenerated.
    """
    import hashlib

    import torch

    with torch.no_grad():
        sums = [f"{float(p.float().sum()):.6g}" for p in model.parameters()]
    digest = hashlib.sha1(json.dumps([model_id, sums]).encode()).hexdigest()[:16]
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TreeoptError(f"cannot create the targets cache {cache_dir}: "
                           f"{exc.strerror or exc}") from None
    return cache_dir / f"targets-{digest}.json"


def train_heads_from(
    model: str, data: str, output_dir: Path, settings: TrainSettings, *,
    max_prompts: int | None = None, turns: str = "first", chat_template: bool = True,
    device: str = "cpu", dtype: str = "auto", device_map: str | None = None,
    resume: bool = False, progress: bool = True, targets_cache: Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any] | None:
    """``treeopt train-heads``: checks, prompts, model, shared targets, then :func:`train_heads`.

    Every check that needs no model (settings, output folder and its saved run,
    ``init_heads``, peft/QLoRA availability, the prompts) runs before the model loads.
    """
    from treeopt.model.calibration import encode_prompts, read_prompts
    from treeopt.model.loading import load_medusa

    check_output_folder(output_dir, settings, resume, overwrite)
    if settings.joint is not None:
        from treeopt.model.train_joint import check_init_heads, check_joint_available

        check_joint_available(settings.joint)
        check_init_heads(settings.joint, settings)
    texts = read_prompts(data, max_prompts=max_prompts, seed=settings.seed, turns=turns)
    if len(texts) < 2:
        raise TreeoptError(f"{data}: train-heads needs at least 2 prompts (train and held out), "
                           f"found {len(texts)}")
    four_bit = settings.joint is not None and settings.joint.qlora
    loaded = load_medusa(model, device=rank_device(device), dtype=dtype,
                         device_map=device_map,
                         need_heads=False, four_bit=four_bit, quiet=not progress)
    prompt_ids = encode_prompts(loaded.tokenizer, texts, chat_template=chat_template)
    targets = shared_targets_file(loaded.model, loaded.model_id,
                                  targets_cache or default_cache_dir())
    return train_heads(loaded.model, loaded.tokenizer, prompt_ids, output_dir, settings,
                       model_id=loaded.model_id, resume=resume, progress=progress,
                       targets_file=targets, overwrite=overwrite)
