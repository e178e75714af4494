"""Drafters: what proposes the tokens of the tree that each verification step checks.

A :class:`TreeDecoder` verifies a tree whose root is the target model's own next
token; a *drafter* fills the nodes below the root. :class:`Drafter` is the one
extension point; every drafter implements it:

- :class:`MedusaHeadsDrafter`: Medusa heads, one per level, read the target's last
  accepted hidden state; a node of rank ``r`` at depth ``d`` gets head ``d``'s
  ``r``-th most likely token. No extra forward pass. (Per-step Medusa trees,
  ``dynamic:N``: ``medusa_runtime.dynamic``.)
- :class:`DraftModelDrafter`: a small causal LM with the target's tokenizer. It
  expands its own top-k along the tree level by level: one draft forward pass per
  level that has children.
- ``medusa_runtime.eagle.EagleDrafter``: an EAGLE-1/2 or EAGLE-3 head, fed the
  target's hidden states.

The last two keep their own static KV cache (:class:`CachedDraftSession`, over the
shared ``static_forward``) and build either a static tree or, per step, the
engine-style beam tree ``dynamic:S,K,N`` (``medusa_runtime.beam``) from their own
probabilities.

A drafter is stateless; :meth:`Drafter.session` makes the per-decoder state. A
session owns the step's tree tokens and layout (mask, position offsets, retrieve
table: the static tree's buffers, or ``[B, ...]`` ones chosen per step). Sessions
run inside the fixed-shape step, so they never sync with the host and capture /
compile with it.

Keeping a draft cache in step with the target's. The draft cache uses the target's
slot layout: committed tokens at the same slots, holes at the same slots, one shared
write pointer ``W`` advanced by the longest accepted path of the batch. After the
target accepts ``n_b`` nodes ``p_0 .. p_{n_b-1}`` (the old root first) of row ``b``
and emits the next root ``r``, the draft's first pass of the next tree feeds one
fixed block at slots ``W ..``: the ``D + 1`` path slots (the accepted nodes, then
ignored filler that becomes holes, as in the target) and, for a draft model, ``r``
(scratch, re-fed next step as ``p_0``). So the draft recomputes the accepted
tokens' keys/values, needs no compaction, and stays exact for any accept length.
The deeper levels' nodes go to scratch slots past the block, each seeing the
committed prefix, ``r`` and its own ancestors (the tree mask).
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
    decoder_call,
    needs_key_positions,
    text_config,
)
from medusa_runtime.beam import BeamTree, build_beam_tree
from medusa_runtime.buffers import TreeBuffers, tree_buffers
from medusa_runtime.heads import MedusaHeads
from medusa_runtime.static_forward import (
    StaticCache,
    StaticForward,
    hf_decoder_call,
    prompt_block,
)
from treeopt.core.tree import Tree
from treeopt.errors import TreeoptError

# What a session verifies: a static tree, a per-step policy (Medusa ``dynamic:N``) or
# the engine-style beam tree.
TreeSpec = Any


class DraftSession(ABC):
    """Per-decoder drafting state; methods run inside the fixed-shape step (no host sync).

    The decoder calls :meth:`start` once after its prefill, then every step
    :meth:`follow` with what the target accepted, and :meth:`next_tree`, which writes
    the next tree into :attr:`tokens` (and a per-step tree's layout).
    """

    tokens: torch.Tensor  # [B, q] the next step's tree tokens, root first
    depth: int  # deepest node a step can hold

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[1])

    @abstractmethod
    def layout(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This step's ``(attention mask, position offsets, retrieve indices)``: a static
        tree's buffers shared by every row, or ``[B, ...]`` ones chosen per step."""

    def start(self, input_ids: torch.Tensor, pad_mask: torch.Tensor,  # noqa: B027
              root: torch.Tensor, features: torch.Tensor | None) -> None:
        """The target's prefill of left-padded ``input_ids [B, P]`` (``pad_mask``: real),
        its next token ``root [B]`` and, for drafters that read them, its features
        ``[B, P, F]``."""

    def follow(self, accepted: torch.Tensor, accept_length: torch.Tensor,  # noqa: B027
               features: torch.Tensor | None) -> None:
        """A verification step accepted ``accepted [B, D+1]`` (root first), of which the
        first ``accept_length [B]`` are real; ``features [B, D+1, F]`` at those nodes."""

    @abstractmethod
    def next_tree(self, root: torch.Tensor, hidden: torch.Tensor) -> None:
        """Lay out the tree below ``root [B]`` (the target's next token); ``hidden [B, H]``
        is the target's last hidden state that predicted it."""

    def state(self) -> list[torch.Tensor]:
        """The tensors a step reads and changes in place (for snapshot / restore)."""
        return [self.tokens]

    def fill_context(self, context: int, std: float) -> None:  # noqa: B027 - optional hook
        """Make every row hold ``context`` committed tokens of random keys/values (timing)."""


class Drafter(ABC):
    """What fills a tree below its root; see the module doc.

    ``feature_layers``: which target hidden states the drafter reads — None (none),
    ``()`` (the last, normed hidden state) or HF ``hidden_states`` indices
    (concatenated).
    """

    feature_layers: tuple[int, ...] | None = None

    @abstractmethod
    def check_tree(self, tree: TreeSpec, vocab_size: int) -> None:
        """Raise TreeoptError (one line) if this drafter cannot fill ``tree``."""

    @abstractmethod
    def session(self, tree: TreeSpec, batch_size: int, committed_slots: int,
                device: torch.device) -> DraftSession:
        """State for one decoder: ``batch_size`` rows, up to ``committed_slots`` cached tokens."""


class StaticLayout:
    """One static tree's layout: its buffers (shared by the rows) and the tokens ``[B, q]``."""

    def __init__(self, tree: Tree, batch_size: int, device: torch.device) -> None:
        self.buffers: TreeBuffers = tree_buffers(tree).to(device)
        self.tokens = torch.zeros(batch_size, tree.num_tokens, dtype=torch.long, device=device)

    def layout(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        buffers = self.buffers
        return buffers.attention_mask, buffers.position_offsets, buffers.retrieve_indices


class PerStepLayout:
    """A per-step tree's layout tensors ``[B, ...]`` (updated in place: a captured graph
    reads them)."""

    def __init__(self, batch_size: int, size: int, depth: int, device: torch.device) -> None:
        self.tokens = torch.zeros((batch_size, size), dtype=torch.long, device=device)
        self.mask = torch.zeros((batch_size, size, size), dtype=torch.bool, device=device)
        self.offsets = torch.zeros((batch_size, size), dtype=torch.long, device=device)
        self.retrieve = torch.full((batch_size, size, depth + 1), -1, dtype=torch.long,
                                   device=device)

    def tensors(self) -> list[torch.Tensor]:
        return [self.tokens, self.mask, self.offsets, self.retrieve]


def check_top_k(top_k: int, vocab_size: int, what: str = "the vocabulary") -> None:
    """One-line TreeoptError when a tree ranks past ``vocab_size`` tokens."""
    if top_k > vocab_size:
        raise TreeoptError(f"tree uses rank {top_k - 1} but {what} has only {vocab_size} tokens")


def tree_top_k(tree: TreeSpec) -> int:
    """Candidates per node a tree takes: 1 + its largest rank, or a beam's K."""
    return tree.top_k if isinstance(tree, BeamTree) else tree_buffers(tree).top_k


# ----------------------------------------------------------------- Medusa heads
class MedusaHeadsDrafter(Drafter):
    """Medusa heads as a drafter (``heads=None``: only the root-only tree).

    A per-step policy (``medusa_runtime.dynamic.DynamicTree``) brings its own session
    through ``tree.heads_session(heads, batch_size, device)``.
    """

    def __init__(self, heads: MedusaHeads | nn.Module | None) -> None:
        self.heads = heads

    def check_tree(self, tree: TreeSpec, vocab_size: int) -> None:
        if isinstance(tree, BeamTree):
            raise TreeoptError(f"--tree {tree} needs a drafter with its own probabilities "
                               "(--eagle or --draft-model); Medusa heads use dynamic:N")
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
        if isinstance(tree, Tree):
            check_top_k(tree_buffers(tree).top_k, vocab_size, "the heads' vocabulary")

    def session(self, tree: TreeSpec, batch_size: int, committed_slots: int,
                device: torch.device) -> DraftSession:
        if not isinstance(tree, Tree):
            return tree.heads_session(self.heads, batch_size, device)
        return _HeadsSession(self.heads, tree, batch_size, device)


class _HeadsSession(DraftSession):
    def __init__(self, heads: nn.Module | None, tree: Tree, batch_size: int,
                 device: torch.device) -> None:
        self.static_tree = StaticLayout(tree, batch_size, device)
        self.buffers, self.tokens = self.static_tree.buffers, self.static_tree.tokens
        self.heads, self.depth = heads, tree.depth

    def layout(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.static_tree.layout()

    def next_tree(self, root: torch.Tensor, hidden: torch.Tensor) -> None:
        """``root [B]``, then the heads' top-k at ``hidden [B, H]`` laid out on the tree."""
        batch = root.shape[0]
        if self.depth == 0:
            self.tokens.copy_(root.view(batch, 1))
            return
        assert self.heads is not None  # check_tree refused a deep tree without heads
        # [D, B, V]; reshape also takes heads that drop a batch dimension of one.
        head_logits = self.heads(hidden, num_heads=self.depth).reshape(self.depth, batch, -1)
        top = head_logits.topk(self.buffers.top_k, dim=-1).indices  # [D, B, k]
        flat = torch.cat([root.view(batch, 1), top.transpose(0, 1).reshape(batch, -1)], dim=1)
        self.tokens.copy_(flat[:, self.buffers.candidate_indices])


# ----------------------------------------------------------- drafters with a cache
@dataclass(frozen=True)
class _Level:
    """One draft pass of a static tree: the nodes it feeds and the children it names.

    ``fed`` ``[m]``: node numbers fed at this level (depth ``d``, with children);
    ``parents`` ``[m]``: their parents; ``children`` ``[c]``: the nodes at depth
    ``d + 1``; ``pick`` ``[c]``: where each child's token sits in the flattened
    ``[m, top_k]`` top-k of the fed nodes; ``sees`` ``[m, n_scratch]``: fed node i
    sees scratch slot j (its ancestors and itself); ``scratch_start``: the first
    scratch slot this level writes.
    """

    fed: torch.Tensor
    parents: torch.Tensor
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
            parents=torch.tensor([index[nodes[i][:-1]] if i else 0 for i in fed], device=device),
            children=torch.tensor([index[p] for p in children], device=device),
            pick=torch.tensor(pick, device=device),
            top_k=top_k,
            sees=sees.to(device),
            scratch_start=start if depth else 0,
        ))
        if depth:
            start += len(fed)
    return levels, len(scratch)


@dataclass(frozen=True)
class _Expansion:
    """Where a tree's deeper levels run after the commit pass: the slots a node sees
    besides the scratch (``committed [B, S]``), where the scratch starts, the position
    of the root's draft input (``base [B]``, a node at depth ``d`` is at ``base + d``),
    and the drafter's output at the root (``logits [B, V]``, ``hidden [B, H]``)."""

    committed: torch.Tensor
    scratch_base: torch.Tensor
    base: torch.Tensor
    logits: torch.Tensor
    hidden: torch.Tensor | None


class CachedDraftSession(DraftSession):
    """A drafter with its own static cache mirroring the target's slots (module doc).

    Subclasses give :meth:`_pass` (one forward over the draft cache) and
    :attr:`pairs_with_next` (EAGLE: the draft input at a position pairs that token's
    target feature with the *next* token, so the root's input is committed with the
    accepted path; a draft model re-feeds the root as scratch).
    """

    pairs_with_next = False
    feature_size = 0  # width of the target features fed (0: none)
    hidden_size = 0  # width of the drafter's own output fed back (0: none)

    def __init__(self, tree: TreeSpec, num_layers: int, batch_size: int, committed_slots: int,
                 device: torch.device) -> None:
        self.tree = tree
        self.beam = tree if isinstance(tree, BeamTree) else None
        self.depth = tree.depth
        self.device = device
        if self.beam is not None:
            self.levels, num_scratch = [], (self.beam.steps - 1) * self.beam.top_k
            self.per_step = PerStepLayout(batch_size, tree.num_tokens, self.depth, device)
            self.tokens = self.per_step.tokens
        else:
            self.levels, num_scratch = _levels(tree, device) if tree.depth else ([], 0)
            self.static_tree = StaticLayout(tree, batch_size, device)
            self.tokens = self.static_tree.tokens
        self.num_scratch = num_scratch
        self.block_width = self.depth + (1 if self.pairs_with_next else 2)
        # Committed tokens, then the first pass's block, then the scratch.
        self.static = StaticCache(num_layers, committed_slots + self.block_width + num_scratch,
                                  batch_size, device)
        width = self.depth + 1
        self.accepted = torch.zeros(batch_size, width, dtype=torch.long, device=device)
        self.accept_length = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.features = torch.zeros(batch_size, width, max(self.feature_size, 1), device=device)

    # ------------------------------------------------------------ subclass hooks
    @abstractmethod
    def _pass(self, tokens: torch.Tensor, features: torch.Tensor | None,
              positions: torch.Tensor, write_at: torch.Tensor,
              visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Draft ``(logits [B, T, V_draft], output hidden [B, T, H] or None)`` of ``tokens``
        (target ids) with ``features [B, T, F or H]`` at ``positions``, written at
        slots ``write_at ..``, attending to ``visible [B, T, S]``."""

    def to_target(self, ids: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary token ids -> the target's (identity unless EAGLE-3's d2t)."""
        return ids

    # ------------------------------------------------------------ state
    def layout(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.beam is not None:
            return self.per_step.mask, self.per_step.offsets, self.per_step.retrieve
        return self.static_tree.layout()

    def state(self) -> list[torch.Tensor]:
        extra = self.per_step.tensors() if self.beam is not None else [self.tokens]
        return [*self.static.state(), self.accepted, self.accept_length, self.features, *extra]

    def fill_context(self, context: int, std: float) -> None:
        if self.depth == 0:
            return  # the root-only tree never runs the draft (its cache stays unallocated)
        self.static.fill_random(context, std)
        self.accept_length.zero_()

    # ------------------------------------------------------------ the passes
    def start(self, input_ids: torch.Tensor, pad_mask: torch.Tensor, root: torch.Tensor,
              features: torch.Tensor | None) -> None:
        """Run the prompts into the draft's empty cache (module doc)."""
        self.static.reset()
        self.accept_length.zero_()
        if self.depth == 0:
            return
        block, offsets = prompt_block(pad_mask)
        tokens = input_ids
        if self.pairs_with_next:  # position i pairs feature i with token i + 1
            tokens = torch.cat([input_ids[:, 1:], root[:, None]], dim=1)
            # The last pair (feature of the last prompt token, the root) is fed by the
            # first commit pass, as an accepted path of one.
            block, offsets = block[:, :-1, :-1], offsets[:, :-1]
            tokens, pad_mask = tokens[:, :-1], pad_mask[:, :-1]
            self.accepted[:, 0] = input_ids[:, -1]
            self.features[:, 0] = features[:, -1].to(self.features.dtype)
            self.accept_length.fill_(1)
            features = features[:, :-1]
        if tokens.shape[1]:
            zero = self.static.write_length
            self._pass(tokens, features, offsets, zero, self.static.block_visible(block, zero))
            self.static.commit_prompt(pad_mask)

    def follow(self, accepted: torch.Tensor, accept_length: torch.Tensor,
               features: torch.Tensor | None) -> None:
        self.accepted.copy_(accepted)
        self.accept_length.copy_(accept_length)
        if self.feature_size and features is not None:
            self.features.copy_(features)

    def _commit(self, root: torch.Tensor) -> _Expansion:
        """The first pass: the accepted path (committed) and the root's input."""
        static, depth, width = self.static, self.depth, self.block_width
        accept_length = self.accept_length
        start = static.write_length.clone()  # W: the block's first slot this step
        order = static.slots[:width]
        if self.pairs_with_next:
            real = order[None, :] < accept_length[:, None]
            shifted = torch.cat([self.accepted[:, 1:], root[:, None]], dim=1)
            tokens = torch.where(order[None, :] == (accept_length - 1)[:, None],
                                 root[:, None], shifted)
            offsets = order[None, :].expand(root.shape[0], -1)
            root_at = (accept_length - 1).clamp(min=0)
        else:
            real = (order[None, :] < accept_length[:, None]) | (order == depth + 1)[None, :]
            tokens = torch.cat([self.accepted, root[:, None]], dim=1)
            offsets = torch.where(order == depth + 1, accept_length[:, None], order[None, :])
            root_at = torch.full_like(accept_length, depth + 1)
        block = ((order[:, None] >= order[None, :])[None] & real[:, None, :]) | torch.eye(
            width, dtype=torch.bool, device=self.device)[None]
        features = self.features if self.feature_size else None
        logits, hidden = self._pass(tokens, features, static.row_lengths[:, None] + offsets,
                                    start, static.block_visible(block, start))
        path_slots = start + order[: depth + 1]
        static.valid.index_copy_(1, path_slots, order[None, : depth + 1] < accept_length[:, None])
        static.row_lengths.add_(accept_length)
        static.write_length.add_(accept_length.max())
        self.accept_length.zero_()  # committed: a second call re-drafts from the same text
        pick = root_at[:, None, None]
        root_logits = logits.gather(1, pick.expand(-1, -1, logits.shape[-1]))[:, 0]
        root_hidden = (hidden.gather(1, pick.expand(-1, -1, hidden.shape[-1]))[:, 0]
                       if hidden is not None else None)
        committed = static.valid
        base = static.row_lengths - 1 if self.pairs_with_next else static.row_lengths
        if not self.pairs_with_next:  # + the root's scratch slot
            committed = committed | (static.slots == start + depth + 1)[None, :]
        return _Expansion(committed, start + width, base, root_logits, root_hidden)

    def _scratch_visible(self, expansion: _Expansion, sees: torch.Tensor) -> torch.Tensor:
        """``[B, m, S]``: committed slots plus the scratch slots ``sees [(B,) m, n_scratch]``."""
        relative = self.static.slots - expansion.scratch_base
        in_scratch = (relative >= 0) & (relative < self.num_scratch)
        sees = sees[..., relative.clamp(0, self.num_scratch - 1)] & in_scratch
        return expansion.committed[:, None, :] | sees

    def next_tree(self, root: torch.Tensor, hidden: torch.Tensor) -> None:
        batch = root.shape[0]
        if self.depth == 0:
            self.tokens.copy_(root.view(batch, 1))
            return
        expansion = self._commit(root)
        if self.beam is not None:
            self._beam_tree(root, expansion)
        else:
            self._static_tree(root, expansion)

    def _static_tree(self, root: torch.Tensor, expansion: _Expansion) -> None:
        """Fill the static tree level by level with the draft's top-k."""
        batch = root.shape[0]
        tree_tokens = torch.zeros_like(self.tokens)
        tree_tokens[:, 0] = root
        logits = expansion.logits[:, None]  # [B, 1, V]: after the root
        node_hidden = None
        if expansion.hidden is not None:  # the draft's output at each fed node
            node_hidden = expansion.hidden.new_zeros(batch, self.tokens.shape[1],
                                                     expansion.hidden.shape[-1])
            node_hidden[:, 0] = expansion.hidden
        for level_depth, level in enumerate(self.levels):
            if level_depth:  # feed this level's nodes to get their children's logits
                features = node_hidden[:, level.parents] if node_hidden is not None else None
                positions = (expansion.base[:, None] + level_depth).expand(-1, level.fed.shape[0])
                logits, out = self._pass(tree_tokens[:, level.fed], features, positions,
                                         expansion.scratch_base + level.scratch_start,
                                         self._scratch_visible(expansion, level.sees[None]))
                if node_hidden is not None and out is not None:
                    node_hidden = node_hidden.index_copy(1, level.fed, out)
            top = self.to_target(logits.topk(level.top_k, dim=-1).indices).flatten(1)
            tree_tokens = tree_tokens.index_copy(1, level.children, top[:, level.pick])
        self.tokens.copy_(tree_tokens)

    def _beam_tree(self, root: torch.Tensor, expansion: _Expansion) -> None:
        """Build ``dynamic:S,K,N`` (``medusa_runtime.beam``) with this drafter's passes."""
        spec = self.beam
        k, batch, n_scratch = spec.top_k, root.shape[0], self.num_scratch
        frontier: dict[str, Any] = {
            "sees": torch.zeros(batch, k, n_scratch, dtype=torch.bool, device=self.device),
            "hidden": (expansion.hidden[:, None].expand(-1, k, -1)
                       if expansion.hidden is not None else None),
        }
        own_slots = torch.eye(k, n_scratch, dtype=torch.bool, device=self.device)

        def expand(level: int, tokens: torch.Tensor, parent_rank: torch.Tensor) -> torch.Tensor:
            first = (level - 2) * k  # this level's frontier goes to scratch first .. first+K-1
            sees = frontier["sees"].gather(1, parent_rank[..., None].expand(-1, -1, n_scratch))
            sees = sees | own_slots.roll(first, dims=1)[None]
            parent_hidden = frontier["hidden"]
            features = None
            if parent_hidden is not None:
                features = parent_hidden.gather(
                    1, parent_rank[..., None].expand(-1, -1, parent_hidden.shape[-1]))
            positions = (expansion.base[:, None] + level - 1).expand(-1, k)
            logits, out = self._pass(tokens, features, positions,
                                     expansion.scratch_base + first,
                                     self._scratch_visible(expansion, sees))
            frontier["sees"], frontier["hidden"] = sees, out
            return torch.softmax(logits.float(), dim=-1)

        result = build_beam_tree(spec, root, torch.softmax(expansion.logits.float(), dim=-1),
                                 expand, self.to_target)
        layout = self.per_step
        for target, value in zip(layout.tensors(), (result.tokens, result.mask, result.offsets,
                                                    result.retrieve), strict=True):
            target.copy_(value)


# ------------------------------------------------------------------ draft model
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

    def check_tree(self, tree: TreeSpec, vocab_size: int) -> None:
        if vocab_size != self.vocab_size:
            raise TreeoptError(
                f"the draft model's vocabulary ({self.vocab_size} tokens) differs from the "
                f"target's ({vocab_size}): a draft model needs the target's tokenizer"
            )
        if not isinstance(tree, Tree | BeamTree):
            raise TreeoptError("dynamic:N trees are chosen by Medusa heads; a draft model "
                               "builds dynamic:STEPS,TOPK,TOKENS")
        check_top_k(tree_top_k(tree), vocab_size)

    def session(self, tree: TreeSpec, batch_size: int, committed_slots: int,
                device: torch.device) -> DraftSession:
        return _DraftModelSession(self.model, tree, batch_size, committed_slots, device)


class _DraftModelSession(CachedDraftSession):
    """The draft's static cache and bookkeeping, mirroring the target's slot layout."""

    def __init__(self, model: nn.Module, tree: TreeSpec, batch_size: int, committed_slots: int,
                 device: torch.device) -> None:
        check_supported(model)
        if any(window is not None for window in attention_windows(text_config(model)).values()):
            raise TreeoptError("draft models with sliding-window attention are not supported")
        if needs_key_positions(model):
            raise TreeoptError(f"{model.config.model_type} draft models are not supported: their "
                               "positions enter beyond position_ids (ALiBi, local windows)")
        if next(model.parameters()).device != device:
            raise TreeoptError(f"the draft model is on {next(model.parameters()).device}, the "
                               f"target on {device}: put both on one device")
        super().__init__(tree, text_config(model).num_hidden_layers, batch_size,
                         committed_slots, device)
        self.lm_head = model.get_output_embeddings()
        self.logit_transform = LogitTransform.of(model)
        call = hf_decoder_call(decoder_call(model, batch_size),
                               cache_argument(model.get_decoder()))
        self.forward = StaticForward(self.static, call, next(model.parameters()).dtype)

    def _pass(self, tokens: torch.Tensor, features: torch.Tensor | None,
              positions: torch.Tensor, write_at: torch.Tensor,
              visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden = self.forward(tokens, positions, write_at, visible)
        return self.logit_transform(self.lm_head(hidden)), None
