"""Measure a model's Medusa heads: per decoding position, the ranks of the true future tokens.

Two phases, both resumable:

1. **Targets.** Each prompt's greedy continuation (what greedy verification
   accepts) is generated once and cached in ``<output>.targets.json``; a rerun or a
   later ``train-heads`` with the same model reuses it.
2. **Ranks.** Base + heads are teacher-forced over prompt + continuation in
   batches. At position ``t`` (hidden state of ``x_t``) head ``k`` predicts
   ``x_{t+1+k}``; its rank in the head's top-k (``-1``: a miss, or no such token)
   is recorded for k = 1..K. Positions are ``t >= len(prompt) - 1`` (the positions
   decoding visits) unless ``include_prompt``. Partial results are checkpointed in
   ``<output>.partial.npz`` (also on Ctrl-C); ``resume=True`` continues them.
   The finished rank vectors stay in ``<output>.ranks.npz`` for
   :mod:`treeopt.optimize.replay` (tokens per decoding step).

Under ``torchrun``/``accelerate launch`` both phases are split over the ranks by
batches and rank 0 writes a profile identical to one process's (see "several
processes" below and :mod:`treeopt.model.distributed`).

Torch is imported inside functions; everything here runs on loaded objects
(:mod:`treeopt.model.loading` loads them).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medusa_runtime.padding import pad_rows
from treeopt.core.atomic import atomic_path, atomic_write_text, check_output_path
from treeopt.errors import TreeoptError
from treeopt.files.jsondoc import read_json
from treeopt.files.npzdoc import read_npz
from treeopt.model.distributed import (
    World,
    agree,
    all_gather,
    broadcast_from_main,
    current_world,
    gather_to_main,
    leave_together,
    run_on_every_rank,
    shard_by_length,
)

TARGETS_FORMAT = "treeopt.targets/1"
PARTIAL_FORMAT = "treeopt.partial-profile/1"
MISS = -1
# Token ids are vocabulary indices; beyond this a cached one is corrupt.
MAX_TOKEN_ID = 2**31
# Upper bound on head logits materialized at once (K x positions x vocab floats):
# keeps a 32k-vocab, 5-head model under ~1 GiB of activations per chunk.
LOGITS_PER_CHUNK = 1 << 28
# Write the partial-results checkpoint at most this often (and always at the end or
# on an interruption): rewriting it after every small batch would dominate.
CHECKPOINT_SECONDS = 30.0


@dataclass(frozen=True)
class ProfileSettings:
    """What a profile measures; part of its fingerprint, so resume refuses a change."""

    top_k: int = 20
    max_new_tokens: int = 256
    include_prompt: bool = False
    batch_size: int = 8


@dataclass
class Sequence_:
    """One calibration example: prompt ids and the model's greedy continuation."""

    prompt: list[int]
    continuation: list[int]

    @property
    def ids(self) -> list[int]:
        return self.prompt + self.continuation


# ---------------------------------------------------------------- file names
def targets_path(output: str | Path) -> Path:
    """Where the greedy targets for ``output`` are cached (beside it)."""
    return Path(f"{output}.targets.json")


def partial_path(output: str | Path) -> Path:
    """Where partial rank results for ``output`` are checkpointed (beside it)."""
    return Path(f"{output}.partial.npz")


# ---------------------------------------------------------------- targets
def _target_key(model_id: str, max_new_tokens: int, eos: int | None, prompt: list[int]) -> str:
    blob = json.dumps([model_id, max_new_tokens, eos, prompt], separators=(",", ":"))
    return hashlib.sha1(blob.encode()).hexdigest()


def _load_target_cache(path: Path) -> dict[str, list[int]]:
    """The continuations cached in ``path`` (none if it does not exist), every one checked.

    One-line TreeoptError naming the file for anything but a ``treeopt.targets/1``
    object whose ``continuations`` map keys to lists of token ids.
    """
    if not (path.exists() or path.is_symlink()):
        return {}
    data = read_json(path, "targets cache")
    hint = "delete it (the targets are generated again)"
    if not isinstance(data, dict) or data.get("format") != TARGETS_FORMAT:
        raise TreeoptError(f"{path} is not a {TARGETS_FORMAT} targets cache: {hint}")
    continuations = data.get("continuations", {})
    if not isinstance(continuations, dict) or not all(
            isinstance(tokens, list) and all(type(t) is int and 0 <= t < MAX_TOKEN_ID
                                             for t in tokens)
            for tokens in continuations.values()):
        raise TreeoptError(f"{path}: \"continuations\" must map prompts to lists of token "
                           f"ids: {hint}")
    return continuations


