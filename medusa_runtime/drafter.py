"""Drafters: what proposes the tokens of the tree that each verification step checks.

A :class:`TreeDecoder` verifies a tree whose root is the target model's own next
token; a *drafter* fills the nodes below the root. Two kinds:

- :class:`MedusaHeadsDrafter`: Medusa heads, one per level, read the target's last
  accepted hidden state; a node of rank ``r`` at depth ``d`` gets head ``d``'s
  ``r``-th most likely token. No extra forward pass.
- :class:`DraftModelDrafter`: a small causal LM with the target's tokenizer (the
  speculative-decoding baseline). It expands its own top-k along the tree level by
  level: one draft forward pass per level that has children, so ``D`` passes for a
  depth-``D`` tree and ``gamma`` for the chain ``Tree.chain(gamma)``. A node of rank
  ``r`` gets the ``r``-th most likely draft token after its parent.

A drafter is stateless; :meth:`Drafter.session` makes the per-decoder state (for a
draft model: its own static KV cache). Sessions run inside the fixed-shape step,
so they never sync with the host and capture / compile with it.

Keeping the draft cache in step with the target's. The draft cache uses the target's
slot layout: committed tokens at the same slots, holes at the same slots, one shared
write pointer ``W`` advanced by the longest accepted path of the batch. After the
target accepts ``n_b`` nodes ``p_0 .. p_{n_b-1}`` (the old root first) of row ``b``
and emits the next root ``r``, the draft's first pass of the next tree feeds one
fixed block of ``D + 2`` tokens at slots ``W .. W+D+1``: the ``D + 1`` path slots
(the accepted nodes, then ignored filler that becomes holes, as in the target) and
``r`` (scratch, re-fed next step as ``p_0``). So the draft recomputes the accepted
tokens' keys/values from tokens alone, needs no compaction, and stays exact for
any accept length. The deeper levels' nodes go to scratch slots past the block,
each seeing the committed prefix, ``r`` and its own ancestors (the tree mask).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medusa_runtime.architectures import (
    LogitTransform,
    attention_windows,
    cache_argument,
    check_supported,
    needs_key_positions,
    text_config,
)
from medusa_runtime.buffers import TreeBuffers, tree_buffers
from medusa_runtime.heads import MedusaHeads
from treeopt.core.tree import Tree
from treeopt.errors import TreeoptError

# Slot alignment of the draft's cache (the target's reason: SDPA's fused kernels want
# 16-byte aligned mask rows, and 64 slots of any float dtype are).
DRAFT_CACHE_SLOT_ALIGNMENT = 64


def fill_random_context(cache: Any, write_length: torch.Tensor, row_lengths: torch.Tensor,
                        valid: torch.Tensor, context: int, std: float) -> None:
    """Make every row of ``cache`` hold ``context`` contiguous tokens of random keys/values.

    For timing a step at a context length without decoding that far: no holes, values
    never zero (zeros can run faster than real data). The target's and the draft's
    caches share this layout (``write_length``, ``row_lengths``, ``valid``).
    """
    for layer in cache.layers:
        layer.keys.normal_(std=std)
        layer.values.normal_(std=std)
    write_length.fill_(context)
    row_lengths.fill_(context)
    valid.zero_()
    valid[:, :context] = True


class DraftSession(ABC):
    """Per-decoder drafting state; methods run inside the fixed-shape step (no host sync).

    The decoder calls :meth:`start` once after its prefill, then every step
    :meth:`follow` with what the target accepted, and :meth:`next_tree` for the
    next tree's tokens.
    """

    def start(self, input_ids: torch.Tensor, pad_mask: torch.Tensor) -> None:  # noqa: B027
        """The target's prefill of left-padded ``input_ids [B, P]`` (``pad_mask``: real)."""

    def follow(self, accepted: torch.Tensor, accept_length: torch.Tensor) -> None:  # noqa: B027
        """A verification step accepted ``accepted [B, D+1]`` (root first), of which the
        first ``accept_length [B]`` are real."""

    @abstractmethod
    def next_tree(self, root: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Tree tokens ``[B, q]`` below ``root [B]`` (the target's next token);
        ``hidden [B, H]`` is the target's hidden state that predicted it."""

    def state(self) -> list[torch.Tensor]:
        """The tensors a step reads and changes in place (for snapshot / restore)."""
        return []

    def fill_context(self, context: int, std: float) -> None:  # noqa: B027 - optional hook
        """Make every row hold ``context`` committed tokens of random keys/values (timing)."""


class Drafter(ABC):
    """What fills a tree below its root; see the module doc."""

    @abstractmethod
    def check_tree(self, tree: Tree, vocab_size: int) -> None:
        """Raise TreeoptError (one line) if this drafter cannot fill ``tree``."""

    @abstractmethod
    def session(
        self, tree: Tree, buffers: TreeBuffers, batch_size: int, committed_slots: int,
    ) -> DraftSession:
        """State for one decoder: ``batch_size`` rows, up to ``committed_slots`` cached tokens.

        ``buffers``: the tree's buffers on the decoder's device.
        """


# ----------------------------------------------------------------- Medusa heads
class MedusaHeadsDrafter(Drafter):
    """Medusa heads as a drafter (``heads=None``: only the root-only tree)."""

    def __init__(self, heads: MedusaHeads | nn.Module | None) -> None:
        self.heads = heads

    def check_tree(self, tree: Tree, vocab_size: int) -> None:
        if tree.depth == 0:
            return
        if self.heads is None:
            raise TreeoptError(
                f"a tree of depth {tree.depth} needs Medusa heads (only the root-only tree runs "
                "without them)"
            )
        if tree.depth > self.heads.num_heads:
            raise TreeoptError(
                f"tree depth {tree.depth} > {self.heads.num_heads} Medusa heads (one head per "
                "level)"
            )
        top_k = tree_buffers(tree).top_k
        if top_k > vocab_size:
            raise TreeoptError(
                f"tree uses rank {top_k - 1} but the heads' vocabulary has only {vocab_size} "
                "tokens"
            )

    def session(
        self, tree: Tree, buffers: TreeBuffers, batch_size: int, committed_slots: int,
    ) -> DraftSession:
        return _HeadsSession(self.heads, tree.depth, buffers)


class _HeadsSession(DraftSession):
    def __init__(self, heads: nn.Module | None, depth: int, buffers: TreeBuffers) -> None:
        self.heads, self.depth, self.buffers = heads, depth, buffers

    def next_tree(self, root: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return self._tree(root, hidden)

    def _tree(self, root: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """``root [B]``, then the heads' top-k at ``hidden [B, H]`` laid out on the tree."""
        batch = root.shape[0]
        root = root.view(batch, 1)
        if self.depth == 0:
            return root
        assert self.heads is not None  # check_tree refused a deep tree without heads
        # [D, B, V]; reshape also takes heads that drop a batch dimension of one.
        head_logits = self.heads(hidden, num_heads=self.depth).reshape(self.depth, batch, -1)
        top = head_logits.topk(self.buffers.top_k, dim=-1).indices  # [D, B, k]
        flat = torch.cat([root, top.transpose(0, 1).reshape(batch, -1)], dim=1)
        return flat[:, self.buffers.candidate_indices]


# ------------------------------------------------------------------ draft model
@dataclass(frozen=True)
class _Level:
    """One draft pass: the nodes it feeds and the children it names (device tensors).

    ``fed`` ``[m]``: node numbers fed at this level (depth ``d``, with children);
    ``children`` ``[c]``: the nodes at depth ``d + 1``; ``pick`` ``[c]``: where each
    child's token sits in the flattened ``[m, top_k]`` top-k of the fed nodes;
    ``sees`` ``[m, n_scratch]``: fed node i sees scratch slot j (its ancestors and
    itself); ``scratch_start``: the first scratch slot this level writes.
    """

    fed: torch.Tensor
    children: torch.Tensor
    pick: torch.Tensor
    top_k: int
    sees: torch.Tensor
    scratch_start: int


def _levels(tree: Tree, device: torch.device) -> tuple[list[_Level], int]:
    """The draft passes of ``tree`` and how many scratch slots they write."""
    nodes = [(), *tree.paths]
    index = {path: i for i, path in enumerate(nodes)}
    has_children = {path[:-1] for path in tree.paths}
    fed_per_depth = [[index[p] for p in nodes if len(p) == d and p in has_children]
                     for d in range(tree.depth)]
    scratch = [node for fed in fed_per_depth[1:] for node in fed]  # depth >= 1 live there
    mask = tree_buffers(tree).attention_mask  # [q, q] ancestor-or-self
    levels, start = [], 0
    for depth, fed in enumerate(fed_per_depth):
        children = [p for p in nodes if len(p) == depth + 1]
        top_k = max(p[-1] for p in children) + 1
        local = {node: i for i, node in enumerate(fed)}
        pick = [local[index[p[:-1]]] * top_k + p[-1] for p in children]
        sees = mask[fed][:, scratch] if scratch else torch.zeros(len(fed), 0, dtype=torch.bool)
        levels.append(_Level(
            fed=torch.tensor(fed, device=device),
            children=torch.tensor([index[p] for p in children], device=device),
            pick=torch.tensor(pick, device=device),
            top_k=top_k,
            sees=sees.to(device),
            scratch_start=start if depth else 0,
        ))
        if depth:
            start += len(fed)
    return levels, len(scratch)


class DraftModelDrafter(Drafter):
    """A small causal LM with the target's tokenizer as the drafter (see the module doc).

    Any model the runtime supports (``architectures``) without sliding-window layers
    and whose positions enter only through ``position_ids`` (not ALiBi, not GPT-Neo).
    It may have its own dtype; it must be on the target's device and have the
    target's vocabulary size.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])

    def check_tree(self, tree: Tree, vocab_size: int) -> None:
        if vocab_size != self.vocab_size:
            raise TreeoptError(
                f"the draft model's vocabulary ({self.vocab_size} tokens) differs from the "
                f"target's ({vocab_size}): a draft model needs the target's tokenizer"
            )
        top_k = tree_buffers(tree).top_k
        if top_k > vocab_size:
            raise TreeoptError(
                f"tree uses rank {top_k - 1} but the vocabulary has only {vocab_size} tokens"
            )

    def session(
        self, tree: Tree, buffers: TreeBuffers, batch_size: int, committed_slots: int,
    ) -> DraftSession:
        return _DraftModelSession(self.model, tree, batch_size, committed_slots,
                                  buffers.position_offsets.device)


class _DraftModelSession(DraftSession):
    """The draft's static cache and bookkeeping, mirroring the target's slot layout."""

    def __init__(self, model: nn.Module, tree: Tree, batch_size: int, committed_slots: int,
                 device: torch.device) -> None:
        from transformers.cache_utils import Cache, StaticLayer

        check_supported(model)
        if any(window is not None for window in attention_windows(text_config(model)).values()):
            raise TreeoptError("draft models with sliding-window attention are not supported")
        if needs_key_positions(model):
            raise TreeoptError(f"{model.config.model_type} draft models are not supported: their "
                               "positions enter beyond position_ids (ALiBi, local windows)")
        if next(model.parameters()).device != device:
            raise TreeoptError(f"the draft model is on {next(model.parameters()).device}, the "
                               f"target on {device}: put both on one device")
        self.decoder = model.get_decoder()
        self.lm_head = model.get_output_embeddings()
        self.logit_transform = LogitTransform.of(model)
        self.cache_argument = cache_argument(self.decoder)
        self.dtype = next(model.parameters()).dtype
        self.device = device
        self.depth = tree.depth
        self.levels, num_scratch = _levels(tree, device) if tree.depth else ([], 0)
        self.num_scratch = num_scratch
        # Committed tokens, then the first pass's block of D + 2, then the scratch.
        slots = committed_slots + self.depth + 2 + num_scratch
        slots = -(-slots // DRAFT_CACHE_SLOT_ALIGNMENT) * DRAFT_CACHE_SLOT_ALIGNMENT
        num_layers = text_config(model).num_hidden_layers
        self.cache = Cache(layers=[StaticLayer(slots) for _ in range(num_layers)])
        self.write_length = torch.zeros((), dtype=torch.long, device=device)  # shared W
        self.row_lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.valid = torch.zeros(batch_size, slots, dtype=torch.bool, device=device)
        # What the last step accepted, re-fed by the next tree's first pass.
        self.accepted = torch.zeros(batch_size, self.depth + 1, dtype=torch.long, device=device)
        self.accept_length = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.slots = torch.arange(slots, device=device)
        self.num_tokens = tree.num_tokens

    def state(self) -> list[torch.Tensor]:
        return [self.write_length, self.row_lengths, self.valid, self.accepted,
                self.accept_length]

    def fill_context(self, context: int, std: float) -> None:
        if self.depth == 0:
            return  # the root-only tree never runs the draft (its cache stays unallocated)
        fill_random_context(self.cache, self.write_length, self.row_lengths, self.valid,
                            context, std)
        self.accept_length.zero_()

    # ------------------------------------------------------------ forward
    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor, write_at: torch.Tensor,
                 visible: torch.Tensor) -> torch.Tensor:
        """Draft logits ``[B, T, V]`` of ``tokens [B, T]`` written at slots ``write_at + 0..T-1``.

        ``visible [B, T, S]``: which cache slots each token attends to.
        """
        for layer in self.cache.layers:  # StaticLayer writes at cumulative_length + arange(T)
            layer.cumulative_length.copy_(write_at)
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=self.device)
        mask = mask.masked_fill(~visible, torch.finfo(self.dtype).min)[:, None]
        hidden = self.decoder(
            input_ids=tokens, attention_mask=mask, position_ids=positions, use_cache=True,
            **{self.cache_argument: self.cache},
        ).last_hidden_state
        return self.logit_transform(self.lm_head(hidden))

    def _block_visible(self, block: torch.Tensor, write_at: torch.Tensor) -> torch.Tensor:
        """``[B, T, S]``: the block's own mask ``block [B, T, T]`` at its slots, plus ``valid``."""
        length = block.shape[-1]
        relative = self.slots - write_at
        in_block = (relative >= 0) & (relative < length)
        sees_block = block[..., relative.clamp(0, length - 1)] & in_block
        return sees_block | self.valid[:, None, :]

    def start(self, input_ids: torch.Tensor, pad_mask: torch.Tensor) -> None:
        """Run the prompts into the draft's empty cache; nothing accepted yet."""
        length = input_ids.shape[1]
        self.write_length.zero_()
        self.row_lengths.zero_()
        self.valid.zero_()
        self.accept_length.zero_()
        if self.depth == 0:
            return
        causal = torch.ones(length, length, dtype=torch.bool, device=self.device).tril()
        itself = torch.eye(length, dtype=torch.bool, device=self.device)  # pads see themselves
        block = causal & (pad_mask[:, None, :] | itself)
        offsets = (pad_mask.cumsum(dim=-1) - 1).clamp(min=0)
        self._forward(input_ids, offsets, self.write_length,
                      self._block_visible(block, self.write_length))
        self.valid[:, :length] = pad_mask
        self.write_length.fill_(length)
        self.row_lengths.copy_(pad_mask.sum(dim=-1))

    def follow(self, accepted: torch.Tensor, accept_length: torch.Tensor) -> None:
        self.accepted.copy_(accepted)
        self.accept_length.copy_(accept_length)

    def next_tree(self, root: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        batch, depth = root.shape[0], self.depth
        if depth == 0:
            return root.view(batch, 1)
        accept_length = self.accept_length
        start = self.write_length.clone()  # W: the block's first slot this step
        # Pass 0: the accepted path (commits it) and the new root, one fixed block.
        width = depth + 2
        order = self.slots[:width]
        real = (order[None, :] < accept_length[:, None]) | (order == depth + 1)[None, :]
        block = ((order[:, None] >= order[None, :])[None] & real[:, None, :]) | torch.eye(
            width, dtype=torch.bool, device=self.device)[None]
        offsets = torch.where(order == depth + 1, accept_length[:, None], order[None, :])
        tokens = torch.cat([self.accepted, root[:, None]], dim=1)
        logits = self._forward(tokens, self.row_lengths[:, None] + offsets, start,
                               self._block_visible(block, start))
        path_slots = start + order[: depth + 1]
        self.valid.index_copy_(1, path_slots, order[None, : depth + 1] < accept_length[:, None])
        self.row_lengths.add_(accept_length)
        self.write_length.add_(accept_length.max())
        self.accept_length.zero_()  # committed: a second call re-drafts from the same text

        tree_tokens = torch.zeros(batch, self.num_tokens, dtype=torch.long, device=self.device)
        tree_tokens[:, 0] = root
        parent_logits = logits[:, depth + 1 :]  # [B, 1, V]: after the new root
        committed = self.valid | (self.slots == start + depth + 1)[None, :]  # + the root's slot
        scratch_base = start + width
        for level_depth, level in enumerate(self.levels):
            if level_depth:  # feed this level's nodes to get their children's logits
                write_at = scratch_base + level.scratch_start
                relative = self.slots - scratch_base
                in_scratch = (relative >= 0) & (relative < self.num_scratch)
                sees = level.sees[:, relative.clamp(0, self.num_scratch - 1)] & in_scratch
                visible = committed[:, None, :] | sees[None]
                positions = (self.row_lengths[:, None] + level_depth).expand(
                    -1, level.fed.shape[0])
                parent_logits = self._forward(tree_tokens[:, level.fed], positions, write_at,
                                              visible)
            top = parent_logits.topk(level.top_k, dim=-1).indices.flatten(1)  # [B, m * k]
            tree_tokens = tree_tokens.index_copy(1, level.children, top[:, level.pick])
        return tree_tokens
