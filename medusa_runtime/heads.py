"""Medusa heads: K small residual MLPs on the base model's last hidden state.

Head ``k`` (0-based) predicts the token ``k + 2`` places ahead of the last
verified one: the base model's own ``lm_head`` predicts the next token (the tree's
root) and head ``k`` the token at depth ``k + 1`` below it.

Checkpoints use the FasterDecoding/Medusa layouts so trained heads from that
project load unchanged. Medusa-1 (heads only): ``config.json`` with
``medusa_num_heads``, ``medusa_num_layers`` and ``base_model_name_or_path``, and
``medusa_lm_head.pt`` holding the state dict of a ``ModuleList`` of
``Sequential(ResBlock..., Linear)`` (keys ``0.0.linear.weight``,
``0.0.linear.bias``, ``0.1.weight``, ...); our own writes use
``medusa_lm_head.safetensors`` with the same keys. Medusa-2 (``medusa-1.0-*``: a
fine-tuned model with its heads): the model's own config plus ``medusa_num_heads``,
and the same keys prefixed ``medusa_head.`` inside the model's weight files
(single file or sharded with an index).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from treeopt.core.atomic import atomic_path, atomic_write_text
from treeopt.errors import TreeoptError, first_line, not_downloaded

CONFIG_FILE = "config.json"
WEIGHTS_PT = "medusa_lm_head.pt"
WEIGHTS_SAFETENSORS = "medusa_lm_head.safetensors"
# Some FasterDecoding releases save the whole MedusaModel's head attribute.
STATE_DICT_PREFIX = "medusa_head."


@dataclass
class MedusaConfig:
    """Shape of a set of Medusa heads (the FasterDecoding config keys, plus ours).

    ``share_lm_head``: the heads end in the base model's own ``lm_head`` instead of
    owning one vocabulary projection each (K times fewer projection weights).
    """

    medusa_num_heads: int
    medusa_num_layers: int
    hidden_size: int
    vocab_size: int
    base_model_name_or_path: str | None = None
    share_lm_head: bool = False

    def __post_init__(self) -> None:
        for name in ("medusa_num_heads", "medusa_num_layers", "hidden_size", "vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise TreeoptError(
                    f"Medusa config: {name} must be a non-negative int, not {value!r}"
                )
        if self.hidden_size == 0 or self.vocab_size == 0:
            raise TreeoptError("Medusa config: hidden_size and vocab_size must be positive")


class ResBlock(nn.Module):
    """``x + SiLU(Linear(x))`` with the Linear zero-initialised: starts as identity."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.linear(x))