def _write_target_cache(path: Path, cache: dict[str, list[int]]) -> None:
    atomic_write_text(path, json.dumps({"format": TARGETS_FORMAT, "continuations": cache}))


def max_positions(model: Any) -> int | None:
    """The model's context length, or None when its config does not say."""
    return getattr(model.config, "max_position_embeddings", None)


def new_token_limit(model: Any, prompt_length: int, max_new_tokens: int) -> int:
    """New tokens a prompt can get: ``max_new_tokens`` clipped to the context length."""
    context = max_positions(model)
    if context is None:
        return max_new_tokens
    return max(0, min(max_new_tokens, context - prompt_length))


def pad_token_id_of(tokenizer: Any, eos: int | None) -> int:
    """Id to pad batches with: the tokenizer's pad, else EOS, else 0 (masked out anyway)."""
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    if pad is not None:
        return int(pad)
    return int(eos) if eos is not None else 0


def _batches_by_limit(model: Any, prompts: Sequence[list[int]], todo: list[int],
                      max_new_tokens: int, batch_size: int) -> list[tuple[list[int], int]]:
    """``todo`` (sorted by prompt length) in batches of prompts with the same token limit.

    A batch generates as many tokens for every row as its limit: mixing a prompt that
    the context clips with shorter ones would run it past the model's positions (an
    index error for learned positions, transformers' "exceeded the model's predefined
    maximum length" reminder for the rest).
    """
    batches: list[tuple[list[int], int]] = []
    for i in todo:
        limit = new_token_limit(model, len(prompts[i]), max_new_tokens)
        if batches and batches[-1][1] == limit and len(batches[-1][0]) < batch_size:
            batches[-1][0].append(i)
        else:
            batches.append(([i], limit))
    return batches


def greedy_continuations(
    model: Any,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    eos_token_id: int | None,
    cache_file: Path | None,
    model_id: str,
    batch_size: int = 8,
    pad_token_id: int = 0,
    progress: bool = True,
) -> list[list[int]]:
    """The model's greedy continuation of each prompt, ending at (and including) EOS.

    Each continuation has at most ``new_token_limit`` tokens. Prompts already in
    ``cache_file`` (same model id, token budget, EOS and prompt) are not generated
    again; new ones are added to it after every batch, so an interruption loses at
    most one batch.
    """
    import torch
    from tqdm import tqdm

    from treeopt.model.loading import input_device

    cache = _load_target_cache(cache_file) if cache_file is not None else {}
    keys = [_target_key(model_id, max_new_tokens, eos_token_id, list(p)) for p in prompts]
    vocab_size = model.get_input_embeddings().weight.shape[0]
    if any(token >= vocab_size for key in keys for token in cache.get(key, ())):
        raise TreeoptError(f"{cache_file} holds token ids beyond the model's vocabulary of "
                           f"{vocab_size}: delete it (the targets are generated again)")
    todo = [i for i, key in enumerate(keys) if key not in cache]
    device = input_device(model)
    # Similar lengths in one batch waste less padding.
    todo.sort(key=lambda i: len(prompts[i]))
    bar = tqdm(total=len(todo), unit="prompt", desc="greedy targets", disable=not progress,
               leave=False)
    generated_tokens = 0
    started = time.perf_counter()
    for batch, limit in _batches_by_limit(model, prompts, todo, max_new_tokens, batch_size):
        width = max(len(prompts[i]) for i in batch)
        if limit <= 0:
            for i in batch:
                cache[keys[i]] = []
            bar.update(len(batch))
            continue
        # Left padding: every prompt ends at the same column, where generation starts.
        input_ids, attention = pad_rows([prompts[i] for i in batch], pad_token_id, left=True)
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.long().to(device),
                max_new_tokens=limit, do_sample=False, num_beams=1,
                eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                temperature=None, top_p=None, top_k=None,
            )
        for row, i in enumerate(batch):
            tokens = out[row, width:width + limit].tolist()
            if eos_token_id is not None and eos_token_id in tokens:
                tokens = tokens[: tokens.index(eos_token_id) + 1]
            cache[keys[i]] = tokens
            generated_tokens += len(tokens)
        if cache_file is not None:
            _write_target_cache(cache_file, cache)
        bar.update(len(batch))
        bar.set_postfix(tok_s=f"{generated_tokens / (time.perf_counter() - started):.0f}")
    bar.close()
    return [cache[key] for key in keys]


