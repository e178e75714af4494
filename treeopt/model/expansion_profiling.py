"""Record a drafter's beam expansion per calibration position (``profile --expand K_MAX,D_MAX``).

At decoding position ``t`` of a calibration sequence (the root being the target's
token ``x_{t+1}``) the engine-style dynamic tree ``dynamic:S,K,N`` expands the
beam of width ``K`` level by level (:mod:`treeopt.core.expansion`). To replay
every ``S <= D_MAX``, ``K <= K_MAX`` offline, this records the drafter's top
``K_MAX`` children (probabilities) of the root and of every node that the beam of
*some* ``K <= K_MAX`` keeps on levels ``1..D_MAX - 1`` (the union: the beam of a
smaller ``K`` is not a subset of a larger one's). Where the target's continuation
lies is the rank vector of the same position (the draft profile records it).

Drafter-agnostic: :func:`record_expansion` drives an :class:`ExpansionSession`,
a drafter opened on one sequence that returns the top-k children of a batch of
branches. :class:`DraftModelExpansion` is the draft model's (one teacher-forced
pass gives every root's children; each deeper level is one pass over the new
nodes of a chunk of positions, with a tree mask over the cached sequence); an
EAGLE drafter fills the same profile with its own session.

Cost: one teacher-forced draft pass per sequence plus ``D_MAX - 1`` passes that feed
at most ``K_MAX (K_MAX + 1) / 2`` new nodes per position each, i.e. at most
``(D_MAX - 1) K_MAX (K_MAX + 1) / 2`` draft tokens per calibration position (for
``--expand 4,6``: 50) attending to the sequence prefix. Size: see
:mod:`treeopt.files.expansion_file`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from treeopt.core.expansion import DraftExpansion, build_beam, expansion_from_children
from treeopt.core.tree import Path
from treeopt.errors import TreeoptError

# Positions whose branches one deeper draft pass feeds together: bounds the tree mask
# (new nodes x (sequence + nodes so far)) to a few tens of MiB for --expand 4,6.
POSITIONS_PER_CHUNK = 64


class ExpansionSession(Protocol):
    """A drafter opened on one calibration sequence (see the module doc).

    Node handles are ints the session hands out; a position's root is its handle in
    :meth:`roots`.
    """

    def roots(self, positions: Sequence[int], k: int) -> tuple[list[int], np.ndarray, np.ndarray]:
        """Handles of the roots at ``positions`` (root = token ``t + 1``) and their
        top-``k`` children: token ids ``(n, k)`` and probabilities ``(n, k)``."""
        ...

    def expand(self, parents: Sequence[int], tokens: Sequence[int], k: int
               ) -> tuple[list[int], np.ndarray, np.ndarray]:
        """Feed one new node per entry (token ``tokens[i]`` below handle ``parents[i]``);
        return their handles and their top-``k`` children (ids, probabilities)."""
        ...


def record_expansion(session: ExpansionSession, positions: Sequence[int], k_max: int,
                     d_max: int) -> list[dict[Path, np.ndarray]]:
    """Per position, ``{rank path: top-k_max child probabilities}`` of every node some
    beam of width ``K <= k_max`` expands on levels ``0..d_max - 1``."""
    handles, ids, probs = session.roots(positions, k_max)
    rows: list[dict[Path, np.ndarray]] = [{(): probs[i]} for i in range(len(positions))]
    node: list[dict[Path, tuple[int, np.ndarray]]] = [
        {(): (handles[i], ids[i])} for i in range(len(positions))]
    for level in range(1, d_max):
        wanted: list[tuple[int, Path]] = []
        for index, row in enumerate(rows):
            new: dict[Path, None] = {}
            for topk in range(1, k_max + 1):
                for path in build_beam(row, topk, level).frontiers[level - 1]:
                    if path not in row:
                        new[path] = None
            wanted.extend((index, path) for path in new)
        if not wanted:
            break
        parents = [node[i][path[:-1]][0] for i, path in wanted]
        tokens = [int(node[i][path[:-1]][1][path[-1]]) for i, path in wanted]
        new_handles, new_ids, new_probs = session.expand(parents, tokens, k_max)
        for j, (i, path) in enumerate(wanted):
            rows[i][path] = new_probs[j]
            node[i][path] = (new_handles[j], new_ids[j])
    return rows


class DraftModelExpansion:
    """A draft model's :class:`ExpansionSession` on one sequence ``ids``.

    Handles ``0..len(ids) - 1`` are the sequence's tokens (the root at ``t`` is
    ``t + 1``); fed nodes take the next handles, which are also their cache slots.
    """

    def __init__(self, draft: Any, ids: Sequence[int]) -> None:
        import torch

        from medusa_runtime.architectures import LogitTransform, cache_argument
        from treeopt.model.loading import input_device

        self.torch = torch
        self.decoder = draft.get_decoder()
        self.lm_head = draft.get_output_embeddings()
        self.transform = LogitTransform.of(draft)
        self.cache_argument = cache_argument(self.decoder)
        self.device = input_device(draft)
        self.dtype = next(draft.parameters()).dtype
        self.length = len(ids)
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache(config=draft.config)
        with torch.no_grad():
            hidden = self.decoder(
                input_ids=torch.tensor([list(ids)], device=self.device), use_cache=True,
                **{self.cache_argument: cache}).last_hidden_state[0]
            self.sequence_logits = self.transform(self.lm_head(hidden)).float()
        self.sequence_cache = cache
        self.reset()

    def reset(self) -> None:
        """Drop every fed node (a new chunk of positions starts from the sequence)."""
        self.cache = copy.deepcopy(self.sequence_cache)
        self.parent: list[int] = []  # fed node j (handle length + j) -> its parent handle
        self.root_of: list[int] = []  # -> the root handle its branch hangs from
        self.depth: list[int] = []

    def _top(self, logits: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        top = self.torch.softmax(logits.detach(), dim=-1).topk(k, dim=-1)
        return top.indices.cpu().numpy(), top.values.cpu().numpy().astype(np.float32)

    def roots(self, positions: Sequence[int], k: int) -> tuple[list[int], np.ndarray, np.ndarray]:
        handles = [int(t) + 1 for t in positions]
        ids, probs = self._top(self.sequence_logits[handles], k)
        return handles, ids, probs

    def _ancestry(self, handle: int) -> tuple[int, int, list[int]]:
        """``(root handle, depth, fed ancestors' slots)`` of a handle."""
        if handle < self.length:
            return handle, 0, []
        j = handle - self.length
        root, depth, slots = self._ancestry(self.parent[j])
        return root, depth + 1, [*slots, handle]

    def expand(self, parents: Sequence[int], tokens: Sequence[int], k: int
               ) -> tuple[list[int], np.ndarray, np.ndarray]:
        torch = self.torch
        first = self.length + len(self.parent)
        count = len(parents)
        total = first + count
        visible = torch.zeros((count, total), dtype=torch.bool)
        positions = []
        for i, parent in enumerate(parents):
            root, depth, slots = self._ancestry(parent)
            visible[i, : root + 1] = True
            visible[i, slots] = True
            visible[i, first + i] = True
            positions.append(root + depth + 1)
            self.parent.append(parent)
        mask = torch.zeros((1, 1, count, total), dtype=self.dtype)
        mask = mask.masked_fill(~visible[None, None], torch.finfo(self.dtype).min)
        with torch.no_grad():
            hidden = self.decoder(
                input_ids=torch.tensor([list(tokens)], device=self.device),
                attention_mask=mask.to(self.device),
                position_ids=torch.tensor([positions], device=self.device), use_cache=True,
                **{self.cache_argument: self.cache}).last_hidden_state[0]
            ids, probs = self._top(self.transform(self.lm_head(hidden)).float(), k)
        return list(range(first, total)), ids, probs


def draft_model_expansion(draft: Any, sequences: Sequence[Any], k_max: int, d_max: int,
                          include_prompt: bool = False, progress: bool = True
                          ) -> DraftExpansion:
    """The expansion of ``draft`` over ``sequences`` (``Sequence_``, as the profiler holds
    them), one row per rank-vector row in the same order."""
    from tqdm import tqdm

    from treeopt.model.profiling import decode_positions

    if min(k_max, d_max) < 1:
        raise TreeoptError(f"--expand needs K_MAX >= 1 and D_MAX >= 1, not {k_max},{d_max}")
    rows: list[dict[Path, np.ndarray]] = []
    total = sum(len(decode_positions(len(s.prompt), len(s.ids), include_prompt))
                for s in sequences)
    with tqdm(total=total, unit="pos", desc="expansion", disable=not progress,
              leave=False) as bar:
        for seq in sequences:
            positions = list(decode_positions(len(seq.prompt), len(seq.ids), include_prompt))
            if not positions:
                continue
            session = DraftModelExpansion(draft, seq.ids)
            for begin in range(0, len(positions), POSITIONS_PER_CHUNK):
                session.reset()
                chunk = positions[begin:begin + POSITIONS_PER_CHUNK]
                rows.extend(record_expansion(session, chunk, k_max, d_max))
                bar.update(len(chunk))
    return expansion_from_children(rows, k_max, d_max)
