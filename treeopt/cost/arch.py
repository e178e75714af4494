"""Model shapes: the numbers of a Llama-family decoder that cost time and memory.

An :class:`ArchShape` is all the roofline model and the random-weight timing
models need: no weights, no tokenizer. Shapes come from the named table below
(each entry cites the config it was copied from), from a Hugging Face
``config.json``, or from a model folder holding one.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from treeopt.errors import TreeoptError


@dataclass(frozen=True)
class ArchShape:
    """A Llama-family decoder's shape.

    ``num_key_value_heads < num_attention_heads`` is grouped-query attention
    (GQA): the K/V projections and the KV cache follow the KV heads.
    ``sliding_window`` (Mistral-7B-v0.1, Zephyr-7B): each query attends at most that
    many key/value positions; None is full attention.
    """

    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        for field_name in ("hidden_size", "intermediate_size", "num_layers",
                           "num_attention_heads", "num_key_value_heads", "head_dim",
                           "vocab_size"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TreeoptError(
                    f"arch {self.name}: {field_name} must be a positive integer, not {value!r}"
                )
        window = self.sliding_window
        if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                                   or window < 1):
            raise TreeoptError(
                f"arch {self.name}: sliding_window must be a positive integer or null, "
                f"not {window!r}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise TreeoptError(
                f"arch {self.name}: num_attention_heads {self.num_attention_heads} is not a "
                f"multiple of num_key_value_heads {self.num_key_value_heads}"
            )

    @property
    def q_size(self) -> int:
        """Width of the query projection's output (attention heads x head_dim)."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of one of the K or V projections' outputs (KV heads x head_dim)."""
        return self.num_key_value_heads * self.head_dim

    def attended_positions(self, context: int) -> int:
        """Key/value positions one query reads at ``context`` cached tokens (the window caps it)."""
        return context if self.sliding_window is None else min(context, self.sliding_window)

    def layer_parameters(self) -> int:
        """Weights in one decoder layer: attention projections, MLP, two RMSNorms."""
        projections_in = self.hidden_size * (self.q_size + 2 * self.kv_size)
        attention = projections_in + self.q_size * self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size
        norms = 2 * self.hidden_size
        return attention + mlp + norms

    def num_parameters(self) -> int:
        """All weights: embeddings, layers, final norm and an untied LM head."""
        embeddings = self.vocab_size * self.hidden_size
        lm_head = self.vocab_size * self.hidden_size
        return embeddings + self.num_layers * self.layer_parameters() + self.hidden_size + lm_head

    def weight_bytes(self, dtype_bytes: float = 2) -> float:
        """Bytes the base model's weights take at ``dtype_bytes`` per element."""
        return self.num_parameters() * dtype_bytes

    def kv_cache_bytes(self, batch: int, context: int, dtype_bytes: float = 2) -> float:
        """Bytes of K and V cache for ``batch`` sequences of ``context`` positions."""
        return 2 * self.num_layers * batch * context * self.kv_size * dtype_bytes

    def to_hf_config_dict(self) -> dict[str, Any]:
        """A ``LlamaConfig``-compatible dict, for building a random-weight model.

        Mistral-family shapes are plain Llama without the sliding window: below the
        window (4096 for Zephyr-7B; the contexts treeopt times by default) that is the
        same computation, and the runtime times it without window masks.
        """
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": HF_MAX_POSITION_EMBEDDINGS,
            "tie_word_embeddings": False,
            "attention_bias": False,
            "mlp_bias": False,
        }

    def as_dict(self) -> dict[str, Any]:
        """Plain fields, for JSON provenance."""
        return asdict(self)


# Long enough for the longest context any sweep uses (prefill of 8192 + a tree).
HF_MAX_POSITION_EMBEDDINGS = 16384

# Named shapes, copied from the models' own config.json files.
ARCHS: dict[str, ArchShape] = {
    # lmsys/vicuna-7b-v1.3 (= LLaMA-1 7B)
    "llama-7b": ArchShape("llama-7b", 4096, 11008, 32, 32, 32, 128, 32000),
    # lmsys/vicuna-13b-v1.3 (= LLaMA-1 13B)
    "llama-13b": ArchShape("llama-13b", 5120, 13824, 40, 40, 40, 128, 32000),
    # lmsys/vicuna-33b-v1.3 (= LLaMA-1 33B)
    "llama-33b": ArchShape("llama-33b", 6656, 17920, 60, 52, 52, 128, 32000),
    # huggyllama/llama-65b (LLaMA-1 65B)
    "llama-65b": ArchShape("llama-65b", 8192, 22016, 80, 64, 64, 128, 32000),
    # meta-llama/Llama-2-70b-hf (GQA, 8 KV heads)
    "llama-2-70b": ArchShape("llama-2-70b", 8192, 28672, 80, 64, 8, 128, 32000),
    # mistralai/Mistral-7B-v0.1's shape (GQA, 8 KV heads) with full attention, as v0.2 has
    "mistral-7b": ArchShape("mistral-7b", 4096, 14336, 32, 32, 8, 128, 32000),
    # HuggingFaceH4/zephyr-7b-beta = Mistral-7B-v0.1: GQA, 8 KV heads, sliding window 4096
    "zephyr-7b": ArchShape("zephyr-7b", 4096, 14336, 32, 32, 8, 128, 32000, 4096),
}