# ---------------------------------------------------------------- ranks
def decode_positions(prompt_length: int, total_length: int, include_prompt: bool) -> range:
    """Positions ``t`` measured in a sequence: each has a next token ``x_{t+1}``.

    By default the ones decoding visits (``t >= prompt_length - 1``: the last prompt
    token onwards); with ``include_prompt`` every position from 0.
    """
    start = 0 if include_prompt else max(prompt_length - 1, 0)
    return range(start, total_length - 1)


def future_targets(ids: Sequence[int], positions: range, num_heads: int) -> np.ndarray:
    """(len(positions), K) array: ``x_{t+1+k}`` for head k at position t, or -1 past the end."""
    tokens = np.asarray(ids, dtype=np.int64)
    t = np.asarray(positions, dtype=np.int64)[:, None] + 1 + np.arange(1, num_heads + 1)[None]
    out = np.full(t.shape, MISS, dtype=np.int64)
    inside = t < len(tokens)
    out[inside] = tokens[t[inside]]
    return out


def ranks_in_top_k(logits: Any, targets: Any, top_k: int) -> Any:
    """Rank (0-based) of each target in its row's top-k logits, or -1 if absent.

    ``logits`` [..., V], ``targets`` [...] (negative: no target -> -1). Ranks follow
    ``torch.topk``'s order, the order the runtime builds candidates in.
    """
    import torch

    top = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).indices
    hit = top == targets.unsqueeze(-1)
    found = hit.any(dim=-1) & (targets >= 0)
    return torch.where(found, hit.float().argmax(dim=-1), torch.full_like(targets, MISS))


def hidden_at(model: Any, input_ids: Any, mask: Any, rows: Any, cols: Any) -> Any:
    """The model's final hidden states (what ``lm_head`` reads) at ``(rows, cols)``.

    ``input_ids``/``mask`` [B, W] are right-padded (:func:`medusa_runtime.padding.pad_rows`
    with ``left=False``): causal attention keeps real positions independent of the
    padding. Gradients flow when the caller allows them (joint training).
    """
    from treeopt.model.loading import decoder_of, input_device

    device = input_device(model)
    hidden = decoder_of(model)(
        input_ids=input_ids.to(device), attention_mask=mask.long().to(device)
    ).last_hidden_state
    return hidden[rows.to(hidden.device), cols.to(hidden.device)]


