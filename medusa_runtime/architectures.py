"""Which decoders the runtime verifies exactly, and the per-model facts its step needs.

The runtime's step is exact for a causal LM whose decoder takes a 4D additive
attention mask (or a ``{layer_type: mask}`` dict for mixed full/sliding-window
layers), explicit ``position_ids`` and a static KV cache, and whose positions
enter only through ``position_ids``. :data:`SUPPORTED_MODEL_TYPES` are the
architectures the lossless suite (``tests/test_runtime_architectures.py``)
checks token for token against ``model.generate``; :func:`check_supported`
refuses everything else in one line, before any decoding.

Refused on purpose (they decode silently wrong or crash otherwise):

- RoPE scaling that depends on the sequence length (``dynamic`` NTK, Phi-3
  ``longrope``): the step sees the tree's positions, not the sequence's, so
  the rotation differs from ``model.generate``'s;
- MPT with a batch of several prompts: MPT takes its ALiBi bias as
  ``[heads, queries, keys]``, without a batch dimension, so rows at different
  positions (left padding, unequal accepted paths) cannot each get their own;
- attention kernels that ignore a 4D mask (flash attention): the tree mask
  would be dropped;
- positions past the model's position limit (``max_position_embeddings``; a
  learned table would index out of range).

Models whose positions do not enter only through ``position_ids`` get them
through :func:`decoder_call`: ALiBi (Bloom, MPT, Falcon with ``alibi``) gets its
bias from each key's token position (the tree depth), not from its cache slot;
GPT-Neo's local layers get their window from positions too.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from treeopt.errors import TreeoptError

# Checked token for token against model.generate by the lossless suite (greedy,
# batched, compiled, EOS inside an accepted path); windows included where the
# architecture has them. Chosen for what Medusa users serve.
SUPPORTED_MODEL_TYPES = (
    "biogpt", "bloom", "codegen", "cohere", "cohere2", "exaone4", "falcon", "gemma", "gemma2",
    "gemma3_text", "glm", "gpt2", "gpt_bigcode", "gpt_neo", "gpt_neox", "gptj", "granite",
    "helium", "llama", "mistral", "mixtral", "mpt", "olmo", "olmo2", "opt", "phi", "phi3",
    "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "smollm3", "stablelm", "starcoder2", "xglm",
)
# RoPE variants whose rotation depends on the sequence length, not only on the position
# (transformers updates their frequencies per forward for any type naming "dynamic").
LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")
# Attention kernels that apply the runtime's 4D additive mask.
MASKED_ATTENTION = ("eager", "sdpa")
FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"


def _rope_types(config: Any) -> Iterable[str]:
    """Every ``rope_type`` of ``config`` (one per layer type in hybrid models)."""
    parameters = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    if not isinstance(parameters, dict):
        return ()
    nested = [value for value in parameters.values() if isinstance(value, dict)]
    return [str(p.get("rope_type", p.get("type", "default"))) for p in nested or [parameters]]


def text_config(model: nn.Module) -> Any:
    """The decoder's config (``config.get_text_config`` for multimodal wrappers)."""
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def check_supported(model: nn.Module) -> None:
    """Raise TreeoptError (one line) unless the runtime verifies ``model`` exactly."""
    config = text_config(model)
    # The model's own type: a multimodal wrapper (e.g. "gemma3") is not its text decoder.
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise TreeoptError(
            f"model type {model_type!r} is not supported by medusa_runtime (supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    for rope_type in _rope_types(config):
        if any(kind in rope_type for kind in LENGTH_DEPENDENT_ROPE):
            raise TreeoptError(
                f"{model_type} with rope_type {rope_type!r} is not supported: its rotation depends "
                "on the sequence length, which a tree step does not see (use a static RoPE type)"
            )
    implementation = getattr(config, "_attn_implementation", None) or "eager"
    if implementation not in MASKED_ATTENTION:
        raise TreeoptError(
            f"attention implementation {implementation!r} ignores the tree mask; load the model "
            f"with attn_implementation in {MASKED_ATTENTION}"
        )
    attention_windows(config)


def _layer_types(config: Any) -> list[str]:
    """The attention kind of every decoder layer, from the config's public fields.

    ``layer_types`` when the config states it; otherwise each layer's (or the
    config's) ``sliding_window`` / ``attention_chunk_size``, as transformers
    infers it. Read here rather than through transformers' private
    ``cache_utils.get_layer_types_and_kwargs``, whose return shape changed
    between 5.17 and 5.24.
    """
    declared = getattr(config, "layer_types", None)
    if declared is not None:
        return [str(kind) for kind in declared]
    layer_configs = getattr(config, "per_layer_config", None) or (
        [config] * int(config.num_hidden_layers))
    kinds = []
    for layer_config in layer_configs:
        if getattr(layer_config, "sliding_window", None) is not None:
            kinds.append(SLIDING_ATTENTION)
        elif getattr(layer_config, "attention_chunk_size", None) is not None:
            kinds.append("chunked_attention")
        else:
            kinds.append(FULL_ATTENTION)
    return kinds


def attention_windows(config: Any) -> dict[str, int | None]:
    """Each attention layer type the decoder uses -> its sliding window (None: full).

    Raises TreeoptError for layer kinds the static tree cache cannot hold
    (linear attention, chunked attention, shared KV, attention-free layers).
    """
    if getattr(config, "num_kv_shared_layers", None) or getattr(config, "kv_sharing_modes", None):
        raise TreeoptError("models whose layers share one KV cache are not supported")
    layer_configs = getattr(config, "per_layer_config", None)
    windows: dict[str, int | None] = {}
    for index, layer_type in enumerate(_layer_types(config)):
        if layer_type not in (FULL_ATTENTION, SLIDING_ATTENTION):
            raise TreeoptError(f"attention layers of type {layer_type!r} are not supported")
        layer_config = layer_configs[index] if layer_configs else config
        window = getattr(layer_config, "sliding_window", None) if (
            layer_type == SLIDING_ATTENTION) else None
        if layer_type == SLIDING_ATTENTION and not isinstance(window, int):
            raise TreeoptError(f"sliding-window layer {index} states no sliding_window")
        if windows.setdefault(layer_type, window) != window:
            raise TreeoptError("sliding-window layers with different windows are not supported")
    return windows


# Config fields that bound positions: a learned table's size (GPT-2's n_positions maps to
# max_position_embeddings), MPT's ALiBi table.
POSITION_LIMIT_FIELDS = ("max_position_embeddings", "max_seq_len")


def position_limit(model: nn.Module) -> int | None:
    """Positions ``0 .. limit - 1`` the model was built for (None when it states none)."""
    config = text_config(model)
    limits = [getattr(config, name, None) for name in POSITION_LIMIT_FIELDS]
    limits = [int(limit) for limit in limits if isinstance(limit, int) and limit > 0]
    return min(limits) if limits else None


def check_positions(model: nn.Module, last_position: int) -> None:
    """Raise TreeoptError (one line) if decoding would use a position past the model's limit."""
    limit = position_limit(model)
    if limit is not None and last_position >= limit:
        raise TreeoptError(
            f"decoding would reach position {last_position}, past the model's limit of {limit} "
            "positions (max_position_embeddings or max_seq_len): shorten the prompt or "
            "max_new_tokens"
        )


def cache_argument(decoder: nn.Module) -> str:
    """The decoder's name for its KV-cache argument: ``cache`` (transformers >= 5.24) or
    ``past_key_values`` (before; removed in 5.40)."""
    parameters = inspect.signature(decoder.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


@dataclass(frozen=True)
class LogitTransform:
    """The model's own map from LM-head output to logits, as its ``forward`` applies it.

    ``scale`` multiplies (Cohere ``logit_scale``, Granite ``1 / logits_scaling``);
    ``softcap`` then caps to ``softcap * tanh(logits / softcap)`` (Gemma2/3). Greedy
    decoding's argmax barely depends on it; typical acceptance's probabilities do.
    """

    scale: float = 1.0
    softcap: float | None = None

    @classmethod
    def of(cls, model: nn.Module) -> LogitTransform:
        config = text_config(model)
        scale = float(getattr(config, "logit_scale", None) or 1.0)
        scale /= float(getattr(config, "logits_scaling", None) or 1.0)
        softcap = getattr(config, "final_logit_softcapping", None)
        return cls(scale, float(softcap) if softcap else None)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


# ------------------------------------------------------------ positions beyond position_ids
# decoder_call(model, batch_size, compile_step) -> call(positions, key_positions, **kwargs): runs
# the decoder with position_ids=positions [B, T]; key_positions [B, S] is the token
# position of every cache slot, this block's slots included (read only where visible).
DecoderCall = Callable[..., Any]


class _BiasOverride:
    """Stands in for a model's ALiBi builder: the runtime's bias while the runtime runs the
    decoder, the builder's own result otherwise (so ``model.generate`` is unchanged).

    Installed once per builder and left in place: swapping a module's attribute per call
    would break torch.compile's trace; setting ``bias`` does not.
    """

    def __init__(self, builder: Callable[..., torch.Tensor]) -> None:
        self.builder = builder
        self.bias: torch.Tensor | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.bias if self.bias is not None else self.builder(*args, **kwargs)


def _bias_override(owner: Any, name: str) -> _BiasOverride:
    """The override of ``owner.name`` (installed on first use)."""
    current = getattr(owner, name)
    if not isinstance(current, _BiasOverride):
        current = _BiasOverride(current)
        setattr(owner, name, current)
    return current


def _key_alibi(builder: Callable[..., torch.Tensor], num_heads: int, slope_dtype: torch.dtype,
               weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Bloom/Falcon: the model's ``build_alibi_tensor`` made to read key *positions*.

    Their bias is ``slope[h] * position(key)`` in ``slope_dtype`` arithmetic, shaped
    ``[B * heads, 1, S]`` (one per key: a query's own offset cancels in the softmax).
    The slopes come from the model's own builder, so the products are its own; they live
    on the model's device (``weight``'s: no host copy inside a captured step).
    """
    probe = torch.ones(1, 2, dtype=torch.long, device=weight.device)
    slopes = builder(probe, num_heads, slope_dtype)[:, 0, 1]
    dtype = weight.dtype

    def bias(key_positions: torch.Tensor) -> torch.Tensor:
        products = slopes[None, :, None] * key_positions[:, None, :]
        return products.reshape(-1, 1, key_positions.shape[-1]).to(dtype)

    return bias


def _alibi_call(decoder: nn.Module, owner: Any, name: str,
                bias_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> DecoderCall:
    """Run ``decoder`` with ``owner.name`` (its ALiBi builder) returning the bias of this
    call's positions: ``bias_of(positions, key_positions)``."""
    override = _bias_override(owner, name)

    def call(positions: torch.Tensor, key_positions: torch.Tensor, **kwargs: Any) -> Any:
        override.bias = bias_of(positions, key_positions)
        try:
            return decoder(position_ids=positions, **kwargs)
        finally:
            override.bias = None

    return call


def _mpt_call(decoder: nn.Module, batch_size: int, compile_step: bool,
              device: torch.device) -> DecoderCall:
    """MPT: its bias ``slope[h] * (key - query)`` (int32 offsets, as MPT builds them), per query."""
    if compile_step:
        raise TreeoptError("mpt cannot run a compiled step: MPT's attention reads the cache "
                           "length on the host (a graph break); decode without compile_step")
    if batch_size > 1:
        raise TreeoptError(
            "mpt decodes one prompt at a time: MPT takes its ALiBi bias without a batch "
            "dimension, so rows at different positions cannot each get theirs"
        )
    config = decoder.config
    table = decoder.build_mpt_alibi_tensor(config.n_heads, 2, device=device)
    slopes = -table[:, 0, 0]  # position -1 of the model's own table: the slopes

    def bias_of(positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
        offsets = (key_positions[0, None, :] - positions[0, :, None]).to(torch.int32)
        return offsets[None] * slopes[:, None, None]  # [heads, T, S]

    return _alibi_call(decoder, decoder, "build_mpt_alibi_tensor", bias_of)


def _gpt_neo_call(decoder: nn.Module) -> DecoderCall:
    """GPT-Neo: each attention's own causal ``bias`` table masks by cache slot; give global
    layers an all-true table (the runtime's mask is the causal part) and local layers the
    window over positions (``query - key < window_size``), at the rows the model reads."""
    attentions = [m for m in decoder.modules()
                  if getattr(m, "attention_type", None) in ("global", "local")
                  and isinstance(getattr(m, "bias", None), torch.Tensor)]
    window = int(decoder.config.window_size)

    def call(positions: torch.Tensor, key_positions: torch.Tensor, **kwargs: Any) -> Any:
        batch, length = positions.shape
        slots = key_positions.shape[-1]  # the model reads rows S - T .. S - 1
        true = torch.ones((), dtype=torch.bool, device=positions.device)
        everything = true.expand(1, 1, slots, slots)
        near = (positions[:, :, None] - key_positions[:, None, :]) < window  # [B, T, S]
        local = torch.cat([true.expand(batch, 1, slots - length, slots), near[:, None]], dim=2)
        with ExitStack() as stack:
            for attention in attentions:
                table = local if attention.attention_type == "local" else everything
                stack.enter_context(_replaced_buffer(attention, "bias", table))
            return decoder(position_ids=positions, **kwargs)

    return call


@contextmanager
def _replaced_buffer(module: nn.Module, name: str, value: torch.Tensor) -> Iterator[None]:
    saved = module._buffers[name]
    module._buffers[name] = value
    try:
        yield
    finally:
        module._buffers[name] = saved


def needs_key_positions(model: nn.Module) -> bool:
    """Whether positions reach ``model`` beyond ``position_ids`` (see :func:`decoder_call`)."""
    model_type = getattr(model.config, "model_type", None)
    alibi_falcon = model_type == "falcon" and bool(getattr(text_config(model), "alibi", False))
    return model_type in ("bloom", "mpt", "gpt_neo") or alibi_falcon


def decoder_call(model: nn.Module, batch_size: int, compile_step: bool = False) -> DecoderCall:
    """How the runtime runs ``model``'s decoder at explicit token positions.

    ``call(positions, key_positions, **decoder_kwargs)``: ``positions [B, T]`` of this
    block's tokens (``position_ids``), ``key_positions [B, S]`` of every cache slot.
    Most models take positions only through ``position_ids`` (learned tables, RoPE):
    the decoder itself. ALiBi models get their bias from ``key_positions``; GPT-Neo's
    local layers their window. Raises TreeoptError for what cannot be exact (MPT with
    ``batch_size > 1``) or cannot compile (MPT with ``compile_step``).
    """
    decoder = model.get_decoder()
    model_type = getattr(model.config, "model_type", None)
    weight = next(model.parameters())
    if model_type == "bloom":
        bias = _key_alibi(decoder.build_alibi_tensor, decoder.num_heads, torch.float32, weight)
        return _alibi_call(decoder, decoder, "build_alibi_tensor", lambda _, keys: bias(keys))
    if model_type == "falcon" and getattr(decoder.config, "alibi", False):
        falcon = sys.modules[type(decoder).__module__]  # builds its bias in a module function
        bias = _key_alibi(falcon.build_alibi_tensor, decoder.num_heads, torch.bfloat16, weight)
        return _alibi_call(decoder, falcon, "build_alibi_tensor", lambda _, keys: bias(keys))
    if model_type == "mpt":
        return _mpt_call(decoder, batch_size, compile_step, weight.device)
    if model_type == "gpt_neo":
        return _gpt_neo_call(decoder)

    def call(positions: torch.Tensor, key_positions: torch.Tensor, **kwargs: Any) -> Any:
        return decoder(position_ids=positions, **kwargs)

    return call
