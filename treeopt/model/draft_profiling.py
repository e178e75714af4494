"""Profile a draft model the way Medusa heads are profiled: ranks per position and depth.

A draft tree's node at depth ``d`` with rank ``r`` holds the draft's ``r``-th most
likely token after its parent (``medusa_runtime.drafter``). Along the target's own
greedy continuation ``x`` the accepted parents are the true tokens, so at decoding
position ``t`` (the root being ``x_{t+1}``) depth ``d`` is accepted with rank ``r``
iff ``x_{t+1+d}`` is the draft's rank-``r`` token after ``x_{<= t+d}``. So the rank
vector of position ``t`` is ``ranks[t, d-1] = rank_draft(t + d)``, where
``rank_draft(s)`` is the rank of ``x_{s+1}`` in the draft's top-k after
teacher-forcing ``x_{<= s}``: one forward pass of the draft per sequence gives every
depth. The profile and its rank vectors have the heads profile's format, so
``build`` grows draft trees, ``eval``/replay score them exactly (greedy acceptance
is the same walk) and ``tune`` sizes them; a chain of ``gamma`` is the tree of
``gamma`` rank-0 nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from treeopt.errors import TreeoptError
from treeopt.model.profiling import (
    MISS,
    ProfileSettings,
    Sequence_,
    decode_positions,
    profile_model,
    ranks_in_top_k,
)
from treeopt.optimize.draft_tune import DEFAULT_DRAFT_DEPTH


@dataclass(frozen=True)
class DraftLevelsConfig:
    """The profiler's view of a drafter's shape: levels (as heads) and vocabulary."""

    medusa_num_heads: int
    vocab_size: int


class DraftLevels:
    """A draft model seen as ``depth`` levels of top-k guesses (the profiler's ``heads``)."""

    def __init__(self, draft: Any, depth: int) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise TreeoptError(f"--depth must be a positive integer, not {depth!r}")
        self.draft = draft
        self.config = DraftLevelsConfig(
            depth, int(draft.get_output_embeddings().weight.shape[0])
        )


def draft_rank_vectors(
    model: Any, levels: DraftLevels, batch: Sequence[Sequence_], top_k: int,
    include_prompt: bool, pad_token_id: int = 0,
) -> tuple[list[np.ndarray], int, list[np.ndarray]]:
    """Teacher-forced draft rank vectors of a batch: one ``(positions, depth)`` array each.

    Also, as the heads profiler: how many measured positions have a target argmax
    other than the continuation's next token (0 when the targets are the target's
    greedy output, up to floating-point near-ties), and per sequence the draft's top-k
    probabilities ``(positions, depth, top_k)`` float16 along the true text (zeros
    past its end).
    """
    import torch

    from treeopt.model.loading import decoder_of, input_device

    depth = levels.config.medusa_num_heads
    width = max(len(s.ids) for s in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, seq in enumerate(batch):
        input_ids[row, : len(seq.ids)] = torch.tensor(seq.ids)
        attention[row, : len(seq.ids)] = 1
    out, out_probs, mismatches = [], [], 0
    with torch.no_grad():
        # Right padding: causal attention keeps real positions independent of it.
        draft_device = input_device(levels.draft)
        draft_hidden = decoder_of(levels.draft)(
            input_ids=input_ids.to(draft_device), attention_mask=attention.to(draft_device)
        ).last_hidden_state
        device = input_device(model)
        hidden = decoder_of(model)(
            input_ids=input_ids.to(device), attention_mask=attention.to(device)
        ).last_hidden_state
        lm_head, draft_head = model.get_output_embeddings(), levels.draft.get_output_embeddings()
        for row, seq in enumerate(batch):
            positions = decode_positions(len(seq.prompt), len(seq.ids), include_prompt)
            ids = torch.tensor(seq.ids)
            ranks = np.full((len(positions), depth), MISS, dtype=np.int16)
            probs = np.zeros((len(positions), depth, top_k), dtype=np.float16)
            if len(positions):
                t = torch.tensor(positions)
                argmax = lm_head(hidden[row, t.to(hidden.device)]).argmax(dim=-1).cpu()
                mismatches += int((argmax != ids[t + 1]).sum())
                # rank_draft(s) for every s with a next token: s = t + d <= len - 2.
                s = torch.arange(positions.start + 1, len(seq.ids) - 1)
                draft_logits = draft_head(draft_hidden[row, s.to(draft_hidden.device)])
                by_s = ranks_in_top_k(draft_logits, ids[s + 1].to(draft_logits.device),
                                      top_k).cpu().numpy()
                probs_by_s = torch.softmax(draft_logits.float(), dim=-1).topk(
                    min(top_k, draft_logits.shape[-1])).values.to(torch.float16).cpu().numpy()
                for d in range(1, depth + 1):
                    index = np.asarray(positions) + d - (positions.start + 1)
                    inside = index < len(by_s)
                    ranks[inside, d - 1] = by_s[index[inside]]
                    probs[inside, d - 1, : probs_by_s.shape[-1]] = probs_by_s[index[inside]]
            out.append(ranks)
            out_probs.append(probs)
    return out, mismatches, out_probs


def profile_draft_model(
    model: Any,
    tokenizer: Any,
    draft: Any,
    prompts: Sequence[list[int]],
    output: str | Path,
    settings: ProfileSettings,
    model_id: str,
    draft_id: str,
    depth: int = DEFAULT_DRAFT_DEPTH,
    resume: bool = False,
    progress: bool = True,
    provenance: dict[str, Any] | None = None,
    expand: tuple[int, int] | None = None,
) -> Any:
    """Profile ``draft`` as a drafter for ``model``; write and return the Profile.

    Same phases, files and resume as :func:`treeopt.model.profiling.profile_model`
    (the target's greedy continuations are shared with a heads profile of the same
    model); ``depth`` levels are recorded per position. ``expand = (k_max, d_max)``
    also records the drafter's beam expansion (:mod:`treeopt.model.expansion_profiling`)
    beside the profile, for ``dynamic:S,K,N`` with ``S <= d_max``, ``K <= k_max``.
    """
    if expand is not None and not (1 <= expand[1] <= depth and expand[0] >= 1):
        raise TreeoptError(f"--expand K_MAX,D_MAX needs K_MAX >= 1 and 1 <= D_MAX <= --depth "
                           f"({depth}), not {expand[0]},{expand[1]}")
    if expand is not None and expand[0] > settings.top_k:
        raise TreeoptError(f"--expand K_MAX {expand[0]} exceeds --top-k {settings.top_k}")
    target_vocab = int(model.get_output_embeddings().weight.shape[0])
    levels = DraftLevels(draft, depth)
    if levels.config.vocab_size != target_vocab:
        raise TreeoptError(
            f"the draft model's vocabulary ({levels.config.vocab_size} tokens) differs from "
            f"the target's ({target_vocab}): a draft model needs the target's tokenizer"
        )
    profile = profile_model(
        model, tokenizer, levels, prompts, output, settings, model_id=model_id,
        heads_id=f"{draft_id} (draft model, depth {depth})", resume=resume, progress=progress,
        provenance={**(provenance or {}), "drafter": "draft_model", "draft_model": draft_id,
                    "depth": depth},
        rank_vectors=draft_rank_vectors,
    )
    if expand is not None and profile is not None:  # None: not rank 0 of a launched run
        profile = _add_expansion(model, tokenizer, draft, prompts, output, settings, model_id,
                                 profile, expand, progress)
    return profile


def _add_expansion(model: Any, tokenizer: Any, draft: Any, prompts: Sequence[list[int]],
                   output: str | Path, settings: ProfileSettings, model_id: str, profile: Any,
                   expand: tuple[int, int], progress: bool) -> Any:
    """Record the expansion over the profile's own sequences; rewrite the profile with it."""
    from dataclasses import replace

    from treeopt.core.atomic import output_set
    from treeopt.files.expansion_file import (
        PROVENANCE_KEY,
        expansion_path,
        expansion_record,
        save_expansion,
    )
    from treeopt.files.profile_file import write_profile
    from treeopt.model.expansion_profiling import draft_model_expansion
    from treeopt.model.profiling import (
        greedy_continuations,
        new_token_limit,
        pad_token_id_of,
        targets_path,
    )

    eos = getattr(tokenizer, "eos_token_id", None)
    kept = [list(p) for p in prompts if new_token_limit(model, len(p), settings.max_new_tokens)]
    continuations = greedy_continuations(  # cached by the profile just written: no decoding
        model, kept, settings.max_new_tokens, eos, targets_path(output), model_id,
        batch_size=settings.batch_size, pad_token_id=pad_token_id_of(tokenizer, eos),
        progress=False)
    sequences = [Sequence_(p, c) for p, c in zip(kept, continuations, strict=True)]
    expansion = draft_model_expansion(draft, sequences, expand[0], expand[1],
                                      settings.include_prompt, progress)
    if profile.sequences is None or len(expansion) != len(profile.sequences):
        raise TreeoptError("the expansion's positions differ from the profile's rank vectors")
    profile = replace(profile, provenance={**profile.provenance,
                                           PROVENANCE_KEY: expansion_record(expansion)})
    with output_set():  # the profile names its expansion: both written, or neither
        save_expansion(expansion_path(output), expansion)
        write_profile(output, profile)
    return profile