def batch_rank_vectors(
    model: Any, heads: Any, batch: Sequence[Sequence_], top_k: int, include_prompt: bool,
    pad_token_id: int = 0,
) -> tuple[list[np.ndarray], int, list[np.ndarray]]:
    """Teacher-forced rank vectors of a batch: one (positions, K) int array per sequence.

    Also returns how many measured positions had a base-model argmax different from
    the continuation's next token (0 when the targets are this model's greedy
    output, up to floating-point near-ties), and per sequence the heads' top-k
    probabilities ``(positions, K, top_k)`` float16 (what a per-step tree policy sees).
    """
    import torch

    num_heads = heads.config.medusa_num_heads
    input_ids, attention = pad_rows([seq.ids for seq in batch], pad_token_id, left=False)
    rows, cols, targets, nexts, sizes = [], [], [], [], []
    for row, seq in enumerate(batch):
        positions = decode_positions(len(seq.prompt), len(seq.ids), include_prompt)
        rows.extend([row] * len(positions))
        cols.extend(positions)
        targets.append(future_targets(seq.ids, positions, num_heads))
        nexts.extend(seq.ids[t + 1] for t in positions)
        sizes.append(len(positions))
    if not rows:
        empty = [np.zeros((0, num_heads), dtype=np.int16) for _ in batch]
        return empty, 0, [np.zeros((0, num_heads, top_k), dtype=np.float16) for _ in batch]
    with torch.no_grad():
        selected = hidden_at(model, input_ids, attention, torch.tensor(rows), torch.tensor(cols))
        target = torch.from_numpy(np.concatenate(targets)).to(selected.device)
        next_tokens = torch.tensor(nexts, device=selected.device)
        head_device = next(heads.parameters()).device
        chunk = max(1, LOGITS_PER_CHUNK // (num_heads * heads.config.vocab_size))
        ranks, probs, mismatches = [], [], 0
        for begin in range(0, len(rows), chunk):
            h = selected[begin:begin + chunk]
            base_argmax = model.lm_head(h).argmax(dim=-1)
            mismatches += int((base_argmax != next_tokens[begin:begin + chunk]).sum())
            logits = heads(h.unsqueeze(0).to(head_device))[:, 0]  # [K, n, V]
            r = ranks_in_top_k(logits, target[begin:begin + chunk].T.to(head_device), top_k)
            ranks.append(r.T.cpu())
            top = torch.softmax(logits.float(), dim=-1).topk(min(top_k, logits.shape[-1])).values
            probs.append(top.transpose(0, 1).to(torch.float16).cpu())  # [n, K, k]
        all_ranks = torch.cat(ranks).numpy().astype(np.int16)
        all_probs = torch.cat(probs).numpy()
    cuts = np.cumsum(sizes)[:-1]
    return list(np.split(all_ranks, cuts)), mismatches, list(np.split(all_probs, cuts))


@dataclass
class RankResults:
    """Rank vectors gathered so far, in prompt order, and how far they got."""

    ranks: list[np.ndarray]
    groups: list[np.ndarray]
    done: int = 0
    mismatches: int = 0
    probs: list[np.ndarray] = field(default_factory=list)

    def stacked(self, num_heads: int) -> tuple[np.ndarray, np.ndarray]:
        if not self.ranks:
            return np.zeros((0, num_heads), dtype=np.int16), np.zeros(0, dtype=np.int32)
        return np.concatenate(self.ranks), np.concatenate(self.groups)

    def stacked_probs(self) -> np.ndarray | None:
        """``(N, K, top_k)`` head probabilities, or None if not all batches kept them."""
        if not self.probs or sum(map(len, self.probs)) != sum(map(len, self.ranks)):
            return None
        return np.concatenate(self.probs)


def _save_partial(path: Path, fingerprint: str, results: RankResults, num_heads: int) -> None:
    ranks, groups = results.stacked(num_heads)
    probs = results.stacked_probs()
    extra = {} if probs is None else {"probs": probs}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, format=PARTIAL_FORMAT, fingerprint=fingerprint, ranks=ranks,
                 groups=groups, done=results.done, mismatches=results.mismatches, **extra)


def _scalar(data: dict[str, Any], name: str, kind: str, where: str) -> Any:
    """Array ``name`` of a checkpoint as one value of numpy kind ``kind`` ("U", "i")."""
    value = data[name]
    if value.shape != () or value.dtype.kind not in kind:
        raise TreeoptError(f"{where}: {name} must be one {'string' if kind == 'U' else 'integer'}")
    return value.item()


def read_partial(path: Path, num_heads: int | None = None) -> tuple[str, RankResults]:
    """(fingerprint, results) of a partial-results checkpoint, every array checked.

    One-line TreeoptError naming ``path`` (and saying to delete it) for anything
    that is not such a checkpoint: truncated, a plain ``.npy``, wrong shapes or types.
    """
    where = f"checkpoint {path}"
    hint = "; delete it to start over"
    try:
        data = read_npz(path, where, ("format", "fingerprint", "ranks", "groups", "done",
                                      "mismatches"))
        if _scalar(data, "format", "U", where) != PARTIAL_FORMAT:
            raise TreeoptError(f"{path} is not a {PARTIAL_FORMAT} checkpoint")
        fingerprint = _scalar(data, "fingerprint", "U", where)
        done, mismatches = (_scalar(data, name, "iu", where) for name in ("done", "mismatches"))
        ranks, groups, probs = data["ranks"], data["groups"], data.get("probs")
        rows = len(ranks) if ranks.ndim == 2 else -1
        if ranks.dtype.kind not in "iu" or rows < 0 or (
                num_heads is not None and ranks.shape[1] != num_heads):
            raise TreeoptError(f"{where}: ranks must be positions x heads integers"
                               + (f" ({num_heads} heads)" if num_heads is not None else ""))
        if groups.dtype.kind not in "iu" or groups.shape != (rows,) or done < 0 or \
                mismatches < 0 or (rows and not 0 <= groups.min() <= groups.max() < done):
            raise TreeoptError(f"{where}: groups, done and mismatches do not fit the ranks")
        if probs is not None and (probs.dtype.kind != "f" or probs.ndim != 3
                                  or probs.shape[:2] != ranks.shape):
            raise TreeoptError(f"{where}: probs must be positions x heads x top-k floats")
    except TreeoptError as exc:
        raise TreeoptError(f"{exc}{hint}") from None
    return fingerprint, RankResults([ranks], [groups], int(done), int(mismatches),
                                    [probs] if probs is not None else [])