# Draft models of speculative decoding (the Medusa paper's baselines), from their
# config.json: full multi-head attention for the JackFram drafts, GQA for TinyLlama.
DRAFT_ARCH_NAMES = ("llama-68m", "llama-160m", "tinyllama-1.1b")
ARCHS.update({
    # JackFram/llama-68m
    "llama-68m": ArchShape("llama-68m", 768, 3072, 2, 12, 12, 64, 32000),
    # JackFram/llama-160m
    "llama-160m": ArchShape("llama-160m", 768, 3072, 12, 12, 12, 64, 32000),
    # TinyLlama/TinyLlama-1.1B-Chat-v1.0 (= Tiny-Vicuna-1B's shape; 4 KV heads)
    "tinyllama-1.1b": ArchShape("tinyllama-1.1b", 2048, 5632, 22, 32, 4, 64, 32000),
})

# A ~106M-parameter target that steps in well under a second on one CPU core, for checking
# the roofline on CPU (benchmarks/roofline_vs_measured.py --cpu) with llama-68m as its draft:
# JackFram/llama-160m's width (768 hidden, 12 heads, 3072 MLP, 32000 vocab) with 6 of its
# 12 layers; llama-68m is the same width with 2 layers.
ARCHS["llama-100m"] = ArchShape("llama-100m", 768, 3072, 6, 12, 12, 64, 32000)

# Fields an HF config must have (the rest have Llama defaults).
REQUIRED_CONFIG_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "vocab_size")


def known_archs() -> str:
    """The named shapes, comma-separated, for error messages and --help."""
    return ", ".join(ARCHS)


def arch_from_hf_config(config: dict[str, Any], name: str) -> ArchShape:
    """The shape in a parsed HF ``config.json``; one-line TreeoptError if fields are missing.

    ``num_key_value_heads`` defaults to ``num_attention_heads`` (MHA) and ``head_dim``
    to ``hidden_size // num_attention_heads``, as in transformers' LlamaConfig.
    ``sliding_window`` is read where the config uses it (null, or Qwen2's
    ``use_sliding_window: false``, is full attention).
    Multimodal configs that nest the decoder under ``text_config`` are read there.
    """
    if not isinstance(config, dict):
        raise TreeoptError(f"{name}: a model config is a JSON object")
    if isinstance(config.get("text_config"), dict) and "hidden_size" not in config:
        config = config["text_config"]
    missing = [key for key in REQUIRED_CONFIG_FIELDS if config.get(key) is None]
    if missing:
        raise TreeoptError(
            f"{name}: model config lacks {', '.join(missing)} (a Llama-family config.json is "
            f"needed; or a named arch: {known_archs()})"
        )
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads")
    if kv_heads is None:  # absent or null: multi-head attention; 0 is an error, not MHA
        kv_heads = heads
    head_dim = config.get("head_dim")
    if head_dim is None:
        for key in ("num_attention_heads", "hidden_size"):
            value = config[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TreeoptError(f"{name}: {key} must be a positive integer, not {value!r:.40}")
        head_dim = config["hidden_size"] // heads
    window = config.get("sliding_window")
    if config.get("use_sliding_window") is False:
        window = None
    return ArchShape(
        name=name,
        hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_layers=config["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=config["vocab_size"],
        sliding_window=window,
    )


def get_arch(name_or_path: str | os.PathLike[str]) -> ArchShape:
    """A named shape, an HF ``config.json`` file, or a model folder holding one.

    Raises TreeoptError naming the known shapes when ``name_or_path`` is neither.
    """
    text = str(name_or_path)
    if text.lower() in ARCHS:
        return ARCHS[text.lower()]
    path = Path(text)
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise TreeoptError(f"model folder {text} has no config.json")
    elif not path.exists():
        raise TreeoptError(
            f"unknown arch {text!r}: not a config.json or model folder; named archs: "
            f"{known_archs()}"
        )
    from treeopt.files.jsondoc import read_json

    config = read_json(path, "model config")
    label = path.parent.name if path.name == "config.json" else path.stem
    try:
        return arch_from_hf_config(config, label or text)
    except TreeoptError as exc:  # content errors name the file read
        raise TreeoptError(f"{path}: {exc}") from None
