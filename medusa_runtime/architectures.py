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
- ALiBi and other position schemes without ``position_ids`` (MPT, Bloom,
  Falcon with ``alibi``): they are not in the supported set;
- attention kernels that ignore a 4D mask (flash attention): the tree mask
  would be dropped;
- positions past the model's position limit (``max_position_embeddings``; a
  learned table would index out of range).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from treeopt.errors import TreeoptError

# Checked token for token against model.generate by the lossless suite (greedy,
# batched, compiled, EOS inside an accepted path); windows included where the
# architecture has them. Chosen for what Medusa users serve.
SUPPORTED_MODEL_TYPES = (
    "cohere", "falcon", "gemma", "gemma2", "gemma3_text", "gpt_neox", "granite", "llama",
    "mistral", "mixtral", "olmo2", "phi", "phi3", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe",
    "stablelm", "starcoder2",
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
    alibi = bool(getattr(config, "alibi", False))  # Falcon's ALiBi variant: no position_ids
    if model_type not in SUPPORTED_MODEL_TYPES or alibi:
        alibi_text = " with ALiBi" if alibi else ""
        raise TreeoptError(
            f"model type {model_type!r}{alibi_text} is not supported by medusa_runtime (supported: "
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


def position_limit(model: nn.Module) -> int | None:
    """Positions ``0 .. limit - 1`` the model was built for (None when it states none)."""
    limit = getattr(text_config(model), "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) and limit > 0 else None


def check_positions(model: nn.Module, last_position: int) -> None:
    """Raise TreeoptError (one line) if decoding would use a position past the model's limit."""
    limit = position_limit(model)
    if limit is not None and last_position >= limit:
        raise TreeoptError(
            f"decoding would reach position {last_position}, past the model's limit of {limit} "
            "positions (max_position_embeddings): shorten the prompt or max_new_tokens"
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