def _load_partial(path: Path, fingerprint: str, num_heads: int) -> RankResults:
    saved, results = read_partial(path, num_heads)
    if saved != fingerprint:
        raise TreeoptError(
            f"{path} was made with other settings, model or prompts: delete it to start over"
        )
    return results


def check_resumable(output: str | Path, resume: bool) -> None:
    """Refuse, before any model loads, what ``profile`` would refuse after loading it.

    A checkpoint without ``resume`` (it would be thrown away), a checkpoint that is
    broken, and a greedy-targets cache that is broken: one line each.
    """
    checkpoint = partial_path(output)
    if checkpoint.exists() or checkpoint.is_symlink():
        if not resume:
            raise TreeoptError(
                f"partial results exist in {checkpoint}: pass --resume to continue them "
                "or delete the file to start over"
            )
        read_partial(checkpoint)
    _load_target_cache(targets_path(output))


def measure_ranks(
    model: Any,
    heads: Any,
    sequences: Sequence[Sequence_],
    settings: ProfileSettings,
    checkpoint: Path | None,
    fingerprint: str,
    resume: bool = False,
    progress: bool = True,
    on_batch: Callable[[RankResults], None] | None = None,
    rank_vectors: Callable[..., tuple[list[np.ndarray], int, list[np.ndarray]]] | None = None,
) -> RankResults:
    """Rank vectors of every sequence (group = its index), checkpointed as it goes.

    With ``resume`` the results in ``checkpoint`` (same fingerprint) are kept and
    only the remaining sequences are measured; without it an existing checkpoint
    is an error, so a rerun never silently throws work away. ``rank_vectors``
    replaces :func:`batch_rank_vectors` (same signature; a draft model's:
    :mod:`treeopt.model.draft_profiling`).
    """
    from tqdm import tqdm

    num_heads = heads.config.medusa_num_heads
    results = RankResults([], [])
    if checkpoint is not None and checkpoint.exists():
        if not resume:
            raise TreeoptError(
                f"partial results exist in {checkpoint}: pass --resume to continue them "
                "or delete the file to start over"
            )
        results = _load_partial(checkpoint, fingerprint, num_heads)
        if results.done > len(sequences):
            raise TreeoptError(f"{checkpoint} holds more prompts than this run has: delete it "
                               "to start over")
    total_tokens = sum(len(s.ids) for s in sequences[results.done:])
    bar = tqdm(total=total_tokens, unit="tok", unit_scale=True, desc="profiling",
               disable=not progress, leave=False)
    last_save = time.monotonic()
    try:
        while results.done < len(sequences):
            batch = sequences[results.done:results.done + settings.batch_size]
            per_seq, mismatches, per_seq_probs = (rank_vectors or batch_rank_vectors)(
                model, heads, batch, settings.top_k, settings.include_prompt
            )
            results.probs.extend(per_seq_probs)
            for offset, ranks in enumerate(per_seq):
                results.ranks.append(ranks)
                results.groups.append(np.full(len(ranks), results.done + offset, dtype=np.int32))
            results.done += len(batch)
            results.mismatches += mismatches
            bar.update(sum(len(s.ids) for s in batch))
            if on_batch is not None:
                on_batch(results)
            if checkpoint is not None and time.monotonic() - last_save > CHECKPOINT_SECONDS:
                _save_partial(checkpoint, fingerprint, results, num_heads)
                last_save = time.monotonic()
    except BaseException:
        # Ctrl-C or a crash: keep everything measured so far for --resume.
        if checkpoint is not None and results.done:
            _save_partial(checkpoint, fingerprint, results, num_heads)
        raise
    finally:
        bar.close()
    return results


