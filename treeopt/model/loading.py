"""Which model and Medusa heads to load, and loading them with a one-line error.

:func:`load_medusa` is the one loader every verb uses. A model is a registry name
(the seven models of the Medusa README: ``medusa1-vicuna-7b`` ... ``medusa2-zephyr-7b``,
old names such as ``vicuna-7b`` kept as aliases), a local folder or a Hugging Face
hub id, holding a plain base, a Medusa-2 checkpoint (fine-tuned base with its heads
in its own weight files) or Medusa-1 heads. Hub ids resolve through the hub cache
first (no network), so ``HF_HUB_OFFLINE=1`` works with whatever is downloaded and a
missing one is a :class:`TreeoptError` in seconds, naming what to download or pass.
Sharding a model over several GPUs is left to accelerate (``device_map="auto"``).

Torch and transformers are imported inside the loaders only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treeopt.errors import ParameterError, TreeoptError, first_line, not_downloaded


@dataclass(frozen=True)
class ModelSpec:
    """A published Medusa model.

    ``kind`` "medusa-1": ``base`` is the unchanged base model and ``heads`` its
    heads-only checkpoint. "medusa-2": ``base`` is one checkpoint holding the
    fine-tuned base *and* its heads (``heads`` is None: they come from the same files).
    """

    base: str
    heads: str | None
    kind: str
    note: str = ""


# The seven models of the FasterDecoding/Medusa README ("Model Weights"): Medusa-1
# heads for the unchanged Vicuna v1.3 bases, and Medusa-2 ``medusa-1.0-*`` checkpoints
# whose base was fine-tuned together with the heads (so they are not heads for the
# original base). Names say which: ``medusa1-*`` / ``medusa2-*``.
REGISTRY: dict[str, ModelSpec] = {
    **{
        f"medusa1-vicuna-{size}": ModelSpec(
            base=f"lmsys/vicuna-{size}-v1.3", heads=f"FasterDecoding/medusa-vicuna-{size}-v1.3",
            kind="medusa-1",
        )
        for size in ("7b", "13b", "33b")
    },
    "medusa2-zephyr-7b": ModelSpec(
        base="FasterDecoding/medusa-1.0-zephyr-7b-beta", heads=None, kind="medusa-2",
        note="Zephyr-7B-beta fine-tuned with its Medusa heads (Mistral, sliding window)",
    ),
    **{
        f"medusa2-vicuna-{size}": ModelSpec(
            base=f"FasterDecoding/medusa-1.0-vicuna-{size}-v1.5", heads=None, kind="medusa-2",
        )
        for size in ("7b", "13b", "33b")
    },
}
# Short names kept working: the Vicuna sizes are the Medusa-1 models the paper starts
# from; Zephyr only exists as Medusa-2.
ALIASES: dict[str, str] = {
    **{f"vicuna-{size}": f"medusa1-vicuna-{size}" for size in ("7b", "13b", "33b")},
    "zephyr-7b": "medusa2-zephyr-7b",
}

LOADABLE_DTYPES = ("float32", "float16", "bfloat16")  # also as fp32, fp16, bf16
DEVICE_MAPS = ("auto",)
# An uncached hub id without HF_HUB_OFFLINE: one connection attempt this long tells
# "no network" apart in seconds (huggingface_hub's own retries take about a minute).
HUB_PROBE_SECONDS = 3.0
HEADS_PATTERNS = ["config.json", "medusa_lm_head.pt", "medusa_lm_head.safetensors"]
MODEL_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt"]
KINDS = ("medusa-1", "medusa-2", "random", "none")


def registry_spec(model: str) -> ModelSpec | None:
    """The registry entry for a name or alias (None: a folder or hub id)."""
    return REGISTRY.get(ALIASES.get(model, model))


def resolve_model(model: str, heads: str | None = None) -> tuple[str, str | None]:
    """(base model id or folder, heads id or folder or None) for ``model``.

    A registry name maps to its base and heads (for Medusa-2 the heads are in the
    base's own files, so both are the checkpoint); ``heads`` overrides the heads.
    Anything else is taken as a folder or hub id, with heads only from ``heads``.
    """
    spec = registry_spec(model)
    if spec is None:
        return model, heads
    own = spec.base if spec.kind == "medusa-2" else spec.heads
    return spec.base, heads if heads is not None else own


def require_heads(model: str, heads: str | None) -> str:
    """The heads to load for ``model``, or a one-line error saying how to get some.

    A local or cached Medusa-2 checkpoint carries its own heads (its id is returned).
    """
    _, resolved = resolve_model(model, heads)
    if resolved is None and (_is_medusa2(model) or _is_heads_folder(model)):
        return model  # its own heads: inside a Medusa-2 checkpoint, or the folder itself
    if resolved is None:
        raise ParameterError(
            "heads", f"is needed: {model} has no registered Medusa heads (give a folder or hub "
            "id; train some with `treeopt train-heads`), or use a Medusa-2 checkpoint")
    return resolved


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a local path, not a hub id (``owner/name``): absolute,
    relative to ``.`` or ``~``, ending in a separator (``heads/``), or deeper than
    ``owner/name``. Such a name that does not exist is a missing folder, never a download.
    """
    return (Path(name).is_absolute() or name.startswith((".", "~")) or name.endswith(("/", os.sep))
            or name.count("/") > 1 or "\\" in name)


def _not_available(what: str, name: str, exc: BaseException) -> TreeoptError:
    """The one-line error for a model or heads that cannot be loaded."""
    if Path(name).exists():
        return TreeoptError(f"cannot load {what} from folder {name}: {first_line(exc)}")
    if _looks_like_path(name):
        return TreeoptError(f"{what} folder {name} does not exist")
    where = "offline (HF_HUB_OFFLINE=1) and " if _offline() else ""
    return not_downloaded(what, name, f"is {where}not in the Hugging Face cache")


def _cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of a hub id, without touching the network."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, or not a valid repo id: the caller says which
        return None


def _hub_reachable() -> bool:
    """Whether one TCP connection to the hub endpoint opens within HUB_PROBE_SECONDS."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=HUB_PROBE_SECONDS):
            return True
    except OSError:
        return False


def checkpoint_dir(name: str, what: str, patterns: list[str] | None = None) -> Path:
    """The local folder of a model or heads: the folder itself, or the hub id's snapshot.

    The hub cache is looked at first (no network); an id that is not cached is
    downloaded only when not offline and the hub answers within HUB_PROBE_SECONDS,
    so "no network" is a one-line error in seconds, not after a minute of retries.
    """
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    if local.exists() or _looks_like_path(name):
        raise TreeoptError(f"{what} folder {name} does not exist")
    cached = _cached_snapshot(name)
    if cached is not None:
        return cached
    if _offline():
        raise not_downloaded(what, name, "is offline (HF_HUB_OFFLINE=1) and not in the "
                             "Hugging Face cache")
    if not _hub_reachable():
        raise not_downloaded(what, name, "is not in the Hugging Face cache and the hub is "
                             "unreachable")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as exc:  # unknown repo, gated, connection dropped: one line
        raise TreeoptError(f"cannot download {what} {name!r}: {first_line(exc)}") from None


def _read_config(directory: Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint folder as a dict (one-line error if unreadable)."""
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise TreeoptError(f"cannot read {path}: {first_line(exc)}") from None
    if not isinstance(config, dict):
        raise TreeoptError(f"{path} is not a JSON object")
    return config


def checkpoint_kind(directory: Path) -> str:
    """"medusa-2" (model + heads in its weight files), "medusa-1" (a heads-only folder)
    or "base" (a plain model), from config.json and the weight files' names only."""
    from medusa_runtime.heads import WEIGHTS_PT, WEIGHTS_SAFETENSORS, embedded_head_shards

    config = _read_config(directory)
    if "medusa_num_heads" not in config:
        return "base"
    if (directory / WEIGHTS_SAFETENSORS).is_file() or (directory / WEIGHTS_PT).is_file():
        return "medusa-1"
    if embedded_head_shards(directory):
        return "medusa-2"
    raise TreeoptError(
        f"{directory}: config.json has medusa_num_heads but no heads file and no "
        "medusa_head.* tensors in the model's weight files"
    )


def _is_medusa2(model: str) -> bool:
    """Whether ``model`` is a local or already-cached Medusa-2 checkpoint (no network)."""
    spec = registry_spec(model)
    if spec is not None:
        return spec.kind == "medusa-2"
    local = Path(model) if Path(model).is_dir() else (
        None if _looks_like_path(model) else _cached_snapshot(model))
    return local is not None and (local / "config.json").is_file() and \
        checkpoint_kind(local) == "medusa-2"


def _is_heads_folder(model: str) -> bool:
    """Whether ``model`` is a local Medusa-1 heads folder (loaded on the base its
    ``config.json`` names as ``base_model_name_or_path``)."""
    local = Path(model).expanduser()
    return local.is_dir() and (local / "config.json").is_file() and \
        checkpoint_kind(local) == "medusa-1"


def resolve_dtype(dtype: str) -> Any:
    """The torch dtype for a dtype name ("auto": the checkpoint's own)."""
    import torch

    from treeopt.core.dtypes import loadable_dtype

    if dtype == "auto":
        return "auto"
    return getattr(torch, loadable_dtype(dtype))  # the one dtype check (a ParameterError)


def resolve_device(device: str) -> Any:
    """The torch device for a device name; one-line ParameterError if invalid or absent."""
    import torch

    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ParameterError("device", f"{device!r} is not a torch device (cpu, cuda, cuda:1, "
                             "mps)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError("device", f"{device}: no CUDA device is visible (use cpu)")
    return resolved


def _stderr_is_terminal() -> bool:
    import sys

    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _load_model_from(directory: Path, name: str, dtype: str, device_map: str | None,
                     quiet: bool, four_bit: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) from a local checkpoint folder with transformers (one-line errors).

    ``quiet`` hides transformers' warnings and loading bars (for ``-q``, and for a
    Medusa-2 checkpoint the report of its ``medusa_head.*`` tensors as unexpected
    weights: the heads loader reads them instead).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype)}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if four_bit:  # QLoRA: NF4 weights, bf16 compute (the QLoRA paper's setting)
        import torch
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs.setdefault("device_map", {"": 0})
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.set_verbosity_error()
    if quiet or not _stderr_is_terminal():  # a "Loading weights" bar is noise in a pipe or log
        hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        loaded = AutoModelForCausalLM.from_pretrained(str(directory), **kwargs)
    except ImportError as exc:
        raise TreeoptError(f"loading {name}: {first_line(exc)}") from None
    except Exception as exc:  # corrupt or truncated weights, unknown architecture: one line
        raise TreeoptError(f"cannot load model {name} from {directory}: {first_line(exc)}") \
            from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return loaded, tokenizer


