"""EAGLE drafter training (``train-heads --eagle-version 1|3``): self-distillation.

The recipe of the EAGLE repo (SafeAILab/EAGLE at cb7e0841):

- Data: the target's own greedy continuations of the prompts (the greedy-targets
  cache of :mod:`treeopt.model.train_heads`, shared with Medusa runs) and the
  target's hidden states over them, recomputed each batch (the model is frozen).
- EAGLE-1/2 (``eagle/train/main.py``): the drafter reads ``[embed(x_{t+1}); f_t]``
  (``f_t`` the target's last hidden state, after its final norm: what ``lm_head``
  reads) and predicts ``f_{t+1}``. Loss ``v_w x SmoothL1(f^_{t+1}, f_{t+1}) + p_w x
  CE(target's distribution at t+1, lm_head(f^_{t+1}))`` with ``v_w = 1``, ``p_w =
  0.1`` (the repo's train config).
- EAGLE-3 (``eagle/traineagle3/cnets.py``, ``main.py``): no feature regression.
  ``fc`` reads the target's hidden states entering layers ``2, L // 2, L - 3``
  (``modeling_llama_kv.py``; vLLM's ``aux_hidden_state_layers`` in
  ``llama_eagle3.py`` are the same), the loss is the cross-entropy to the target's
  distribution restricted to the draft vocabulary at positions whose target token
  is in it, over ``ttt_steps`` training-time-test steps where the drafter consumes
  its own outputs (step k weighted ``0.8 ** k``). The draft vocabulary is the
  ``draft_vocab_size`` most frequent tokens of the training continuations
  (``scandata``), giving ``d2t``/``t2d``.

Loss positions are those decoding visits (the last prompt token onwards). State is
saved after every epoch with :func:`treeopt.model.train_heads.save_state` and the
drafter written in the EAGLE layout (``config.json`` + ``model.safetensors``).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from treeopt.core.atomic import atomic_path, atomic_write_text
from treeopt.errors import TreeoptError
from treeopt.model.profiling import Sequence_

EAGLE_VERSIONS = (1, 3)
WEIGHTS_FILE = "model.safetensors"
# eagle/train/main.py's train_config: "p_w": 0.1, "v_w": 1.0.
TOKEN_LOSS_WEIGHT = 0.1
FEATURE_LOSS_WEIGHT = 1.0
# eagle/traineagle3/main.py: ploss_weight = [0.8 ** i for i in range(length)].
TTT_DECAY = 0.8
# EAGLE-3's shipped draft vocabulary (traineagle3/config.json) on a 128k target.
EAGLE3_DRAFT_VOCAB = 32000


@dataclass(frozen=True)
class EagleSettings:
    """One ``train-heads --eagle-version`` run (AdamW, warm-up then cosine decay).

    ``ttt_steps``: EAGLE-3 training-time-test steps (the repo uses 7; fewer are
    enough for short drafts and train faster). ``draft_vocab_size`` None: the
    target's vocabulary halved, at most 32000. ``epochs`` None: ``default_epochs``.
    """

    eagle_version: int = 1
    epochs: int | None = None
    learning_rate: float = 3e-3
    batch_size: int = 8
    warmup_fraction: float = 0.05
    held_out_fraction: float = 0.1
    max_new_tokens: int = 256
    seed: int = 0
    ttt_steps: int = 3
    draft_vocab_size: int | None = None
    init_from_target: bool = True

    def __post_init__(self) -> None:
        if self.eagle_version not in EAGLE_VERSIONS:
            raise TreeoptError(f"eagle version must be 1 or 3, not {self.eagle_version}")
        for name in ("batch_size", "max_new_tokens", "ttt_steps"):
            if getattr(self, name) < 1:
                raise TreeoptError(f"{name} must be >= 1, not {getattr(self, name)}")
        if self.epochs is not None and self.epochs < 1:
            raise TreeoptError(f"epochs must be >= 1, not {self.epochs}")
        if self.draft_vocab_size is not None and self.draft_vocab_size < 2:
            raise TreeoptError(f"draft_vocab_size must be >= 2, not {self.draft_vocab_size}")
        if not self.learning_rate > 0 or self.learning_rate == float("inf"):
            raise TreeoptError(f"learning_rate must be a finite number > 0, "
                               f"not {self.learning_rate}")
        if not 0.0 < self.held_out_fraction < 1.0:
            raise TreeoptError(f"held-out fraction must be in (0, 1), "
                               f"not {self.held_out_fraction}")

    def epochs_for(self, steps_per_epoch: int) -> int:
        """``epochs``, else the trainers' one default rule (:func:`training.epochs_for`)."""
        from treeopt.model.training import epochs_for

        return epochs_for(self.epochs, steps_per_epoch)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------ target side