def fingerprint_of(model_id: str, heads_id: str, prompts: Sequence[list[int]],
                   settings: ProfileSettings) -> str:
    """A digest of everything a profile's numbers depend on (resume must match it).

    The batch size is left out: it changes speed, not results.
    """
    measured = {k: v for k, v in asdict(settings).items() if k != "batch_size"}
    blob = json.dumps([model_id, heads_id, [list(p) for p in prompts], measured])
    return hashlib.sha1(blob.encode()).hexdigest()


def profile_model(
    model: Any,
    tokenizer: Any,
    heads: Any,
    prompts: Sequence[list[int]],
    output: str | Path,
    settings: ProfileSettings,
    model_id: str,
    heads_id: str,
    resume: bool = False,
    progress: bool = True,
    provenance: dict[str, Any] | None = None,
    rank_vectors: Callable[..., tuple[list[np.ndarray], int, list[np.ndarray]]] | None = None,
) -> Any:
    """Profile ``heads`` on ``model`` over tokenized ``prompts`` and write it to ``output``.

    Returns the :class:`treeopt.core.profile.Profile` written. Greedy targets are cached
    beside ``output``; the partial checkpoint is removed once the profile is
    written. Prompts that leave no room for a new token in the context are skipped.

    Under a launcher (``torchrun``, ``accelerate launch``: see
    :mod:`treeopt.model.distributed`) every rank profiles its share of the prompts
    (with its own checkpoints, so ``resume`` is per rank) and rank 0 writes the
    merged profile, identical to a one-process run's; the other ranks return None.
    """
    from treeopt.files.profile_file import write_profile

    output = check_output_path(output)  # before any work, as the CLI checks it
    if settings.top_k < 1:
        raise TreeoptError(f"--top-k must be >= 1, not {settings.top_k}")
    if settings.max_new_tokens < 1:
        raise TreeoptError(f"--max-new-tokens must be >= 1, not {settings.max_new_tokens}")
    vocab_size = heads.config.vocab_size
    if settings.top_k > vocab_size:
        raise TreeoptError(f"--top-k {settings.top_k} exceeds the heads' vocabulary of "
                           f"{vocab_size} tokens")
    world = current_world()
    progress = progress and world.is_main
    eos = getattr(tokenizer, "eos_token_id", None)
    pad = pad_token_id_of(tokenizer, eos)
    kept = [list(p) for p in prompts if new_token_limit(model, len(p), settings.max_new_tokens)]
    if not kept:
        raise TreeoptError("every prompt fills the model's context: nothing left to profile")
    job = ProfileJob(model, heads, kept, settings, Path(output), model_id, heads_id, eos, pad,
                     resume, progress, rank_vectors)
    if world.distributed:
        sequences, results = measure_sharded(job)
    else:
        sequences, results = _measure_here(job)
    if results is None:  # a rank other than 0: rank 0 writes the merged profile
        finish_sharded(job, lambda: None)
        return None
    info = {
        "model": model_id,
        "heads": heads_id,
        "prompts": len(kept),
        "skipped_prompts": len(prompts) - len(kept),
        "positions": sum(len(r) for r in results.ranks),
        "generated_tokens": sum(len(s.continuation) for s in sequences),
        "greedy_mismatches": results.mismatches,
        **{key: value for key, value in asdict(settings).items() if key != "batch_size"},
        "world_size": world.size,
        **(provenance or {}),
    }
    profile = _profile_of(results, sequences, settings, heads.config.medusa_num_heads, info)
    if not world.distributed:
        write_profile(output, profile)  # and its rank vectors, for treeopt.optimize.replay
        partial_path(output).unlink(missing_ok=True)
        return profile
    finish_sharded(job, lambda: write_profile(output, profile))
    return profile