def _place(model: Any, device: str, device_map: str | None) -> Any:
    """The model on ``device`` (unless accelerate placed it), in eval mode, frozen."""
    if device_map is None:
        try:
            model = model.to(resolve_device(device))
        except (RuntimeError, AssertionError) as exc:
            raise TreeoptError(f"cannot move model to device {device!r}: {exc}") from None
    model.eval()
    model.requires_grad_(False)
    return model


def load_base_model(
    model: str, device: str = "cpu", dtype: str = "auto", device_map: str | None = None,
    quiet: bool = False,
) -> tuple[Any, Any]:
    """(model in eval mode with frozen weights, tokenizer) for a name, folder or hub id.

    ``device_map="auto"`` hands placement to accelerate (multi-GPU sharding) and
    ignores ``device``. Raises TreeoptError if the model or tokenizer is missing.
    A Medusa-2 checkpoint loads as its fine-tuned base (heads: :func:`load_medusa`).
    ``quiet``: no transformers warnings or loading bars.
    """
    base, _ = resolve_model(model)
    if device_map is not None and device_map not in DEVICE_MAPS:
        raise ParameterError("device_map", f"must be one of {', '.join(DEVICE_MAPS)}")
    resolve_dtype(dtype)
    directory = checkpoint_dir(base, "model", MODEL_PATTERNS)
    kind = checkpoint_kind(directory) if (directory / "config.json").is_file() else "base"
    loaded, tokenizer = _load_model_from(directory, base, dtype, device_map,
                                         quiet=quiet or kind == "medusa-2")
    return _place(loaded, device, device_map), tokenizer


