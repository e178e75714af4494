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
   root), and let the drafter lay out the next tree (Medusa heads at the last
   accepted node, or a draft model's passes: ``medusa_runtime.drafter``).

The host reads back only the emitted tokens and their count (one sync a step).
The root-only tree (``Tree.empty``) is plain autoregressive decoding through the
same machinery, for fair comparisons.

Sliding-window layers (Mistral, Gemma2/3, Qwen2 ...) keep every slot in the same
static cache; the window is one more term of the mask: a query at position ``p``
sees a cached key at position ``k`` only if ``p - k < window`` (HF's rule), with
each slot's position kept in ``key_positions``. Mixed full/window models get one
mask per layer type. Which models are verified exactly: ``architectures``.
"""

from __future__ import annotations

import numbers
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from medusa_runtime.acceptance import Acceptance, TypicalAcceptance, accept, select_rows
from medusa_runtime.architectures import (
    LogitTransform,
    attention_windows,
    cache_argument,
    check_positions,
    check_supported,
    decoder_call,
    text_config,
)
from medusa_runtime.drafter import Drafter, MedusaHeadsDrafter
from medusa_runtime.heads import MedusaHeads
from medusa_runtime.padding import pad_rows
from medusa_runtime.static_forward import (
    CACHE_SLOT_ALIGNMENT,
    StaticCache,
    StaticForward,
    hf_decoder_call,
    prompt_block,
)
from treeopt.core.tree import Tree
from treeopt.errors import TreeoptError, first_line

CUDA_GRAPH_WARMUP_STEPS = 2  # eager runs on a side stream before capture (allocator, lazy init)
# torch.compile makes one compilation of ``_step`` per decoder shape (tree, batch,
# cache length); dynamo's default of 8 per function would end a tuning sweep.
COMPILED_SHAPES_LIMIT = 1024
# A compiled step is specialised to its cache length; generate rounds the length up to
# a multiple of this so prompts of different lengths reuse one compilation.
COMPILED_CACHE_BUCKET = 256
__all__ = ["CACHE_SLOT_ALIGNMENT", "BatchGenerationResult", "GenerationResult", "TreeDecoder",
           "TreePolicy", "continuation_text", "generate", "generate_batch"]


def compiled(step: Callable[[], None]) -> Callable[[], None]:
    """``step`` through ``torch.compile(fullgraph=True)``, with dynamo's recompile limit
    raised to :data:`COMPILED_SHAPES_LIMIT` (process-wide; named cache_size_limit
    before torch 2.7)."""
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), COMPILED_SHAPES_LIMIT))
    return torch.compile(step, fullgraph=True, dynamic=False)


@dataclass
class GenerationResult:
    """New tokens and per-step statistics of one :func:`generate` call.

    ``accept_lengths[i]`` = tokens emitted by forward pass ``i``; pass 0 is the
    prefill (always 1 token), so plain decoding has ``acceleration_rate == 1``.
    """

    tokens: list[int]
    accept_lengths: list[int] = field(default_factory=list)
    wall_time_s: float = 0.0  # prefill + decoding, one-time setup excluded
    setup_s: float = 0.0  # one-time step compilation and CUDA graph capture
    prefill_s: float = 0.0  # the prompt's forward pass, included in wall_time_s
    cuda_graph: bool = False  # whether the step ran as a captured CUDA graph
    compiled: bool = False  # whether the step ran through torch.compile
    text: str | None = None  # the tokens decoded (special tokens skipped) when given a tokenizer

    @property
    def steps(self) -> int:
        """Model forward passes, the prefill included."""
        return len(self.accept_lengths)

    @property
    def acceleration_rate(self) -> float:
        """New tokens per forward pass."""
        return len(self.tokens) / self.steps if self.steps else 0.0

    @property
    def verification_steps(self) -> int:
        """Forward passes after the prefill: the tree verification steps."""
        return max(self.steps - 1, 0)

    @property
    def tokens_per_verification_step(self) -> float:
        """Tokens after the prefill's one per verification step.

        What ``treeopt build`` predicts as tokens per step (a last step cut by EOS or
        ``max_new_tokens`` counts only the tokens kept).
        """
        steps = self.verification_steps
        return (len(self.tokens) - 1) / steps if steps else 0.0

    @property
    def tokens_per_second(self) -> float:
        """New tokens over wall time (prefill included)."""
        return len(self.tokens) / self.wall_time_s if self.wall_time_s > 0 else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        """Steady-state rate: tokens after the first over the time after the prefill."""
        seconds = self.wall_time_s - self.prefill_s
        return (len(self.tokens) - 1) / seconds if seconds > 0 else 0.0


class TreeDecoder:
    """Static-shape decoding state for ``batch_size`` sequences, one model, one tree.

    Holds the target's static KV cache (``static_forward.StaticCache``:
    ``max_cache_len`` slots, rounded up to a multiple of :data:`CACHE_SLOT_ALIGNMENT`),
    the drafter's session (which owns the tree's tokens and layout) and the step's
    static outputs. ``step()`` runs one verification step (a CUDA graph replay when
    captured).

    Batching: HF's ``StaticLayer`` writes a block at one ``cumulative_length``
    shared by all rows, but rows accept paths of different lengths. So the rows
    share one write pointer ``write_length`` (``L``), advanced by the longest
    accepted path; a row that accepted fewer tokens leaves *holes* (slots marked
    invalid in ``valid [B, max_cache_len]`` and masked out forever), and its
    position ids come from its own true length ``row_lengths [B]``. Prompts are
    left-padded with holes. With ``B = 1`` there are never holes and this is plain
    contiguous decoding.

    ``tree``: a static :class:`Tree`, a per-step Medusa policy
    (``medusa_runtime.dynamic.DynamicTree``) or a ``medusa_runtime.beam.BeamTree``
    (``dynamic:S,K,N``, for drafters with their own probabilities). ``drafter``:
    what fills the tree (default: ``heads`` as a :class:`MedusaHeadsDrafter`).

    ``compile_step``: run the step through ``torch.compile(fullgraph=True)``, which
    fuses its many small kernels (norms, rotary, mask, acceptance, compaction);
    on CUDA the compiled step is then captured as usual. Compilation happens on
    the first step (tens of seconds for a 7B model) and once per decoder shape
    (tree, batch, cache length, acceptance rule and its thresholds).
    """

    def __init__(
        self,
        model: nn.Module,
        heads: MedusaHeads | None,
        tree: Any,
        max_cache_len: int,
        acceptance: Acceptance = "greedy",
        batch_size: int = 1,
        compile_step: bool = False,
        drafter: Drafter | None = None,
    ) -> None:
        check_supported(model)
        if drafter is not None and heads is not None:
            raise TreeoptError("give Medusa heads or a drafter, not both")
        if acceptance != "greedy" and not isinstance(acceptance, TypicalAcceptance):
            raise TreeoptError(
                f"acceptance must be 'greedy' or TypicalAcceptance, not {acceptance!r}"
            )
        if batch_size < 1:
            raise TreeoptError(f"batch_size must be >= 1, not {batch_size}")
        self.model = model
        self.lm_head = model.get_output_embeddings()
        self.logit_transform = LogitTransform.of(model)
        self.vocab_size = int(self.lm_head.weight.shape[0])
        self.drafter = drafter if drafter is not None else MedusaHeadsDrafter(heads)
        self.drafter.check_tree(tree, self.vocab_size)
        self.heads, self.tree, self.acceptance = heads, tree, acceptance
        self.batch_size, self.compile_step = batch_size, compile_step
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.static = StaticCache(text_config(model).num_hidden_layers, max_cache_len,
                                  batch_size, self.device)
        self.max_cache_len = self.static.num_slots
        self.forward = self._target_forward(model)
        self.draft = self.drafter.session(tree, batch_size, self.max_cache_len, self.device)
        self.emitted = torch.zeros(batch_size, self.draft.depth + 1, dtype=torch.long,
                                   device=self.device)
        self.accept_length = torch.ones(batch_size, dtype=torch.long, device=self.device)
        self.run_step: Callable[[], None] = self._step
        if compile_step:
            self.run_step = compiled(self._step)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.capture_error: str | None = None  # why the last capture_or_eager stayed eager

    def _target_forward(self, model: nn.Module) -> StaticForward:
        """The target's forward: its decoder over the static cache, through one function
        taking ``position_ids`` and the 4D additive masks (``StaticForward.__call__``)."""
        layers = self.drafter.feature_layers
        # Runs the decoder at token positions (ALiBi and GPT-Neo also read key_positions).
        call = hf_decoder_call(decoder_call(model, self.batch_size, self.compile_step),
                               cache_argument(model.get_decoder()), tuple(layers or ()))
        return StaticForward(self.static, call, self.dtype, attention_windows(text_config(model)))

    # The cache bookkeeping under the names the decoder has always had.
    @property
    def cache(self) -> Any:
        return self.static.cache

    @property
    def write_length(self) -> torch.Tensor:
        return self.static.write_length

    @property
    def row_lengths(self) -> torch.Tensor:
        return self.static.row_lengths

    @property
    def valid(self) -> torch.Tensor:
        return self.static.valid

    @property
    def tree_tokens(self) -> torch.Tensor:
        return self.draft.tokens

    @property
    def num_tokens(self) -> int:
        return self.draft.num_tokens

    # ------------------------------------------------------------ state
    def snapshot(self) -> list[torch.Tensor]:
        """Copies of the state a step reads (the cache past ``L`` is scratch)."""
        return [t.clone() for t in self._state()]

    def _state(self) -> tuple[torch.Tensor, ...]:
        """The tensors a step reads besides the caches (the draft's state included)."""
        return (*self.static.state(), *self.draft.state())

    def restore(self, snapshot: list[torch.Tensor]) -> None:
        """Put back a :meth:`snapshot` in place (the captured graph keeps its addresses)."""
        for target, saved in zip(self._state(), snapshot, strict=True):
            target.copy_(saved)

    def fill_context(self, context: int, std: float) -> None:
        """Make every row hold ``context`` contiguous cached tokens of random keys/values.

        For timing a step at a context length without decoding that far: no holes
        (the steady state the cost model assumes), values never zero (zeros can run
        faster than real data). Call after :meth:`prefill`.
        """
        if context + self.num_tokens > self.max_cache_len:
            raise TreeoptError(f"context {context} + {self.num_tokens} tree tokens exceed the "
                               f"cache of {self.max_cache_len}")
        check_positions(self.model, context + self.draft.depth)
        self.static.fill_random(context, std)
        self.draft.fill_context(context, std)

    # ------------------------------------------------------------ forward
    def _forward(
        self, tokens: torch.Tensor, block_mask: torch.Tensor, offsets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(last hidden [B, T, H], drafter features [B, T, F] or None)`` of ``tokens
        [B, T]`` written at slots ``L .. L+T-1``.

        ``block_mask [T, T]`` or ``[B, T, T]``: token i sees token j of this block;
        every token also sees its row's valid slots (all ``< L``) and nothing else.
        Position ids are ``row_lengths + offsets`` (``offsets [T]`` or ``[B, T]``).
        """
        static = self.static
        positions = static.row_lengths[:, None] + offsets  # [B, T]
        if positions.shape[1] != tokens.shape[1]:
            positions = positions.expand(-1, tokens.shape[1])
        visible = static.block_visible(block_mask, static.write_length)
        outputs = self.forward(tokens, positions, static.write_length, visible)
        if self.drafter.feature_layers is None:
            return outputs, None
        if not self.drafter.feature_layers:
            return outputs, outputs
        return outputs

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's own logits (its LM head, then its logit transform) at ``hidden``."""
        return self.logit_transform(self.lm_head(hidden))

    def _lay_out_next_tree(self, root: torch.Tensor, hidden: torch.Tensor) -> None:
        """Place the next step's tree below ``root [B]``: the drafter's guesses (Medusa
        heads' top-k at ``hidden [B, H]``, a draft model's or EAGLE's passes)."""
        self.draft.next_tree(root, hidden)

    def prefill(self, input_ids: torch.Tensor, pad_mask: torch.Tensor | None = None) -> None:
        """Run left-padded prompts ``[B, P]`` into an empty cache and lay out the first trees.

        ``pad_mask [B, P]`` (bool, True = real token) marks the left padding; every
        row must end with a real token. Emits each row's first new token (its
        first root) into ``emitted[:, 0]``.
        """
        batch, length = input_ids.shape
        if batch != self.batch_size:
            raise TreeoptError(f"{batch} prompts for a decoder of batch size {self.batch_size}")
        if length + self.num_tokens > self.max_cache_len:
            raise TreeoptError(f"prompt of {length} tokens does not fit the cache")
        if pad_mask is None:
            pad_mask = torch.ones_like(input_ids, dtype=torch.bool)
        pad_mask = pad_mask.to(device=self.device, dtype=torch.bool)
        self.static.reset()
        block, offsets = prompt_block(pad_mask)
        hidden, features = self._forward(input_ids, block, offsets)
        root = self._logits(hidden[:, -1]).argmax(dim=-1)
        self.draft.start(input_ids, pad_mask, root, features)
        self._lay_out_next_tree(root, hidden[:, -1])
        self.static.commit_prompt(pad_mask)
        self.emitted.zero_()
        self.emitted[:, 0] = root
        self.accept_length.fill_(1)

    def _step(self) -> None:
        """One verification step for every row (fixed shapes, no host sync; see the module doc)."""
        attention_mask, position_offsets, retrieve = self.draft.layout()
        tokens = self.draft.tokens  # read before the drafter lays out the next tree
        hidden, features = self._forward(tokens, attention_mask, position_offsets)
        logits = self._logits(hidden)  # [B, q, V]
        best_row, accept_length = accept(self.acceptance, tokens, logits, retrieve)  # [B], [B]
        # Per-row gathers with index tensors, never t[0-dim tensor] (a host sync that
        # CUDA graph capture refuses).
        paths = select_rows(retrieve, best_row).clamp(min=0)  # [B, D+1]
        last_position = (accept_length - 1)[:, None]  # [B, 1]
        last_node = paths.gather(1, last_position)[..., None]  # [B, 1, 1]
        last_hidden = hidden.gather(1, last_node.expand(-1, -1, hidden.shape[-1]))[:, 0]
        root = logits.gather(1, last_node.expand(-1, -1, logits.shape[-1]))[:, 0].argmax(-1)
        self._compact(paths, accept_length)
        emitted = torch.cat([tokens.gather(1, paths[:, 1:]), root[:, None]], dim=1)
        emitted = emitted.scatter(1, last_position, root[:, None])  # candidates, next root
        self.emitted.copy_(emitted)
        self.accept_length.copy_(accept_length)
        path_features = None
        if features is not None:
            path_features = features.gather(1, paths[..., None].expand(-1, -1,
                                                                       features.shape[-1]))
        self.draft.follow(tokens.gather(1, paths), accept_length, path_features)
        self._lay_out_next_tree(root, last_hidden)
        self.static.row_lengths.add_(accept_length)
        self.static.write_length.add_(accept_length.max())  # the longest row sets the shared L

    def _compact(self, paths: torch.Tensor, accept_length: torch.Tensor) -> None:
        """Row b's accepted nodes' K/V to slots L .. L+n_b-1. Slots past L+n_b-1 become
        holes (invalid) or lie past the new L (overwritten next step)."""
        static = self.static
        offsets = static.slots[: paths.shape[1]]  # 0 .. D
        sources = static.write_length + paths  # [B, D+1], per row
        targets = static.write_length + offsets  # [D+1], shared
        for layer in static.layers:
            for store in (layer.keys, layer.values):  # [B, heads, S, head_dim]
                index = sources[:, None, :, None].expand(-1, store.shape[1], -1, store.shape[3])
                store.index_copy_(2, targets, store.gather(2, index))
        static.valid.index_copy_(1, targets, offsets[None, :] < accept_length[:, None])
        static.key_positions.index_copy_(1, targets, static.row_lengths[:, None] + offsets)

    def capture(self) -> None:
        """Capture ``_step`` as a CUDA graph (after :meth:`prefill`; state is restored)."""
        saved = self.snapshot()
        self.graph = None
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(CUDA_GRAPH_WARMUP_STEPS):  # compiles a compiled step
                    self.run_step()
                    self.restore(saved)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.run_step()
            self.graph = graph
        finally:
            # Capture records without running, but a failed warm-up may have moved
            # the state: always put back the pre-step state.
            self.restore(saved)

    def capture_or_eager(self, required: bool) -> bool:
        """Capture the step if possible; return whether it was captured.

        ``required``: a failed capture is a TreeoptError. Otherwise it warns (one
        line, with the reason) and the decoder stays eager: slower, same tokens.
        """
        try:
            self.capture()
        except RuntimeError as exc:
            reason = first_line(exc)
            if required:
                raise TreeoptError(f"CUDA graph capture failed: {reason}") from None
            warnings.warn(f"CUDA graph capture failed ({reason}); running the step eagerly",
                          RuntimeWarning, stacklevel=2)
            self.capture_error = reason
            return False
        return True

    def warm_up(self) -> None:
        """Run one step and put the state back: compiles a compiled step ahead of timing.

        A failed compilation is a one-line TreeoptError.
        """
        from torch._dynamo import exc as dynamo_errors

        # The recompile-limit error is not a TorchDynamoException.
        failures = tuple(getattr(dynamo_errors, name) for name in
                         ("TorchDynamoException", "FailOnRecompileLimitHit",
                          "FailOnCacheLimitHit") if hasattr(dynamo_errors, name))
        saved = self.snapshot()
        try:
            self.run_step()
        except failures as exc:
            reason = first_line(exc)
            raise TreeoptError(f"torch.compile of the verification step failed: {reason}") \
                from None
        finally:
            self.restore(saved)

    def step(self) -> None:
        """One verification step; the caller checks ``L + q <= max_cache_len`` first."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self.run_step()


Prompts = torch.Tensor | str | Sequence[int] | Sequence[Sequence[int]] | Sequence[str]


def _texts(input_ids: Prompts) -> list[str] | None:
    """The prompts as a list of texts, or None when they are token ids."""
    if isinstance(input_ids, str):
        return [input_ids]
    if isinstance(input_ids, Sequence) and input_ids and all(
        isinstance(row, str) for row in input_ids
    ):
        return list(input_ids)  # type: ignore[arg-type]
    return None


def _is_token_id(value: object) -> bool:
    """An integer (Python, NumPy or a 0-d integer tensor), not a bool."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not value.is_floating_point() and value.dtype != torch.bool
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class TreePolicy(Protocol):
    """A tree chosen per step (``medusa_runtime.dynamic.DynamicTree``, Medusa ``dynamic:N``;
    ``medusa_runtime.beam.BeamTree``, ``dynamic:S,K,N``): its size and depth; the
    drafter's session builds it every step."""

    @property
    def num_tokens(self) -> int: ...

    @property
    def depth(self) -> int: ...


def _as_prompts(
    input_ids: Prompts,
    attention_mask: torch.Tensor | Sequence[Sequence[int]] | None,
    tokenizer: Any = None,
) -> tuple[list[list[int]], bool]:
    """The real tokens of each prompt, and whether the input was a single sequence.

    A 1-D input (or a 2-D one with one row, or one text) is one sequence;
    ``attention_mask`` (1 = token, 0 = padding, either side) picks the real tokens
    of a 2-D input. Texts are encoded by ``tokenizer`` (special tokens included, as
    ``tokenizer(text)`` does). Bad input is a one-line TreeoptError.
    """
    texts = _texts(input_ids)
    if texts is not None:
        if tokenizer is None:
            raise TreeoptError("text prompts need tokenizer= (e.g. AutoTokenizer.from_pretrained"
                               "(model_path)); or pass token ids")
        if attention_mask is not None:
            raise TreeoptError("attention_mask goes with token ids, not with text prompts")
        rows = [list(tokenizer(text)["input_ids"]) for text in texts]
        single = isinstance(input_ids, str) or len(rows) == 1
    elif isinstance(input_ids, torch.Tensor):
        if input_ids.dim() not in (1, 2) or input_ids.is_floating_point():
            raise TreeoptError("input_ids must be a 1-D or 2-D tensor of token ids")
        rows = input_ids.tolist() if input_ids.dim() == 2 else [input_ids.tolist()]
        single = input_ids.dim() == 1 or input_ids.shape[0] == 1
    elif len(input_ids) > 0 and all(isinstance(row, Sequence | torch.Tensor) for row in input_ids):
        rows = [list(row) for row in input_ids]  # type: ignore[arg-type]
        single = len(rows) == 1
    else:
        rows, single = [list(input_ids)], True  # type: ignore[arg-type]
    if not all(_is_token_id(token) for row in rows for token in row):
        raise TreeoptError("input_ids must be token ids (ints), one list per prompt, or texts "
                           "with tokenizer=")
    rows = [[int(token) for token in row] for row in rows]
    if attention_mask is not None:
        masks = torch.as_tensor(attention_mask)
        if masks.numel() != sum(map(len, rows)) or len({len(row) for row in rows}) > 1:
            raise TreeoptError("attention_mask must have the shape of input_ids")
        rows = [
            [token for token, real in zip(row, mask, strict=True) if real]
            for row, mask in zip(rows, masks.reshape(len(rows), -1).tolist(), strict=True)
        ]
    if not rows or any(not row for row in rows):
        raise TreeoptError("input_ids must be non-empty sequences of token ids")
    return rows, single


def continuation_text(tokenizer: Any, prompt_ids: Sequence[int], tokens: Sequence[int]) -> str:
    """The text ``tokens`` add after ``prompt_ids``, spaces included.

    Decoding the new tokens alone drops a SentencePiece word's leading space
    ("Once" + "upon"); decoding prompt + new tokens and cutting the prompt's own text
    keeps it (special tokens skipped in both).
    """
    prompt_text = tokenizer.decode(list(prompt_ids), skip_special_tokens=True)
    full_text = tokenizer.decode([*prompt_ids, *tokens], skip_special_tokens=True)
    if full_text.startswith(prompt_text):
        return full_text[len(prompt_text):]
    return tokenizer.decode(list(tokens), skip_special_tokens=True)  # prompt text re-spelled


def _decoded(tokenizer: Any, prompt: list[int], tokens: list[int]) -> str | None:
    return continuation_text(tokenizer, prompt, tokens) if tokenizer is not None else None


@dataclass
class BatchGenerationResult:
    """Per-sequence results of one batched :func:`generate` call, in input order.

    ``sequences[b].accept_lengths`` covers only the passes row ``b`` was still
    decoding; ``steps`` counts every batched forward pass (prefill included). The
    timings are the whole batch's and are shared by every sequence's result.
    """

    sequences: list[GenerationResult]
    steps: int = 0
    wall_time_s: float = 0.0
    setup_s: float = 0.0
    prefill_s: float = 0.0
    cuda_graph: bool = False
    compiled: bool = False

    @property
    def tokens(self) -> list[list[int]]:
        return [sequence.tokens for sequence in self.sequences]

    @property
    def tokens_per_second(self) -> float:
        """New tokens of all sequences over wall time (prefill included)."""
        total = sum(len(sequence.tokens) for sequence in self.sequences)
        return total / self.wall_time_s if self.wall_time_s > 0 else 0.0


def _decoder_for(model: nn.Module, heads: MedusaHeads | None, tree: Any, rows: list[list[int]],
                 max_new_tokens: int, acceptance: Acceptance, compile_step: bool,
                 drafter: Drafter | None) -> TreeDecoder:
    """The decoder for ``rows``, its cache sized for ``max_new_tokens`` (checked prompts)."""
    # The shared write pointer advances by the longest accepted path of any row, up
    # to D + 1 a step, so a batch may use that much cache per new token; one
    # sequence never leaves holes and needs exactly one slot per token.
    growth = 1 if len(rows) == 1 else tree.depth + 1
    cache_length = max(map(len, rows)) + tree.num_tokens + growth * max_new_tokens
    if compile_step:
        cache_length = -(-cache_length // COMPILED_CACHE_BUCKET) * COMPILED_CACHE_BUCKET
    decoder = TreeDecoder(model, heads, tree, cache_length, acceptance=acceptance,
                          batch_size=len(rows), compile_step=compile_step, drafter=drafter)
    if any(not 0 <= token < decoder.vocab_size for row in rows for token in row):
        raise TreeoptError(f"input_ids must be token ids in [0, {decoder.vocab_size})")
    # The last step verifies its root at position (prompt + emitted - 1), emitted <
    # max_new_tokens, and its deepest node D positions further.
    check_positions(model, max(map(len, rows)) + max_new_tokens - 2 + tree.depth)
    return decoder


def _set_up(decoder: TreeDecoder, compile_step: bool, cuda_graph: bool | None) -> tuple[bool, bool]:
    """One-time setup, kept out of the decode time: compilation, then capture (asked
    for explicitly, a failure is an error; by default it falls back to eager).
    Returns ``(captured, compiled)``."""
    captured = False
    if compile_step:
        decoder.warm_up()
    if cuda_graph if cuda_graph is not None else decoder.device.type == "cuda":
        captured = decoder.capture_or_eager(required=bool(cuda_graph))
    return captured, compile_step


def _decode_steps(decoder: TreeDecoder, tokens: list[list[int]], accept_lengths: list[list[int]],
                  eos: set[int], max_new_tokens: int) -> int:
    """Step until every row stops (EOS or ``max_new_tokens``); returns the steps run."""
    active = [row[-1] not in eos and len(row) < max_new_tokens for row in tokens]
    steps = 0
    while any(active):
        decoder.step()
        steps += 1
        # The one host sync a step: every row's count and emitted tokens together.
        readback = torch.cat([decoder.accept_length[:, None], decoder.emitted], dim=1).tolist()
        for row, (count, *emitted) in enumerate(readback):
            if not active[row]:
                continue  # finished rows ride along until the batch ends; ignore them
            accept_lengths[row].append(count)
            for token in emitted[:count]:
                tokens[row].append(token)
                if token in eos or len(tokens[row]) == max_new_tokens:
                    active[row] = False
                    break
    return steps


@torch.inference_mode()
def generate_batch(
    model: nn.Module,
    heads: MedusaHeads | None,
    tree: Tree | TreePolicy,
    input_ids: Prompts,
    max_new_tokens: int,
    acceptance: Acceptance = "greedy",
    eos_token_id: int | Sequence[int] | None = None,
    cuda_graph: bool | None = None,
    attention_mask: torch.Tensor | Sequence[Sequence[int]] | None = None,
    compile_step: bool = False,
    tokenizer: Any = None,
    drafter: Drafter | None = None,
) -> BatchGenerationResult:
    """Batched :func:`generate`: always a :class:`BatchGenerationResult`, one row per prompt.

    ``input_ids``: a list of token lists (any lengths), a 2-D tensor with an
    optional ``attention_mask`` marking padding, or texts with ``tokenizer`` (a
    transformers tokenizer; each result then also has ``text``). Each row stops on its own at its
    first ``eos_token_id`` or at ``max_new_tokens``; the batch runs until all stop.
    """
    if max_new_tokens < 1:
        raise TreeoptError(f"max_new_tokens must be >= 1, not {max_new_tokens}")
    device = next(model.parameters()).device
    if cuda_graph and device.type != "cuda":
        raise TreeoptError(f"cuda_graph=True needs a model on a CUDA device, not {device}")
    rows, _ = _as_prompts(input_ids, attention_mask, tokenizer)
    # Pad id 0 is never seen: pad slots stay holes in the cache.
    prompt, pad_mask = (t.to(device) for t in pad_rows(rows, 0, left=True))
    eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
    decoder = _decoder_for(model, heads, tree, rows, max_new_tokens, acceptance, compile_step,
                           drafter)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    synchronize()
    start = time.perf_counter()
    decoder.prefill(prompt, pad_mask)
    tokens = [[token] for token in decoder.emitted[:, 0].tolist()]  # host sync: prefill done
    prefill_s = time.perf_counter() - start
    accept_lengths = [[1] for _ in rows]
    setup_start = time.perf_counter()
    captured = compiled_step = False
    if any(row[-1] not in eos and len(row) < max_new_tokens for row in tokens):
        captured, compiled_step = _set_up(decoder, compile_step, cuda_graph)
    synchronize()
    setup_s = time.perf_counter() - setup_start
    steps = 1 + _decode_steps(decoder, tokens, accept_lengths, eos, max_new_tokens)
    synchronize()
    wall_time_s = time.perf_counter() - start - setup_s
    sequences = [
        GenerationResult(row_tokens, row_accepts, wall_time_s, setup_s, prefill_s, captured,
                         compiled_step, _decoded(tokenizer, prompt_row, row_tokens))
        for prompt_row, row_tokens, row_accepts in zip(rows, tokens, accept_lengths, strict=True)
    ]
    return BatchGenerationResult(sequences, steps, wall_time_s, setup_s, prefill_s, captured,
                                 compiled_step)


def generate(
    model: nn.Module,
    heads: MedusaHeads | None,
    tree: Tree | TreePolicy,
    input_ids: Prompts,
    max_new_tokens: int,
    acceptance: Acceptance = "greedy",
    eos_token_id: int | Sequence[int] | None = None,
    cuda_graph: bool | None = None,
    attention_mask: torch.Tensor | Sequence[Sequence[int]] | None = None,
    compile_step: bool = False,
    tokenizer: Any = None,
    drafter: Drafter | None = None,
) -> GenerationResult | BatchGenerationResult:
    """Decode up to ``max_new_tokens`` new tokens with Medusa tree verification.

    Guarantee: with ``acceptance="greedy"`` the tokens equal plain greedy decoding
    (``model.generate(do_sample=False)``) token for token, stopping after the first
    ``eos_token_id`` or at ``max_new_tokens``, whatever the tree (up to float
    rounding of near-tied logits). ``cuda_graph``: None (default) captures the step
    on CUDA and falls back to eager with a warning if capture fails; True requires
    the capture; False never captures. ``compile_step`` runs the step through
    ``torch.compile`` (see :class:`TreeDecoder`); same tokens, fewer kernels.
    ``result.cuda_graph`` and ``result.compiled`` say what ran; one-time
    compilation and capture are in ``result.setup_s``, not in the wall time.
    Raises TreeoptError before decoding if the tree does not fit the heads.
    ``tree`` may also be a per-step policy (:class:`medusa_runtime.dynamic.DynamicTree`):
    the same guarantee holds, the tree being chosen anew every step. ``drafter``
    (instead of ``heads``) fills the trees some other way, e.g. a
    :class:`~medusa_runtime.drafter.DraftModelDrafter` (same guarantee).

    ``input_ids`` may be text (one string or a list) with ``tokenizer``; each result
    then has ``text``, its new tokens decoded. Raises TreeoptError before decoding
    for a model outside ``architectures.SUPPORTED_MODEL_TYPES`` or positions past
    its limit.

    One sequence (1-D, 2-D with one row, or one text) gives a :class:`GenerationResult`;
    several (a list of token lists or texts, or a 2-D tensor with ``attention_mask``) give a
    :class:`BatchGenerationResult` (see :func:`generate_batch`), each row decoded
    as if alone.
    """
    _, single = _as_prompts(input_ids, attention_mask, tokenizer)
    result = generate_batch(
        model, heads, tree, input_ids, max_new_tokens, acceptance=acceptance,
        eos_token_id=eos_token_id, cuda_graph=cuda_graph, attention_mask=attention_mask,
        compile_step=compile_step, tokenizer=tokenizer, drafter=drafter,
    )
    return result.sequences[0] if single else result
