"""One static-cache forward, shared by the target model and every drafter with a cache.

gpt-fast style: the KV cache is allocated once (``slots`` per row, a multiple of
:data:`CACHE_SLOT_ALIGNMENT`), every forward writes a block of ``T`` tokens at one
shared write pointer and attends through an explicit additive mask, so every step
is fixed-shape and runs inside a captured CUDA graph or a ``torch.compile`` graph.

Slot bookkeeping (:class:`StaticCache`): ``write_length`` (``W``, shared by the
rows: HF's ``StaticLayer`` writes a block at one ``cumulative_length``),
``row_lengths [B]`` (each row's committed tokens: its next position id),
``valid [B, S]`` (slots holding a committed token of the row; the rest are holes or
scratch) and ``key_positions [B, S]`` (the position id of each slot's token, read by
sliding-window masks). Rows that accept paths of different lengths leave holes;
prompts are left-padded with holes.

:meth:`StaticForward.__call__` is the one function every forward goes through: it
turns "which slots each token sees" into the per-layer-type 4D additive masks
(windows are one more mask term: a query at position ``p`` sees a key at ``k`` only
if ``p - k < window``, HF's rule) and calls the model with ``position_ids`` and
those masks. What the model is (an HF decoder, an EAGLE layer) is the ``call``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

# Cache slots are allocated in multiples of this, so each row of the additive mask
# starts 16-byte aligned: SDPA's fused kernels otherwise pad (copy) the mask per layer.
CACHE_SLOT_ALIGNMENT = 64

# (tokens [B, T], masks: one [B, 1, T, S] or {layer type: mask}, position_ids [B, T],
#  the StaticCache (its HF cache and key_positions)) -> the model's outputs.
ModelCall = Callable[[torch.Tensor, Any, torch.Tensor, Any], Any]


def aligned_slots(slots: int) -> int:
    """``slots`` rounded up to a multiple of :data:`CACHE_SLOT_ALIGNMENT`."""
    return -(-slots // CACHE_SLOT_ALIGNMENT) * CACHE_SLOT_ALIGNMENT


def prompt_block(pad_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(block [B, P, P], offsets [B, P])`` of left-padded prompts (``pad_mask``: real).

    Causal among real tokens; a pad query also sees itself (with nothing visible its
    softmax row would be all-masked; its output is never used and its slot stays a
    hole). ``offsets``: each real token's true position.
    """
    length = pad_mask.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=pad_mask.device).tril()
    itself = torch.eye(length, dtype=torch.bool, device=pad_mask.device)
    block = causal & (pad_mask[:, None, :] | itself)
    offsets = (pad_mask.cumsum(dim=-1) - 1).clamp(min=0)
    return block, offsets