def load_heads(heads: str, device: Any = "cpu", dtype: Any = None, base_lm_head: Any = None) -> Any:
    """Medusa heads (a ``medusa_runtime.heads.MedusaHeads``) from a folder or hub id.

    Medusa-1 heads-only checkpoints and Medusa-2 checkpoints (heads inside the
    model's weight files) both load. ``base_lm_head``: the base model's output
    embedding, which heads saved with ``share_lm_head`` reuse (required for them,
    ignored by heads with their own).
    """
    from medusa_runtime.heads import MedusaHeads

    directory = checkpoint_dir(heads, "Medusa heads", HEADS_PATTERNS)
    try:
        loaded = MedusaHeads.from_pretrained(directory, base_lm_head=base_lm_head)
    except TreeoptError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise _not_available("Medusa heads", heads, exc) from None
    loaded = loaded.to(device=device, dtype=dtype) if dtype is not None else loaded.to(device)
    loaded.eval()
    return loaded


def random_heads(model: Any, num_heads: int, num_layers: int = 1, seed: int = 0) -> Any:
    """Untrained Medusa heads shaped for ``model``, beside its ``lm_head`` (same device/dtype).

    Identity ResBlocks and seeded random projections: for tests and timing (the
    step time depends on the heads' shapes only). The global RNG is left untouched.
    """
    import torch

    from medusa_runtime.heads import MedusaConfig, MedusaHeads

    lm_head = model.get_output_embeddings()
    vocab_size, hidden_size = (int(n) for n in lm_head.weight.shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = MedusaHeads(MedusaConfig(num_heads, num_layers, hidden_size, vocab_size))
    return heads.to(device=lm_head.weight.device, dtype=lm_head.weight.dtype).eval()


@dataclass(frozen=True)
class LoadedMedusa:
    """A loaded base model, its tokenizer and Medusa heads.

    ``kind``: "medusa-1" (heads for an unchanged base), "medusa-2" (fine-tuned base
    with its own heads), "random" (untrained heads) or "none" (no heads). Heads
    sit on the device and dtype of the model's ``lm_head``.
    """

    model: Any
    tokenizer: Any
    heads: Any | None
    kind: str
    model_id: str
    heads_id: str | None


def check_heads_fit(heads: Any, model: Any, heads_id: str) -> None:
    """One-line error unless ``heads`` read ``model``'s hidden size and write its vocabulary."""
    vocab_size, hidden_size = (int(n) for n in model.get_output_embeddings().weight.shape)
    config = heads.config
    if config.hidden_size != hidden_size:
        raise TreeoptError(
            f"Medusa heads {heads_id} read hidden size {config.hidden_size}, the model's is "
            f"{hidden_size}: these heads belong to another model")
    if config.vocab_size != vocab_size:
        raise TreeoptError(
            f"Medusa heads {heads_id} predict a vocabulary of {config.vocab_size} tokens, the "
            f"model's has {vocab_size}: these heads belong to another model")


def load_medusa(
    model: str,
    heads: str | None = None,
    *,
    device: str = "cpu",
    dtype: str = "auto",
    device_map: str | None = None,
    need_heads: bool = True,
    random_num_heads: int | None = None,
    four_bit: bool = False,
    quiet: bool = False,
) -> LoadedMedusa:
    """The one loader of a model with Medusa heads, for every checkpoint kind.

    ``model``: registry name, folder or hub id of a plain base, a Medusa-2
    checkpoint (its heads load from its own weight files, no ``heads`` needed) or a
    Medusa-1 heads folder (its ``base_model_name_or_path`` is loaded under it).
    ``heads`` overrides the heads; ``random_num_heads`` builds untrained ones
    instead. Without heads: an error when ``need_heads``, else kind "none".
    ``four_bit``: NF4 weights through bitsandbytes (QLoRA training; CUDA);
    ``quiet``: no transformers warnings or loading bars. Heads
    are read and checked before the model loads where they can be (not when they
    share the model's ``lm_head``), and always checked against the model's hidden
    size and vocabulary before returning.
    """
    if random_num_heads is not None and heads is not None:
        raise TreeoptError("give heads or random heads, not both")
    if device_map is not None and device_map not in DEVICE_MAPS:
        raise ParameterError("device_map", f"must be one of {', '.join(DEVICE_MAPS)}")
    resolve_dtype(dtype)
    if device_map is None:
        resolve_device(device)
    base, heads_id = resolve_model(model, heads)
    directory = checkpoint_dir(base, "model", MODEL_PATTERNS)
    kind = checkpoint_kind(directory) if (directory / "config.json").is_file() else "base"
    if kind == "medusa-1":  # a heads folder given as the model: load the base it names
        heads_id = heads_id or str(directory)
        base = str(_read_config(directory).get("base_model_name_or_path") or "")
        if not base:
            raise ParameterError("heads", f"are needed apart: {directory} holds Medusa heads "
                                 "without base_model_name_or_path (give the base as the "
                                 "model and these as the heads)")
        directory = checkpoint_dir(base, "model", MODEL_PATTERNS)
        kind = checkpoint_kind(directory) if (directory / "config.json").is_file() else "base"
    if heads_id is None and random_num_heads is None and kind == "medusa-2":
        heads_id = base
    if heads_id is None and random_num_heads is None and need_heads:
        require_heads(model, None)  # raises, saying how to get heads
    early = _heads_before_model(heads_id) if heads_id is not None else None
    net, tokenizer = _load_model_from(directory, base, dtype, device_map,
                                      quiet=quiet or kind == "medusa-2", four_bit=four_bit)
    net = _place(net, device, device_map if not four_bit else "auto")
    lm_head = net.get_output_embeddings()
    if random_num_heads is not None:
        return LoadedMedusa(net, tokenizer, random_heads(net, random_num_heads), "random", base,
                            None)
    if heads_id is None:
        return LoadedMedusa(net, tokenizer, None, "none", base, None)
    loaded = early if early is not None else load_heads(heads_id, base_lm_head=lm_head)
    check_heads_fit(loaded, net, heads_id)
    loaded = loaded.to(device=lm_head.weight.device, dtype=lm_head.weight.dtype).eval()
    heads_kind = "medusa-2" if heads_id == base and kind == "medusa-2" else "medusa-1"
    return LoadedMedusa(net, tokenizer, loaded, heads_kind, base, heads_id)


def _heads_before_model(heads_id: str) -> Any | None:
    """Heads read before the model loads (bad heads fail in a second), unless they
    need the model's ``lm_head`` (``share_lm_head``): then None, loaded after."""
    directory = checkpoint_dir(heads_id, "Medusa heads", HEADS_PATTERNS)
    if checkpoint_kind(directory) == "base":
        raise TreeoptError(f"Medusa heads {heads_id}: config.json has no medusa_num_heads "
                           "(a plain model, not heads)")
    if _read_config(directory).get("share_lm_head"):
        return None
    return load_heads(str(directory))


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


# ------------------------------------------------------------------ EAGLE drafters
EAGLE_CONFIG_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads",
                       "num_key_value_heads", "vocab_size", "head_dim", "rms_norm_eps",
                       "max_position_embeddings")