def aux_layer_ids(num_layers: int) -> list[int]:
    """EAGLE-3's low/mid/high layers: the hidden states entering these layers.

    ``eagle/traineagle3/modeling_llama_kv.py`` keeps ``hidden_states`` before layer
    ``idx`` for ``idx in (2, L // 2, L - 3)``; vLLM's default
    ``aux_hidden_state_layers`` is the same triple. Clamped into ``[0, L - 1]``.
    """
    return [min(max(0, i), num_layers - 1) for i in (2, num_layers // 2, num_layers - 3)]


@dataclass
class TargetBatch:
    """A right-padded batch with the target's features and logits (no gradients).

    ``last`` [B, T, H]: final hidden (post-norm); ``aux`` [B, T, 3H] (EAGLE-3);
    ``logits`` [B, T, V]; ``mask`` [B, T] bool: decode positions t (t >= prompt - 1)
    with a real token at t + 1.
    """

    input_ids: Any
    last: Any
    aux: Any
    logits: Any
    mask: Any


def target_batch(model: Any, batch: Sequence[Sequence_], pad: int, version: int) -> TargetBatch:
    """Run the frozen target once over ``batch`` (prompt + greedy continuation)."""
    import torch

    from medusa_runtime.padding import pad_rows
    from treeopt.model.loading import decoder_of, input_device

    input_ids, attention = pad_rows([seq.ids for seq in batch], pad, left=False)
    device = input_device(model)
    with torch.no_grad():
        out = decoder_of(model)(input_ids=input_ids.to(device),
                                attention_mask=attention.long().to(device),
                                output_hidden_states=version == 3)
        last = out.last_hidden_state.float()
        logits = model.get_output_embeddings()(last).float()
        aux = None
        if version == 3:
            layers = aux_layer_ids(len(out.hidden_states) - 1)
            aux = torch.cat([out.hidden_states[i].float() for i in layers], dim=-1)
    mask = torch.zeros(input_ids.shape, dtype=torch.bool)
    for row, seq in enumerate(batch):
        mask[row, max(0, len(seq.prompt) - 1):len(seq.ids) - 1] = True
    return TargetBatch(input_ids.to(last.device), last, aux, logits, mask.to(last.device))


def draft_vocabulary(sequences: Sequence[Sequence_], vocab_size: int,
                     draft_size: int) -> tuple[Any, Any]:
    """``(d2t, t2d)``: the ``draft_size`` most frequent continuation tokens.

    As EAGLE-3's ``scandata``: the chosen ids sorted, ``d2t[i] = used[i] - i`` (the
    target id is ``i + d2t[i]``), ``t2d`` a bool mask over the target vocabulary.
    Ties and a short supply of distinct tokens are filled by lowest id, so the draft
    vocabulary always has exactly ``draft_size`` entries.
    """
    import torch

    counts = Counter(token for seq in sequences for token in seq.continuation)
    ranked = [token for token, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    chosen = set(ranked[:draft_size])
    for token in range(vocab_size):
        if len(chosen) >= draft_size:
            break
        chosen.add(token)
    used = sorted(chosen)
    d2t = torch.tensor([token - i for i, token in enumerate(used)], dtype=torch.long)
    t2d = torch.zeros(vocab_size, dtype=torch.bool)
    t2d[used] = True
    return d2t, t2d


# ------------------------------------------------------------------ losses
def _shift(x: Any, k: int) -> Any:
    """``x`` moved k positions left along dim 1 (the tail repeats the last entry)."""
    import torch

    if k == 0:
        return x
    return torch.cat([x[:, k:], x[:, -1:].expand(x.shape[0], k, *x.shape[2:])], dim=1)


def eagle1_loss(drafter: Any, tb: TargetBatch) -> tuple[Any, list[Any]]:
    """EAGLE-1 loss and per-position top-1 hits (drafter argmax == target argmax)."""
    import torch
    from torch.nn import functional as F

    positions = torch.arange(tb.input_ids.shape[1], device=tb.last.device).expand_as(tb.input_ids)
    predicted, logits, _ = drafter.step(_shift(tb.input_ids, 1), tb.last, positions, [], True)
    mask = tb.mask.float()
    count = mask.sum().clamp(min=1)
    feature = F.smooth_l1_loss(predicted, _shift(tb.last, 1), reduction="none").mean(-1)
    target_p = torch.softmax(_shift(tb.logits, 1), -1)
    token = -(target_p * torch.log_softmax(logits.float(), -1)).sum(-1)
    loss = (FEATURE_LOSS_WEIGHT * (feature * mask).sum() + TOKEN_LOSS_WEIGHT * (token * mask).sum())
    hits = (logits.argmax(-1) == target_p.argmax(-1)) & tb.mask
    return loss / count, [(hits, tb.mask)]


def eagle3_loss(drafter: Any, tb: TargetBatch, steps: int) -> tuple[Any, list[Any]]:
    """EAGLE-3 training-time test: ``steps`` passes, each on the previous one's output."""
    import torch

    positions = torch.arange(tb.input_ids.shape[1], device=tb.aux.device).expand_as(tb.input_ids)
    t2d, d2t = drafter.t2d, drafter.d2t
    hidden, earlier, total, hits = tb.aux, [], 0.0, []
    for k in range(steps):
        hidden, logits, cache = drafter.step(_shift(tb.input_ids, k + 1), hidden, positions,
                                             earlier, k == 0)
        earlier.append(cache)
        target_logits = _shift(tb.logits, k + 1)
        target_top = target_logits.argmax(-1)
        valid = tb.mask & _shift(tb.mask, k) & t2d[target_top]
        if k:  # step k predicts k tokens further: position t + k must be real too
            valid[:, -k:] = False
        target_p = torch.softmax(target_logits[..., t2d], -1)
        token = -(target_p * torch.log_softmax(logits.float(), -1)).sum(-1)
        total = total + TTT_DECAY ** k * (token * valid).sum() / valid.sum().clamp(min=1)
        drafted = logits.argmax(-1) + d2t[logits.argmax(-1)]
        hits.append(((drafted == target_top) & valid, tb.mask & _shift(tb.mask, k)))
    return total, hits


def batch_loss(drafter: Any, tb: TargetBatch, settings: EagleSettings) -> tuple[Any, list[Any]]:
    """The loss of one batch and its (hits, counted) masks per drafting step."""
    if settings.eagle_version == 1:
        return eagle1_loss(drafter, tb)
    return eagle3_loss(drafter, tb, settings.ttt_steps)


# ------------------------------------------------------------------ drafter and files
def drafter_config(model: Any, settings: EagleSettings, model_id: str) -> dict[str, Any]:
    """The drafter's config.json: a one-layer Llama of the target's shape (EAGLE's)."""
    config = model.config
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    rope = getattr(config, "rope_parameters", None) or {}
    document: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": hidden, "intermediate_size": int(config.intermediate_size),
        "num_attention_heads": heads,
        "num_key_value_heads": int(getattr(config, "num_key_value_heads", None) or heads),
        "head_dim": int(getattr(config, "head_dim", None) or hidden // heads),
        "hidden_act": "silu", "num_hidden_layers": 1,
        "rms_norm_eps": float(getattr(config, "rms_norm_eps", 1e-6)),
        "rope_theta": float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))),
        "max_position_embeddings": int(getattr(config, "max_position_embeddings", 2048)),
        "vocab_size": int(model.get_output_embeddings().weight.shape[0]),
        "pad_token_id": 0, "tie_word_embeddings": False, "torch_dtype": "float32",
        "eagle_version": settings.eagle_version, "base_model_name_or_path": model_id,
    }
    if settings.eagle_version == 1:
        document["bias"] = True  # cnets1.py: fc = nn.Linear(2H, H, bias=bias), bias=True
    else:
        layers = int(config.num_hidden_layers)
        document["draft_vocab_size"] = settings.draft_vocab_size or min(
            EAGLE3_DRAFT_VOCAB, document["vocab_size"] // 2)
        document["eagle_aux_hidden_state_layer_ids"] = aux_layer_ids(layers)
    return document


def new_drafter(model: Any, settings: EagleSettings, model_id: str,
                train_set: Sequence[Sequence_]) -> Any:
    """A fresh drafter for ``model`` (EAGLE-3: draft vocabulary from ``train_set``)."""
    import torch

    from treeopt.model.eagle_train_module import EagleTrainDrafter, init_from_target
    from treeopt.model.loading import decoder_of

    config = drafter_config(model, settings, model_id)
    drafter = EagleTrainDrafter(config, settings.eagle_version, model.get_input_embeddings(),
                                model.get_output_embeddings())
    if settings.init_from_target:
        layers = getattr(decoder_of(model), "layers", None)
        init_from_target(drafter, layers[-1] if layers is not None and len(layers) else None)
    if settings.eagle_version == 3:
        d2t, t2d = drafter_vocabulary_for(config, train_set)
        with torch.no_grad():
            drafter.d2t.copy_(d2t)
            drafter.t2d.copy_(t2d)
            used = torch.arange(len(d2t)) + d2t  # start lm_head from the target's rows
            drafter.lm_head.weight.copy_(model.get_output_embeddings().weight[used].float())
    return drafter.to(model.get_output_embeddings().weight.device)


def drafter_vocabulary_for(config: dict[str, Any], train_set: Sequence[Sequence_]) -> Any:
    """:func:`draft_vocabulary` with the config's sizes."""
    return draft_vocabulary(train_set, config["vocab_size"], config["draft_vocab_size"])


def write_drafter(drafter: Any, output_dir: Path) -> None:
    """``config.json`` + ``model.safetensors`` (EAGLE key names), both atomic."""
    from safetensors.torch import save_file

    tensors = {name: value.detach().contiguous().cpu()
               for name, value in drafter.state_dict().items()}
    with atomic_path(output_dir / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    atomic_write_text(output_dir / "config.json", json.dumps(drafter.config, indent=2) + "\n")


# ------------------------------------------------------------------ the run
def _epochs(drafter: Any, optimizer: Any, model: Any, train_set: list[Sequence_],
            settings: EagleSettings, output_dir: Path, start_epoch: int, pad: int,
            progress: bool) -> list[float]:
    """Train from ``start_epoch``, saving state and drafter after each epoch.

    Returns the mean loss of every epoch this call ran.
    """
    from tqdm import tqdm

    from treeopt.model.train_heads import _lr_factor, save_state

    steps_per_epoch = -(-len(train_set) // settings.batch_size)
    epochs = settings.epochs_for(steps_per_epoch)
    total = steps_per_epoch * epochs
    warmup = max(1, round(total * settings.warmup_fraction))
    trainable = {name: p for name, p in drafter.named_parameters()}
    bar = tqdm(total=sum(len(s.ids) for s in train_set) * (epochs - start_epoch), unit="tok",
               unit_scale=True, desc="train-heads (EAGLE)", disable=not progress, leave=False)
    epoch_losses = []
    for epoch in range(start_epoch, epochs):
        drafter.train()
        order = list(range(len(train_set)))
        random.Random(settings.seed * 1_000_003 + epoch).shuffle(order)
        losses = []
        for index, begin in enumerate(range(0, len(order), settings.batch_size)):
            chosen = [train_set[i] for i in order[begin:begin + settings.batch_size]]
            for group in optimizer.param_groups:
                group["lr"] = settings.learning_rate * _lr_factor(
                    epoch * steps_per_epoch + index, total, min(warmup, total))
            loss, _ = batch_loss(drafter, target_batch(model, chosen, pad,
                                                       settings.eagle_version), settings)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.update(sum(len(s.ids) for s in chosen))
            bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{losses[-1]:.3f}")
        epoch_losses.append(sum(losses) / max(1, len(losses)))
        save_state(output_dir, trainable, optimizer, epoch + 1, settings)
        write_drafter(drafter, output_dir)
    bar.close()
    return epoch_losses


def held_out_accuracy(drafter: Any, model: Any, sequences: Sequence[Sequence_],
                      settings: EagleSettings, pad: int) -> dict[str, Any]:
    """Top-1 agreement with the target's greedy token per drafting step, held out.

    ``baseline_top1``: how often the most common next token is right (what a
    drafter that learned only token frequencies scores).
    """
    import numpy as np
    import torch

    steps = 1 if settings.eagle_version == 1 else settings.ttt_steps
    hits, counts = np.zeros(steps), np.zeros(steps)
    nexts: list[int] = []
    drafter.eval()
    with torch.no_grad():
        for begin in range(0, len(sequences), settings.batch_size):
            chosen = list(sequences[begin:begin + settings.batch_size])
            _, per_step = batch_loss(drafter, target_batch(model, chosen, pad,
                                                           settings.eagle_version), settings)
            for k, (hit, counted) in enumerate(per_step):
                hits[k] += float(hit.sum())
                counts[k] += float(counted.sum())
            for seq in chosen:
                nexts.extend(seq.ids[max(1, len(seq.prompt)) + 1:])
    top1 = [round(float(h / max(c, 1)), 6) for h, c in zip(hits, counts, strict=True)]
    baseline = Counter(nexts).most_common(1)[0][1] / len(nexts) if nexts else 0.0
    return {"top1": top1, "baseline_top1": round(baseline, 6)}


def near_chance_warning(accuracy: dict[str, Any]) -> str | None:
    """A warning when step 1 learned no more than the most common token."""
    top1, baseline = accuracy["top1"][0], accuracy["baseline_top1"]
    if top1 > baseline:
        return None
    return (f"held-out drafter top-1 {top1:.3f} is no better than always guessing the most "
            f"common token ({baseline:.3f}): the drafter learned nearly nothing; train longer "
            "(--epochs), on more prompts, or with a higher --lr")


def train_eagle(model: Any, tokenizer: Any, prompts: Sequence[list[int]], output_dir: str | Path,
                settings: EagleSettings, model_id: str, resume: bool = False,
                progress: bool = True, targets_file: Path | None = None,
                overwrite: bool = False) -> dict[str, Any]:
    """Train an EAGLE drafter for ``model``; write it and ``train_report.json`` in ``output_dir``.

    Prompts are split by prompt into train and held-out parts (seeded); targets are
    the model's greedy continuations (cached in ``targets_file``). The drafter is
    usable after every epoch; ``resume`` continues a run from its last saved epoch.
    """
    import torch

    from treeopt.model.train_heads import (
        REPORT_FILE,
        STATE_FILE,
        TARGETS_FILE,
        _training_data,
        load_state,
        make_output_folder,
    )

    output_dir = make_output_folder(output_dir, settings, resume, overwrite)
    torch.manual_seed(settings.seed)
    model.requires_grad_(False)
    train_set, held_set, pad = _training_data(
        model, tokenizer, prompts, settings, targets_file or output_dir / TARGETS_FILE,
        model_id, progress)
    drafter = new_drafter(model, settings, model_id, train_set)
    optimizer = torch.optim.AdamW(drafter.parameters(), lr=settings.learning_rate)
    start_epoch = 0
    if resume and (output_dir / STATE_FILE).exists():
        start_epoch = load_state(output_dir, dict(drafter.named_parameters()), optimizer)
    started = time.perf_counter()
    losses = _epochs(drafter, optimizer, model, train_set, settings, output_dir, start_epoch,
                     pad, progress)
    seconds = time.perf_counter() - started
    accuracy = held_out_accuracy(drafter, model, held_set, settings, pad)
    write_drafter(drafter, output_dir)
    steps_per_epoch = -(-len(train_set) // settings.batch_size)
    report = {
        "model": model_id, "kind": f"eagle-{settings.eagle_version}",
        "settings": settings.to_json(), "epochs": settings.epochs_for(steps_per_epoch),
        "started_at_epoch": start_epoch, "epoch_losses": [round(x, 6) for x in losses],
        "train_prompts": len(train_set), "held_out_prompts": len(held_set),
        "train_tokens": sum(len(s.ids) for s in train_set),
        "train_seconds": round(seconds, 2), "held_out_accuracy": accuracy,
        "warning": near_chance_warning(accuracy),
    }
    atomic_write_text(output_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return report


def train_eagle_from(model: str, data: str, output_dir: Path, settings: EagleSettings, *,
                     max_prompts: int | None = None, turns: str = "first",
                     chat_template: bool = True, device: str = "cpu", dtype: str = "auto",
                     resume: bool = False, progress: bool = True,
                     targets_cache: Path | None = None,
                     overwrite: bool = False) -> dict[str, Any]:
    """``treeopt train-heads --eagle-version``: checks, prompts, model, then :func:`train_eagle`."""
    from treeopt.model.calibration import encode_prompts, read_prompts
    from treeopt.model.loading import load_medusa
    from treeopt.model.train_heads import (
        check_output_folder,
        default_cache_dir,
        shared_targets_file,
    )

    check_output_folder(output_dir, settings, resume, overwrite)
    texts = read_prompts(data, max_prompts=max_prompts, seed=settings.seed, turns=turns)
    if len(texts) < 2:
        raise TreeoptError(f"{data}: train-heads needs at least 2 prompts (train and held out), "
                           f"found {len(texts)}")
    loaded = load_medusa(model, device=device, dtype=dtype, need_heads=False,
                         quiet=not progress)
    prompt_ids = encode_prompts(loaded.tokenizer, texts, chat_template=chat_template)
    targets = shared_targets_file(loaded.model, loaded.model_id,
                                  targets_cache or default_cache_dir())
    return train_eagle(loaded.model, loaded.tokenizer, prompt_ids, output_dir, settings,
                       model_id=loaded.model_id, resume=resume, progress=progress,
                       targets_file=targets, overwrite=overwrite)