@dataclass(frozen=True)
class ProfileJob:
    """What :func:`profile_model` measures, as the one- and many-process paths share it."""

    model: Any
    heads: Any
    prompts: list[list[int]]
    settings: ProfileSettings
    output: Path
    model_id: str
    heads_id: str
    eos: int | None
    pad: int
    resume: bool
    progress: bool
    rank_vectors: Callable[..., tuple[list[np.ndarray], int, list[np.ndarray]]] | None

    def fingerprint(self) -> str:
        return fingerprint_of(self.model_id, self.heads_id, self.prompts, self.settings)


def _measure_here(job: ProfileJob) -> tuple[list[Sequence_], RankResults]:
    """One process: greedy targets, then the rank vectors of every prompt."""
    continuations = greedy_continuations(
        job.model, job.prompts, job.settings.max_new_tokens, job.eos, targets_path(job.output),
        job.model_id, batch_size=job.settings.batch_size, pad_token_id=job.pad,
        progress=job.progress,
    )
    sequences = [Sequence_(p, c) for p, c in zip(job.prompts, continuations, strict=True)]
    results = measure_ranks(job.model, job.heads, sequences, job.settings,
                            partial_path(job.output), job.fingerprint(), resume=job.resume,
                            progress=job.progress, rank_vectors=job.rank_vectors)
    return sequences, results


def _profile_of(results: RankResults, sequences: Sequence[Sequence_], settings: ProfileSettings,
                num_heads: int, info: dict[str, Any]) -> Any:
    """The :class:`treeopt.core.profile.Profile` of measured rank vectors (prompt order)."""
    from treeopt.core.profile import Profile

    ranks, groups = results.stacked(num_heads)
    if len(ranks) == 0:
        raise TreeoptError("no positions measured: every continuation was empty")
    first = [len(s.prompt) - 1 if settings.include_prompt else 0 for s in sequences]
    return Profile.from_rank_vectors(ranks.astype(np.int64), settings.top_k, groups=groups,
                                     provenance=info, first_decode_index=first,
                                     probs=results.stacked_probs())


# ---------------------------------------------------------------- several processes
# Why the merged profile is bit-identical to a one-process run: the ranks split
# *batches*, not prompts. Both phases cut their work into the batches a single
# process would run (greedy targets: the prompts not yet cached, sorted by length;
# rank vectors: the prompts in order) and hand whole batches to ranks, balanced by
# token count (:func:`treeopt.model.distributed.shard_by_length`). A rank's batches
# keep their order and only the globally last batch can be short, so each rank
# re-forms exactly those batches: every forward pass has the same inputs and shapes
# as in one process, hence the same numbers. Rank 0 puts the rank vectors back in
# prompt order.
#
# Files beside ``OUTPUT`` per rank r of W: ``OUTPUT.targets.json.rank<r>-of-<W>.json``
# (greedy targets made so far; folded into ``OUTPUT.targets.json`` by rank 0 once
# all are made) and ``OUTPUT.rank<r>-of-<W>.partial.npz`` (rank vectors, written
# when the rank's shard is done and on any interruption, removed once rank 0 has
# written the merged profile), so a rerun with ``--resume`` and the same world size
# continues each rank where it stopped.


def rank_file(output: Path, world: World, suffix: str) -> Path:
    """``OUTPUT.rank<r>-of-<W><suffix>``: one rank's own working file."""
    return Path(f"{output}.rank{world.rank}-of-{world.size}{suffix}")


def _my_batches(batches: list[list[int]], weights: list[int], world: World) -> list[int]:
    """The items of this rank's batches, batches in order (see the comment above)."""
    return [i for b in shard_by_length(weights, world.size)[world.rank] for i in batches[b]]