def _eagle_weights(directory: Path) -> dict[str, Any]:
    """The drafter's tensors: ``model.safetensors`` or ``pytorch_model.bin`` (one line when
    neither is there or it is corrupt)."""
    from medusa_runtime.eagle import EAGLE_WEIGHTS_PT, EAGLE_WEIGHTS_SAFETENSORS
    from medusa_runtime.heads import read_weights

    for name in (EAGLE_WEIGHTS_SAFETENSORS, EAGLE_WEIGHTS_PT):
        if (directory / name).is_file():
            return read_weights(directory / name)
    raise TreeoptError(f"{directory} has no {EAGLE_WEIGHTS_SAFETENSORS} or {EAGLE_WEIGHTS_PT}")


def eagle_kind(config: dict[str, Any], weights: dict[str, Any]) -> tuple[str, int]:
    """``(layout, version)`` told from the files: ``("eagle", 1 | 3)`` for the EAGLE repo
    layout (EAGLE-3 has ``midlayer.*``), ``("speculators", 3)`` for vLLM's speculators
    format (config ``speculators_model_type``)."""
    kind = config.get("speculators_model_type")
    if kind is not None:
        if kind != "eagle3":
            raise TreeoptError(f"speculators drafters of type {kind!r} are not supported "
                               "(eagle3 is)")
        for flag in ("norm_before_fc", "norm_before_residual"):
            if config.get(flag):
                raise TreeoptError(f"speculators EAGLE-3 with {flag}=true is not supported")
        return "speculators", 3
    if any(k.startswith("midlayer.") for k in weights):
        return "eagle", 3
    if any(k.startswith("layers.0.") for k in weights) and "fc.weight" in weights:
        return "eagle", 1
    raise TreeoptError("not an EAGLE drafter: no midlayer.* (EAGLE-3) or layers.0.* and fc.weight "
                       "(EAGLE-1/2) weights")