class MedusaHeads(nn.Module):
    """K Medusa heads. ``forward(hidden [B, T, H]) -> logits [K, B, T, V]``.

    ``heads[k]`` is ``Sequential(ResBlock * medusa_num_layers, Linear(H, V))`` as in
    FasterDecoding; with ``share_lm_head`` it holds only the ResBlocks and every
    head ends in ``base_lm_head`` (not registered as a parameter of this module,
    so it is neither saved nor trained here).
    """

    def __init__(self, config: MedusaConfig, base_lm_head: nn.Module | None = None) -> None:
        super().__init__()
        if config.share_lm_head and base_lm_head is None:
            raise TreeoptError("heads with share_lm_head=True need the base model's lm_head")
        self.config = config
        heads = []
        for _ in range(config.medusa_num_heads):
            blocks: list[nn.Module] = [
                ResBlock(config.hidden_size) for _ in range(config.medusa_num_layers)
            ]
            if not config.share_lm_head:
                blocks.append(nn.Linear(config.hidden_size, config.vocab_size, bias=False))
            heads.append(nn.Sequential(*blocks))
        self.heads = nn.ModuleList(heads)
        # A plain attribute list keeps the shared projection out of state_dict/parameters.
        self._shared_lm_head = [base_lm_head] if config.share_lm_head else []

    @property
    def num_heads(self) -> int:
        return self.config.medusa_num_heads

    def forward(self, hidden_states: torch.Tensor, num_heads: int | None = None) -> torch.Tensor:
        """Logits ``[K, *hidden_states.shape[:-1], V]`` of every head at every position.

        ``num_heads`` runs only the first that many heads (a tree of depth D needs D),
        so unused heads cost no memory traffic.
        """
        heads = self.heads if num_heads is None else self.heads[:num_heads]
        outputs = torch.stack([head(hidden_states) for head in heads])
        if self._shared_lm_head:
            outputs = self._shared_lm_head[0](outputs)
        return outputs

    # ------------------------------------------------------------------ I/O
    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``medusa_lm_head.safetensors`` atomically."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            key: value.detach().contiguous().cpu()
            for key, value in self.heads.state_dict().items()
        }
        with atomic_path(directory / WEIGHTS_SAFETENSORS) as tmp:
            save_file(state, str(tmp))
        atomic_write_text(directory / CONFIG_FILE, json.dumps(asdict(self.config), indent=2) + "\n")

    def save_into_model(self, directory: str | Path) -> None:
        """Add these heads to a saved model folder, making it a Medusa-2 checkpoint.

        The FasterDecoding ``medusa-1.0`` layout: ``medusa_head.*`` tensors in the
        model's own weights (a single ``model.safetensors`` is rewritten with them; a
        sharded one gets one more shard, listed in its index) and ``medusa_num_heads``/
        ``medusa_num_layers`` in its ``config.json``. Each file is replaced atomically.
        """
        from safetensors.torch import load_file, save_file

        directory = Path(directory)
        state = {STATE_DICT_PREFIX + key: value.detach().contiguous().cpu()
                 for key, value in self.heads.state_dict().items()}
        index = directory / MODEL_WEIGHT_INDEXES[0]
        if index.is_file():
            shard = "model-medusa-heads.safetensors"
            with atomic_path(directory / shard) as tmp:
                save_file(state, str(tmp), metadata={"format": "pt"})
            document = json.loads(index.read_text(encoding="utf-8"))
            document["weight_map"].update(dict.fromkeys(state, shard))
            atomic_write_text(index, json.dumps(document, indent=2) + "\n")
        else:
            weights = directory / MODEL_WEIGHT_FILES[0]
            merged = {**load_file(str(weights)), **state}
            with atomic_path(weights) as tmp:
                save_file(merged, str(tmp), metadata={"format": "pt"})
        config_path = directory / CONFIG_FILE
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config.update(medusa_num_heads=self.config.medusa_num_heads,
                      medusa_num_layers=self.config.medusa_num_layers)
        atomic_write_text(config_path, json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(
        cls,
        dir_or_hub_id: str | Path,
        base_lm_head: nn.Module | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> MedusaHeads:
        """Load heads from a local folder or a Hugging Face hub id (normal hub cache).

        Reads the FasterDecoding layout (``medusa_lm_head.pt``) or ours
        (``medusa_lm_head.safetensors``, preferred when both exist). Hidden and
        vocabulary sizes come from the weights, so FasterDecoding's short
        config.json suffices. Raises TreeoptError (one line) when the folder,
        file or download is missing or the weights do not fit the config.
        """
        directory = _resolve_directory(str(dir_or_hub_id))
        try:
            raw_config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise TreeoptError(f"cannot read {directory / CONFIG_FILE}: {exc}") from None
        state = _load_state_dict(directory)
        try:
            num_heads = int(raw_config["medusa_num_heads"])
            num_layers = int(raw_config["medusa_num_layers"])
        except (KeyError, TypeError, ValueError) as exc:
            raise TreeoptError(f"{directory / CONFIG_FILE}: missing or bad key {exc}") from None
        share = bool(raw_config.get("share_lm_head", False))
        hidden_size, vocab_size = _infer_sizes(state, num_layers, share, base_lm_head, directory)
        config = MedusaConfig(
            medusa_num_heads=num_heads,
            medusa_num_layers=num_layers,
            hidden_size=hidden_size,
            vocab_size=vocab_size,
            base_model_name_or_path=raw_config.get("base_model_name_or_path"),
            share_lm_head=share,
        )
        heads = cls(config, base_lm_head=base_lm_head)
        try:
            heads.heads.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise TreeoptError(
                f"{directory}: weights do not match config.json: {first_line(exc)}"
            ) from None
        if dtype is not None or device is not None:
            heads.to(device=device, dtype=dtype)
        return heads


def _resolve_directory(dir_or_hub_id: str) -> Path:
    """A local folder as is; a hub id through huggingface_hub's cache (TreeoptError if absent)."""
    local = Path(dir_or_hub_id)
    if local.is_dir():
        return local
    if local.exists() or dir_or_hub_id.count("/") != 1:
        raise TreeoptError(f"Medusa heads {dir_or_hub_id!r}: no such folder (or hub id owner/name)")
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                dir_or_hub_id, allow_patterns=[CONFIG_FILE, WEIGHTS_PT, WEIGHTS_SAFETENSORS]
            )
        )
    except Exception as exc:  # offline, unknown repo, auth: all one user-facing message
        raise not_downloaded("Medusa heads", dir_or_hub_id,
                             f"are neither a local folder nor in the Hugging Face cache and "
                             f"could not be downloaded ({type(exc).__name__})") from None