class StaticCache:
    """A static KV cache of ``num_layers`` layers and its slot bookkeeping (module doc)."""

    def __init__(self, num_layers: int, slots: int, batch_size: int,
                 device: torch.device) -> None:
        from transformers.cache_utils import Cache, StaticLayer

        slots = aligned_slots(slots)
        self.num_slots = slots
        self.device = device
        # Every layer, windowed or not, keeps all slots: the window lives in the mask.
        self.cache = Cache(layers=[StaticLayer(slots) for _ in range(num_layers)])
        self.write_length = torch.zeros((), dtype=torch.long, device=device)
        self.row_lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.valid = torch.zeros(batch_size, slots, dtype=torch.bool, device=device)
        self.key_positions = torch.zeros(batch_size, slots, dtype=torch.long, device=device)
        self.slots = torch.arange(slots, device=device)

    @property
    def layers(self) -> list[Any]:
        return self.cache.layers

    def state(self) -> list[torch.Tensor]:
        """The bookkeeping a step reads and changes (the cache past ``W`` is scratch)."""
        return [self.write_length, self.row_lengths, self.valid, self.key_positions]

    def reset(self) -> None:
        """Empty: no committed token in any row."""
        self.write_length.zero_()
        self.row_lengths.zero_()
        self.valid.zero_()

    def commit_prompt(self, pad_mask: torch.Tensor) -> None:
        """After a prompt block at slot 0: its real tokens are committed."""
        length = pad_mask.shape[1]
        self.valid[:, :length] = pad_mask
        self.write_length.fill_(length)
        self.row_lengths.copy_(pad_mask.sum(dim=-1))

    def fill_random(self, context: int, std: float) -> None:
        """Every row holds ``context`` contiguous tokens of random keys/values.

        For timing at a context length without decoding that far: no holes, values
        never zero (zeros can run faster than real data). Call after a prefill (the
        layers allocate on their first write).
        """
        for layer in self.cache.layers:
            layer.keys.normal_(std=std)
            layer.values.normal_(std=std)
        self.write_length.fill_(context)
        self.row_lengths.fill_(context)
        self.valid.zero_()
        self.valid[:, :context] = True
        self.key_positions.copy_(self.slots)

    def block_visible(self, block: torch.Tensor, write_at: torch.Tensor,
                      committed: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, T, S]``: ``block [(B,) T, T]`` placed at slots ``write_at ..``, plus the
        committed slots (``committed [B, S]``, default ``valid``)."""
        length = block.shape[-1]
        relative = self.slots - write_at
        in_block = (relative >= 0) & (relative < length)
        sees_block = block[..., relative.clamp(0, length - 1)] & in_block
        return sees_block | (self.valid if committed is None else committed)[:, None, :]


class StaticForward:
    """The forward pass over a :class:`StaticCache` (see the module doc).

    ``call(tokens, masks, position_ids, cache)`` runs the model; ``windows`` maps each
    attention layer type to its sliding window (None: full attention).
    """

    def __init__(self, cache: StaticCache, call: ModelCall, dtype: torch.dtype,
                 windows: Mapping[str, int | None] | None = None) -> None:
        self.static = cache
        self.call = call
        self.dtype = dtype
        self.windows = dict(windows or {"full_attention": None})

    def additive(self, visible: torch.Tensor) -> torch.Tensor:
        """Bool ``[B, T, S]`` -> the additive mask ``[B, 1, T, S]`` (0 or dtype min)."""
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=visible.device)
        return mask.masked_fill(~visible, torch.finfo(self.dtype).min)[:, None]

    def masks(self, visible: torch.Tensor, positions: torch.Tensor) -> Any:
        """One additive mask, or ``{layer type: mask}`` for mixed full/window layers."""
        masks = {}
        for layer_type, window in self.windows.items():
            allowed = visible
            if window is not None:
                distance = positions[:, :, None] - self.static.key_positions[:, None, :]
                allowed = visible & (distance < window)
            masks[layer_type] = self.additive(allowed)
        return masks if len(masks) > 1 else next(iter(masks.values()))

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, write_at: torch.Tensor,
                 visible: torch.Tensor) -> Any:
        """Run ``tokens [B, T]`` (or inputs the ``call`` understands) at positions
        ``positions [B, T]``, writing their keys/values at slots ``write_at .. write_at+T-1``;
        token ``t`` attends to the slots ``visible [B, T, S]`` marks."""
        static = self.static
        length = positions.shape[1]
        for layer in static.layers:  # StaticLayer writes at cumulative_length + arange(T)
            layer.cumulative_length.copy_(write_at)
        static.key_positions.index_copy_(1, static.slots[:length] + write_at, positions)
        return self.call(tokens, self.masks(visible, positions), positions, static)


def hf_decoder_call(call_decoder: Callable[..., Any], cache_argument: str,
                    hidden_layers: tuple[int, ...] = ()) -> ModelCall:
    """A :data:`ModelCall` for an HF decoder run by ``call_decoder(positions,
    key_positions, **kwargs)`` (``architectures.decoder_call``): its last hidden state
    ``[B, T, H]``, and with ``hidden_layers`` also ``cat(hidden_states[i] for i)
    [B, T, len * H]`` (HF numbering: ``hidden_states[i]`` is layer ``i``'s input)."""

    def call(tokens: torch.Tensor, masks: Any, positions: torch.Tensor,
             static: StaticCache) -> Any:
        extra = {"output_hidden_states": True} if hidden_layers else {}
        outputs = call_decoder(positions, static.key_positions, input_ids=tokens,
                               attention_mask=masks, use_cache=True,
                               **{cache_argument: static.cache}, **extra)
        if not hidden_layers:
            return outputs.last_hidden_state
        states = outputs.hidden_states
        return outputs.last_hidden_state, torch.cat([states[i] for i in hidden_layers], dim=-1)

    return call