def _eagle_config(config: dict[str, Any], layout: str, version: int,
                  weights: dict[str, Any]) -> Any:
    from medusa_runtime.eagle import EagleConfig

    layer = config.get("transformer_layer_config", {}) if layout == "speculators" else config
    try:
        fields = {name: layer[name] for name in EAGLE_CONFIG_FIELDS if layer.get(name) is not None}
        rope = layer.get("rope_parameters") or {}
        fields["rope_theta"] = float(rope.get("rope_theta", layer.get("rope_theta", 10000.0)))
        draft_vocab = config.get("draft_vocab_size") or fields["vocab_size"]
        if version == 3 and "lm_head.weight" in weights:
            draft_vocab = int(weights["lm_head.weight"].shape[0])
        return EagleConfig(version=version, draft_vocab_size=int(draft_vocab), **fields)
    except (KeyError, TypeError, ValueError) as exc:
        raise TreeoptError(f"the EAGLE config lacks or mistypes {first_line(exc)}") from None


def read_eagle(directory: str) -> Any:
    """An EAGLE drafter's ``EagleModel`` (on the CPU, not yet fitted to a target) from an
    EAGLE repo checkpoint or a speculators one; the kind is told from the files
    (:func:`eagle_kind`). Missing or corrupt files, unknown keys or shapes that do not
    fit its config: a one-line TreeoptError. Cheap: call it before loading the target."""
    from medusa_runtime.eagle import EagleModel

    path = Path(directory)
    if not path.is_dir():
        raise TreeoptError(f"EAGLE drafter folder {directory} does not exist")
    config = _read_config(path)
    weights = _eagle_weights(path)
    layout, version = eagle_kind(config, weights)
    if layout == "speculators":
        weights = {("midlayer." + k[len("layers.0."):] if k.startswith("layers.0.") else k): v
                   for k, v in weights.items()}
    model = EagleModel(_eagle_config(config, layout, version, weights),
                       fc_bias="fc.bias" in weights)
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:
        raise TreeoptError(f"EAGLE drafter {directory}: {first_line(exc).strip()}") from None
    missing = [k for k in missing if not k.startswith(("embed_tokens.", "rotary_emb."))]
    if missing or unexpected:
        raise TreeoptError(f"EAGLE drafter {directory}: missing {missing[:3]}, unexpected "
                           f"{unexpected[:3]} weights")
    model.embedding_from_target = "embed_tokens.weight" not in weights
    return model.eval()


def load_eagle(directory: str | Any, target: Any) -> Any:
    """An ``EagleDrafter`` for ``target`` from a checkpoint folder (:func:`read_eagle`) or
    an ``EagleModel`` it read. A drafter of another hidden size or vocabulary: a
    one-line TreeoptError, before any decoding. ``embed_tokens`` absent: the target's.
    """
    import torch

    from medusa_runtime.eagle import EagleDrafter

    model = read_eagle(directory) if isinstance(directory, str) else directory
    parameter = next(target.parameters())
    model = model.to(device=parameter.device, dtype=torch.float32 if parameter.dtype ==
                     torch.float32 else parameter.dtype).eval()
    return EagleDrafter(model, target)
