"""Which model and Medusa heads to load, and loading them with a one-line error.

A model is a short registry name (``vicuna-7b``), a local folder or a Hugging Face
hub id. Loading goes through the normal transformers / hub cache, so
``HF_HUB_OFFLINE=1`` works with whatever is already downloaded; anything missing
becomes a :class:`TreeoptError` naming what to download or pass, not a traceback.
Sharding a model over several GPUs is left to accelerate (``device_map="auto"``).

Torch and transformers are imported inside the loaders only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treeopt.errors import TreeoptError, first_line


@dataclass(frozen=True)
class ModelSpec:
    """A base model and the Medusa heads published for it (``None``: pass ``--heads``)."""

    base: str
    heads: str | None
    note: str = ""


# Models the Medusa paper reports on. The Vicuna heads are Medusa-1 heads-only
# checkpoints for the unchanged base. For Zephyr the only published checkpoint
# (FasterDecoding/medusa-1.0-zephyr-7b-beta) is Medusa-2: it fine-tunes the base
# together with the heads, so it is not a heads checkpoint for zephyr-7b-beta.
REGISTRY: dict[str, ModelSpec] = {
    **{
        f"vicuna-{size}": ModelSpec(
            base=f"lmsys/vicuna-{size}-v1.3", heads=f"FasterDecoding/medusa-vicuna-{size}-v1.3"
        )
        for size in ("7b", "13b", "33b")
    },
    "zephyr-7b": ModelSpec(
        base="HuggingFaceH4/zephyr-7b-beta",
        heads=None,
        note=(
            "no published heads-only Medusa checkpoint for zephyr-7b-beta "
            "(FasterDecoding/medusa-1.0-zephyr-7b-beta is Medusa-2, a fine-tuned base): "
            "train some with `treeopt train-heads` and pass --heads DIR"
        ),
    ),
}

LOADABLE_DTYPES = ("float32", "float16", "bfloat16")  # also as fp32, fp16, bf16
DEVICE_MAPS = ("auto",)


def resolve_model(model: str, heads: str | None = None) -> tuple[str, str | None]:
    """(base model id or folder, heads id or folder or None) for ``model``.

    A registry name maps to its base and published heads; ``heads`` overrides the
    heads. Anything else is taken as a folder or hub id, with heads only from
    ``heads``.
    """
    spec = REGISTRY.get(model)
    if spec is None:
        return model, heads
    return spec.base, heads if heads is not None else spec.heads


def require_heads(model: str, heads: str | None) -> str:
    """The heads to load for ``model``, or a one-line error saying how to get some."""
    _, resolved = resolve_model(model, heads)
    if resolved is None:
        spec = REGISTRY.get(model)
        reason = spec.note if spec is not None and spec.note else (
            f"{model} has no registered Medusa heads: pass --heads DIR_OR_HUB_ID "
            "(train some with `treeopt train-heads`)"
        )
        raise TreeoptError(reason)
    return resolved


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _not_available(what: str, name: str, exc: BaseException) -> TreeoptError:
    """The one-line error for a model or heads that cannot be loaded."""
    if Path(name).exists():
        return TreeoptError(f"cannot load {what} from folder {name}: {first_line(exc)}")
    if Path(name).is_absolute() or name.startswith(".") or name.count("/") > 1:
        return TreeoptError(f"{what} folder {name} does not exist")
    where = "offline (HF_HUB_OFFLINE=1) and " if _offline() else ""
    return TreeoptError(
        f"{what} {name!r} is {where}not in the Hugging Face cache: download it with "
        f"`hf download {name}` or pass a local folder"
    )


def resolve_dtype(dtype: str) -> Any:
    """The torch dtype for a ``--dtype`` value ("auto": the checkpoint's own)."""
    import torch

    from treeopt.cost.roofline import canonical_dtype

    if dtype == "auto":
        return "auto"
    name = canonical_dtype(dtype)
    if name not in LOADABLE_DTYPES:
        raise TreeoptError(
            f"--dtype must be auto, {', '.join(LOADABLE_DTYPES)} (or bf16, fp16, fp32), "
            f"not {dtype!r}"
        )
    return getattr(torch, name)


def resolve_device(device: str) -> Any:
    """The torch device for a ``--device`` value; one-line error if invalid or absent."""
    import torch

    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise TreeoptError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, mps)")\
            from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise TreeoptError(f"--device {device}: no CUDA device is visible (use --device cpu)")
    return resolved


def load_base_model(
    model: str, device: str = "cpu", dtype: str = "auto", device_map: str | None = None
) -> tuple[Any, Any]:
    """(model in eval mode with frozen weights, tokenizer) for a name, folder or hub id.

    ``device_map="auto"`` hands placement to accelerate (multi-GPU sharding) and
    ignores ``device``. Raises TreeoptError if the model or tokenizer is missing.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, _ = resolve_model(model)
    if device_map is not None and device_map not in DEVICE_MAPS:
        raise TreeoptError(f"--device-map must be one of {', '.join(DEVICE_MAPS)}")
    torch_dtype = resolve_dtype(dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
        kwargs: dict[str, Any] = {"dtype": torch_dtype}
        if device_map is not None:
            kwargs["device_map"] = device_map
        loaded = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    except ImportError as exc:
        raise TreeoptError(f"loading {base}: {exc}".splitlines()[0]) from None
    except (OSError, ValueError) as exc:
        raise _not_available("model", base, exc) from None
    if device_map is None:
        try:
            loaded = loaded.to(device)
        except (RuntimeError, AssertionError) as exc:
            raise TreeoptError(f"cannot move model to device {device!r}: {exc}") from None
    loaded.eval()
    loaded.requires_grad_(False)
    return loaded, tokenizer


def load_heads(heads: str, device: Any = "cpu", dtype: Any = None, base_lm_head: Any = None) -> Any:
    """Medusa heads (a ``medusa_runtime.heads.MedusaHeads``) from a folder or hub id.

    ``base_lm_head``: the base model's output embedding, which heads saved with
    ``share_lm_head`` reuse (required for them, ignored by heads with their own).
    """
    from medusa_runtime.heads import MedusaHeads

    try:
        loaded = MedusaHeads.from_pretrained(heads, base_lm_head=base_lm_head)
    except TreeoptError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise _not_available("Medusa heads", heads, exc) from None
    loaded = loaded.to(device=device, dtype=dtype) if dtype is not None else loaded.to(device)
    loaded.eval()
    return loaded


def decoder_of(model: Any) -> Any:
    """The transformer body of a causal LM: hidden states after the final norm.

    Medusa heads read exactly this (what ``lm_head`` reads), not the raw output of
    the last layer.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is None:
        decoder = getattr(model, "model", None)
    if decoder is None:
        raise TreeoptError(f"{type(model).__name__} exposes no decoder to read hidden states")
    return decoder


def input_device(model: Any) -> Any:
    """Where the model's input ids must live (the embedding's device when sharded)."""
    return model.get_input_embeddings().weight.device
