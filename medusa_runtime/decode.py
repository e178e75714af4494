"""Medusa decoding with tree attention over a static KV cache.

One *step* verifies a whole tree in one forward pass and is fixed-shape, so on
a GPU it is captured once per tree as a CUDA graph and replayed:

1. write the tree's ``q`` tokens at cache slots ``L .. L+q-1`` (``L`` = tokens
   already in the cache), positions ``L + depth``, under a mask where each node
   sees the prefix, its ancestors and itself;
2. pick the longest accepted root-to-leaf path (``acceptance``);
3. compact the cache: move the accepted nodes' keys/values to ``L .. L+n-1`` so
   the cache never holds rejected nodes;
4. emit the accepted candidates plus the base model's next token (the next
   root), run the heads at the last accepted node, and lay out the next tree.

The host reads back only the emitted tokens and their count (one sync a step).
The root-only tree (``Tree.empty``) is plain autoregressive decoding through the
same machinery, for fair comparisons.

Works with any HF causal LM whose decoder takes a 4D additive attention mask and
explicit ``position_ids`` with a ``StaticCache`` (Llama, Mistral, Qwen2 checked).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from medusa_runtime.acceptance import Acceptance, TypicalAcceptance, accept
from medusa_runtime.buffers import tree_buffers
from medusa_runtime.heads import MedusaHeads
from treeopt.errors import TreeoptError
from treeopt.tree import Tree

CUDA_GRAPH_WARMUP_STEPS = 2  # eager runs on a side stream before capture (allocator, lazy init)


@dataclass
class GenerationResult:
    """New tokens and per-step statistics of one :func:`generate` call.

    ``accept_lengths[i]`` = tokens emitted by forward pass ``i``; pass 0 is the
    prefill (always 1 token), so plain decoding has ``acceleration_rate == 1``.
    """

    tokens: list[int]
    accept_lengths: list[int] = field(default_factory=list)
    wall_time_s: float = 0.0  # prefill + decoding, CUDA graph capture excluded
    capture_s: float = 0.0  # one-time CUDA graph capture
    prefill_s: float = 0.0  # the prompt's forward pass, included in wall_time_s

    @property
    def steps(self) -> int:
        """Model forward passes, the prefill included."""
        return len(self.accept_lengths)

    @property
    def acceleration_rate(self) -> float:
        """New tokens per forward pass."""
        return len(self.tokens) / self.steps if self.steps else 0.0

    @property
    def tokens_per_second(self) -> float:
        """New tokens over wall time (prefill included)."""
        return len(self.tokens) / self.wall_time_s if self.wall_time_s > 0 else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        """Steady-state rate: tokens after the first over the time after the prefill."""
        seconds = self.wall_time_s - self.prefill_s
        return (len(self.tokens) - 1) / seconds if seconds > 0 else 0.0


def check_tree_fits(tree: Tree, heads: MedusaHeads | None, vocab_size: int) -> None:
    """Raise TreeoptError (one line) if ``heads`` cannot fill ``tree``."""
    if tree.depth == 0:
        return
    if heads is None:
        raise TreeoptError(
            f"a tree of depth {tree.depth} needs Medusa heads (only the root-only tree runs "
            "without them)"
        )
    if tree.depth > heads.num_heads:
        raise TreeoptError(
            f"tree depth {tree.depth} > {heads.num_heads} Medusa heads (one head per level)"
        )
    top_k = tree_buffers(tree).top_k
    if top_k > vocab_size:
        raise TreeoptError(
            f"tree uses rank {top_k - 1} but the heads' vocabulary has only {vocab_size} tokens"
        )


class TreeDecoder:
    """Static-shape decoding state for one sequence, one model, one tree.

    Holds the static KV cache (``max_cache_len`` slots), the device copies of the
    tree buffers and the step's static input/output tensors. ``step()`` runs one
    verification step (a CUDA graph replay when captured).
    """

    def __init__(
        self,
        model: nn.Module,
        heads: MedusaHeads | None,
        tree: Tree,
        max_cache_len: int,
        acceptance: Acceptance = "greedy",
        batch_size: int = 1,
    ) -> None:
        from transformers import StaticCache
        from transformers.cache_utils import StaticLayer

        self.model = model
        self.decoder = model.get_decoder()
        self.lm_head = model.get_output_embeddings()
        self.vocab_size = int(self.lm_head.weight.shape[0])
        check_tree_fits(tree, heads, self.vocab_size)
        if acceptance != "greedy" and not isinstance(acceptance, TypicalAcceptance):
            raise TreeoptError(
                f"acceptance must be 'greedy' or TypicalAcceptance, not {acceptance!r}"
            )
        if batch_size != 1:
            raise TreeoptError("batch size > 1 is not supported yet (decode one sequence)")
        self.heads = heads
        self.tree = tree
        self.acceptance = acceptance
        self.max_cache_len = max_cache_len
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.cache = StaticCache(config=model.config, max_cache_len=max_cache_len)
        if any(type(layer) is not StaticLayer for layer in self.cache.layers):
            raise TreeoptError(
                "models with sliding-window or hybrid attention layers are not supported"
            )

        self.buffers = tree_buffers(tree).to(self.device)
        q = self.buffers.num_tokens
        # Static step inputs/outputs (updated in place so a captured graph sees them).
        self.prefix_length = torch.zeros((), dtype=torch.long, device=self.device)
        self.tree_tokens = torch.zeros((1, q), dtype=torch.long, device=self.device)
        self.emitted = torch.zeros(tree.depth + 1, dtype=torch.long, device=self.device)
        self.accept_length = torch.ones((), dtype=torch.long, device=self.device)
        self.slots = torch.arange(max_cache_len, device=self.device)
        self.graph: torch.cuda.CUDAGraph | None = None

    @property
    def num_tokens(self) -> int:
        return self.buffers.num_tokens

    # ------------------------------------------------------------ forward
    def _forward(
        self, tokens: torch.Tensor, block_mask: torch.Tensor, offsets: torch.Tensor
    ) -> torch.Tensor:
        """Last hidden state ``[1, T, H]`` of ``tokens`` written at slots ``L .. L+T-1``.

        ``block_mask[i, j]``: token i sees token j of this block; every token sees
        the whole prefix (slots ``< L``) and nothing past the block.
        """
        length = tokens.shape[1]
        for layer in self.cache.layers:  # StaticLayer writes at cumulative_length + arange(T)
            layer.cumulative_length.copy_(self.prefix_length)
        relative = self.slots - self.prefix_length
        in_block = (relative >= 0) & (relative < length)
        sees_block = block_mask[:, relative.clamp(0, length - 1)] & in_block
        visible = sees_block | (self.slots < self.prefix_length)
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=self.device)
        mask = mask.masked_fill(~visible, torch.finfo(self.dtype).min)[None, None]
        outputs = self.decoder(
            input_ids=tokens,
            attention_mask=mask,
            position_ids=(self.prefix_length + offsets)[None],
            past_key_values=self.cache,
            use_cache=True,
        )
        return outputs.last_hidden_state

    def _next_tree_tokens(self, root: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Tokens of the next tree: ``root`` then each head's top-k at ``hidden [H]``."""
        root = root.view(1)
        if self.tree.depth == 0:
            return root
        head_logits = self.heads(hidden, num_heads=self.tree.depth)  # [D, V]
        top = head_logits.topk(self.buffers.top_k, dim=-1).indices
        flat = torch.cat([root, top.reshape(-1)])
        return flat[self.buffers.candidate_indices]

    def prefill(self, input_ids: torch.Tensor) -> None:
        """Run the prompt ``[1, P]`` into an empty cache and lay out the first tree.

        Emits the first new token (the first root) into ``emitted[0]``.
        """
        length = input_ids.shape[1]
        if length + self.num_tokens > self.max_cache_len:
            raise TreeoptError(f"prompt of {length} tokens does not fit the cache")
        self.prefix_length.zero_()
        causal = torch.ones(length, length, dtype=torch.bool, device=self.device).tril()
        offsets = torch.arange(length, device=self.device)
        hidden = self._forward(input_ids, causal, offsets)[0, -1]
        root = self.lm_head(hidden).argmax(dim=-1)
        self.tree_tokens.copy_(self._next_tree_tokens(root, hidden)[None])
        self.prefix_length.fill_(length)
        self.emitted.zero_()
        self.emitted[0] = root
        self.accept_length.fill_(1)

    def _step(self) -> None:
        """One verification step (fixed shapes, no host sync; see the module doc)."""
        buffers = self.buffers
        tokens = self.tree_tokens[0]
        hidden = self._forward(self.tree_tokens, buffers.attention_mask, buffers.position_offsets)
        hidden = hidden[0]
        logits = self.lm_head(hidden)
        best_row, accept_length = accept(
            self.acceptance, tokens, logits, buffers.retrieve_indices
        )
        # index_select, not t[scalar_tensor]: indexing with a 0-dim tensor syncs the host,
        # which a CUDA graph capture refuses.
        path = buffers.retrieve_indices.index_select(0, best_row.view(1))[0].clamp(min=0)
        last_position = (accept_length - 1).view(1)
        last_node = path.index_select(0, last_position)  # [1]
        root = logits.index_select(0, last_node).argmax(dim=-1)  # [1]

        # Compaction: accepted nodes' K/V to slots L .. L+D (slots past L+n-1 get
        # leftovers that the next step overwrites before anyone sees them).
        sources = self.prefix_length + path
        targets = self.prefix_length + self.slots[: path.numel()]
        for layer in self.cache.layers:
            layer.keys.index_copy_(2, targets, layer.keys.index_select(2, sources))
            layer.values.index_copy_(2, targets, layer.values.index_select(2, sources))

        emitted = torch.cat([tokens[path[1:]], root])
        emitted = emitted.index_copy(0, last_position, root)  # accepted candidates, next root
        self.emitted.copy_(emitted)
        self.accept_length.copy_(accept_length)
        last_hidden = hidden.index_select(0, last_node)[0]
        self.tree_tokens.copy_(self._next_tree_tokens(root, last_hidden)[None])
        self.prefix_length.add_(accept_length)

    def capture(self) -> None:
        """Capture ``_step`` as a CUDA graph (after :meth:`prefill`; state is restored)."""
        saved_prefix, saved_tokens = self.prefix_length.clone(), self.tree_tokens.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(CUDA_GRAPH_WARMUP_STEPS):
                self._step()
                self.prefix_length.copy_(saved_prefix)
                self.tree_tokens.copy_(saved_tokens)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step()
        self.graph = graph
        # Capture records without running; state is still the pre-step state.
        self.prefix_length.copy_(saved_prefix)
        self.tree_tokens.copy_(saved_tokens)

    def step(self) -> None:
        """One verification step; the caller checks ``L + q <= max_cache_len`` first."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self._step()


def _as_prompt(input_ids: torch.Tensor | Sequence[int], device: torch.device) -> torch.Tensor:
    prompt = torch.as_tensor(input_ids, dtype=torch.long)
    if prompt.dim() == 2:
        if prompt.shape[0] != 1:
            raise TreeoptError(
                f"batch size {prompt.shape[0]} > 1 is not supported yet (pass one sequence)"
            )
        prompt = prompt[0]
    if prompt.dim() != 1 or prompt.numel() == 0:
        raise TreeoptError("input_ids must be a non-empty sequence of token ids")
    return prompt[None].to(device)


@torch.inference_mode()
def generate(
    model: nn.Module,
    heads: MedusaHeads | None,
    tree: Tree,
    input_ids: torch.Tensor | Sequence[int],
    max_new_tokens: int,
    acceptance: Acceptance = "greedy",
    eos_token_id: int | Sequence[int] | None = None,
    cuda_graph: bool | None = None,
) -> GenerationResult:
    """Decode up to ``max_new_tokens`` new tokens with Medusa tree verification.

    Guarantee: with ``acceptance="greedy"`` the tokens equal plain greedy decoding
    (``model.generate(do_sample=False)``) token for token, stopping after the first
    ``eos_token_id`` or at ``max_new_tokens``, whatever the tree (up to float
    rounding of near-tied logits). ``cuda_graph`` defaults to True on CUDA.
    Raises TreeoptError before decoding if the tree does not fit the heads.
    """
    if max_new_tokens < 1:
        raise TreeoptError(f"max_new_tokens must be >= 1, not {max_new_tokens}")
    device = next(model.parameters()).device
    prompt = _as_prompt(input_ids, device)
    eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
    q = tree.num_tokens
    decoder = TreeDecoder(
        model, heads, tree, prompt.shape[1] + max_new_tokens + q, acceptance=acceptance
    )
    synchronize = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    synchronize()
    start = time.perf_counter()
    decoder.prefill(prompt)
    tokens = [int(decoder.emitted[0])]  # host sync: the prefill is done
    prefill_s = time.perf_counter() - start
    capture_s = 0.0
    if cuda_graph if cuda_graph is not None else device.type == "cuda":
        capture_start = time.perf_counter()
        decoder.capture()  # one-time cost per tree size: kept out of the decode time
        synchronize()
        capture_s = time.perf_counter() - capture_start
    accept_lengths = [1]
    while tokens[-1] not in eos and len(tokens) < max_new_tokens:
        decoder.step()
        # The one host sync a step: the count and the emitted tokens together.
        count, *emitted = torch.cat([decoder.accept_length.view(1), decoder.emitted]).tolist()
        accept_lengths.append(count)
        for token in emitted[:count]:
            tokens.append(token)
            if token in eos or len(tokens) == max_new_tokens:
                break
    synchronize()
    wall_time_s = time.perf_counter() - start - capture_s
    return GenerationResult(tokens, accept_lengths, wall_time_s, capture_s, prefill_s)