def sharded_continuations(
    model: Any, prompts: Sequence[list[int]], max_new_tokens: int, eos_token_id: int | None,
    cache_file: Path, model_id: str, batch_size: int = 8, pad_token_id: int = 0,
    progress: bool = True,
) -> list[list[int]]:
    """:func:`greedy_continuations`, generated by the ranks in shards.

    Rank 0's ``cache_file`` decides what is left to generate (so every rank computes
    the same shards) and gets the union back; each rank keeps its progress in
    ``CACHE.rank<r>-of-<W>.json`` until then, so an interrupted run resumes.
    """
    world = current_world()
    known: dict[str, list[int]] = broadcast_from_main(
        run_on_every_rank(lambda: _load_target_cache(cache_file) if world.is_main else None))
    keys = [_target_key(model_id, max_new_tokens, eos_token_id, list(p)) for p in prompts]
    todo = sorted((i for i, key in enumerate(keys) if key not in known),
                  key=lambda i: len(prompts[i]))
    batches = [todo[b:b + batch_size] for b in range(0, len(todo), batch_size)]
    weights = [sum(len(prompts[i]) + max_new_tokens for i in batch) for batch in batches]
    mine = _my_batches(batches, weights, world)
    own_cache = Path(f"{cache_file}.rank{world.rank}-of-{world.size}.json")
    made = run_on_every_rank(lambda: greedy_continuations(
        model, [list(prompts[i]) for i in mine], max_new_tokens, eos_token_id, own_cache,
        model_id, batch_size=batch_size, pad_token_id=pad_token_id, progress=progress))
    for part in all_gather({keys[i]: tokens for i, tokens in zip(mine, made, strict=True)}):
        known.update(part)
    if todo:
        run_on_every_rank(lambda: _write_target_cache(cache_file, known) if world.is_main
                          else None)
    own_cache.unlink(missing_ok=True)  # rank 0's cache holds it all now
    return [known[key] for key in keys]


def measure_sharded(job: ProfileJob) -> tuple[list[Sequence_], RankResults | None]:
    """This rank's share of the rank vectors; on rank 0 everyone's, in prompt order.

    Returns the sequences and, on rank 0, the merged results (None elsewhere).
    """
    world = current_world()
    continuations = sharded_continuations(
        job.model, job.prompts, job.settings.max_new_tokens, job.eos, targets_path(job.output),
        job.model_id, batch_size=job.settings.batch_size, pad_token_id=job.pad,
        progress=job.progress)
    sequences = [Sequence_(p, c) for p, c in zip(job.prompts, continuations, strict=True)]
    size = job.settings.batch_size
    batches = [list(range(b, min(b + size, len(sequences))))
               for b in range(0, len(sequences), size)]
    mine = _my_batches(batches, [sum(len(sequences[i].ids) for i in batch)
                                 for batch in batches], world)
    checkpoint = rank_file(job.output, world, ".partial.npz")
    fingerprint = hashlib.sha1(f"{job.fingerprint()} {world.rank}/{world.size}".encode())
    num_heads = job.heads.config.medusa_num_heads

    def work() -> RankResults:
        results = measure_ranks(job.model, job.heads, [sequences[i] for i in mine],
                                job.settings, checkpoint, fingerprint.hexdigest(),
                                resume=job.resume, progress=job.progress,
                                rank_vectors=job.rank_vectors)
        # Kept until the merged profile is written: a failure elsewhere loses nothing here.
        _save_partial(checkpoint, fingerprint.hexdigest(), results, num_heads)
        return results

    results = run_on_every_rank(work)
    ranks, local = results.stacked(num_heads)
    mapped = np.asarray(mine, dtype=np.int64)[local] if len(local) else local
    parts = gather_to_main((ranks, mapped.astype(np.int32), results.stacked_probs(),
                            results.mismatches))
    if parts is None:
        return sequences, None
    return sequences, _merged(parts)


def _merged(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, int]]) -> RankResults:
    """The ranks' rank vectors as one process lists them: by prompt, text order within."""
    ranks = np.concatenate([part[0] for part in parts])
    groups = np.concatenate([part[1] for part in parts])
    order = np.argsort(groups, kind="stable")  # a rank keeps each prompt's rows in order
    probs = [part[2] for part in parts if len(part[0])]
    kept_probs = [np.concatenate(probs)[order]] if probs and all(
        p is not None for p in probs) else []
    return RankResults([ranks[order]], [groups[order]], done=int(groups.max(initial=-1)) + 1,
                       mismatches=sum(part[3] for part in parts), probs=kept_probs)


def finish_sharded(job: ProfileJob, write: Callable[[], None]) -> None:
    """Rank 0 writes the merged profile; once it has, every rank drops its own files."""
    world = current_world()
    run_on_every_rank(lambda: write() if world.is_main else None)
    rank_file(job.output, world, ".partial.npz").unlink(missing_ok=True)
    agree(None)
    leave_together()  # nobody exits (and tears the job down) before everyone is done