# A Medusa-2 checkpoint (FasterDecoding ``medusa-1.0-*``) is a whole fine-tuned model
# whose weight files also hold the heads under STATE_DICT_PREFIX.
MODEL_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
MODEL_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def embedded_head_shards(directory: Path) -> list[Path]:
    """Model weight files in ``directory`` holding ``medusa_head.*`` tensors (Medusa-2).

    Reads only the shard index or the safetensors header (a ``.bin`` is memory-mapped),
    so finding out costs no weight reads. Empty for anything that is not Medusa-2.
    """
    for index_name in MODEL_WEIGHT_INDEXES:
        index = directory / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                names = sorted({str(file) for key, file in weight_map.items()
                                if key.startswith(STATE_DICT_PREFIX)})
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise TreeoptError(f"cannot read shard index {index}: {first_line(exc)}") \
                    from None
            return [directory / name for name in names]
    for name in MODEL_WEIGHT_FILES:
        if (directory / name).is_file():
            keys = read_weights(directory / name, keys_only=True)
            return [directory / name] if any(k.startswith(STATE_DICT_PREFIX) for k in keys) else []
    return []


def read_weights(path: Path, keys_only: bool = False, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of a safetensors/.bin file whose names start with ``prefix`` (one-line errors).

    ``keys_only``: the names mapped to None-like placeholders (safetensors header only).
    A ``.bin`` is read with ``weights_only=True``: a pickle can never run code here.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                names = [k for k in handle.keys() if k.startswith(prefix)]  # noqa: SIM118
                if keys_only:
                    return dict.fromkeys(names)  # type: ignore[arg-type]
                return {k: handle.get_tensor(k) for k in names}
        # Memory-map zip-format files (every torch.save since 1.6): a shard is read lazily.
        state = torch.load(path, map_location="cpu", weights_only=True,
                           mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # corrupt, truncated, not a weights file: all one line
        raise TreeoptError(f"cannot read weights {path}: {first_line(exc)}") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise TreeoptError(f"{path} is not a state dict (names to tensors)")
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def _load_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """The heads' state dict, FasterDecoding key layout, prefix stripped.

    Heads-only files (Medusa-1) first; else the ``medusa_head.*`` tensors of the
    model's own weight files, shards included (Medusa-2).
    """
    if (directory / WEIGHTS_SAFETENSORS).is_file():
        state = read_weights(directory / WEIGHTS_SAFETENSORS)
    elif (directory / WEIGHTS_PT).is_file():
        state = read_weights(directory / WEIGHTS_PT)
    else:
        shards = embedded_head_shards(directory)
        if not shards:
            raise TreeoptError(
                f"{directory}: no {WEIGHTS_SAFETENSORS} or {WEIGHTS_PT}, and no "
                f"{STATE_DICT_PREFIX}* tensors in the model's weight files"
            )
        state = {}
        for shard in shards:
            state.update(read_weights(shard, prefix=STATE_DICT_PREFIX))
    return {key.removeprefix(STATE_DICT_PREFIX): value for key, value in state.items()}


def _infer_sizes(
    state: dict[str, torch.Tensor],
    num_layers: int,
    share: bool,
    base_lm_head: nn.Module | None,
    directory: Path,
) -> tuple[int, int]:
    """(hidden_size, vocab_size) read off head 0's weights (or the shared lm_head)."""
    if share:
        if base_lm_head is None:
            raise TreeoptError(f"{directory}: heads share the base lm_head; pass base_lm_head")
        vocab_size, hidden_size = base_lm_head.weight.shape
        return int(hidden_size), int(vocab_size)
    key = f"0.{num_layers}.weight"
    if key not in state:
        raise TreeoptError(f"{directory}: weights lack {key} (vocabulary projection of head 0)")
    vocab_size, hidden_size = state[key].shape
    return int(hidden_size), int(vocab_size)
