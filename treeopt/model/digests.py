"""Content digests of checkpoints, so profiles made apart can prove they measured the same thing.

A profile names its model and heads by what the user typed (a registry name, a
folder, a hub id), which says nothing about the bytes: two folders called
``vicuna`` may hold different weights. :func:`checkpoint_digests` hashes the
weight files and the tokenizer files; ``treeopt merge`` compares those.

Cheap by construction: a file in the Hugging Face cache is a link to a blob named
by the SHA-256 of its content (LFS files: the weights), which is used as it is;
other files are hashed once per run (a few seconds per GB).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from treeopt.errors import TreeoptError, first_line

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json",
                   "vocab.txt", "spiece.model")
_HUB_BLOB = re.compile(r"[0-9a-f]{64}")
CHUNK = 1 << 22


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes; a hub-cache blob's name when it is one (same value)."""
    resolved = path.resolve()
    if resolved.parent.name == "blobs" and _HUB_BLOB.fullmatch(resolved.name):
        return resolved.name
    digest = hashlib.sha256()
    try:
        with open(resolved, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise TreeoptError(f"cannot read {path} to digest it: {first_line(exc)}") from None
    return digest.hexdigest()


def files_digest(directory: Path, names: list[str]) -> str | None:
    """One SHA-256 over ``names`` in ``directory`` (name and content digest each); None if none."""
    if not names:
        return None
    combined = hashlib.sha256()
    for name in sorted(names):
        combined.update(f"{name}\0{file_sha256(directory / name)}\n".encode())
    return combined.hexdigest()


def weights_digest(directory: Path) -> str | None:
    """Digest of a checkpoint folder's weight files (safetensors, bin, ...), or None."""
    names = [p.name for p in directory.iterdir()
             if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]
    return files_digest(directory, names)


def tokenizer_digest(directory: Path) -> str | None:
    """Digest of a folder's tokenizer files (tokenizer.json, tokenizer.model, ...), or None."""
    return files_digest(directory, [n for n in TOKENIZER_FILES if (directory / n).is_file()])


def checkpoint_digests(model_id: str, heads_id: str | None) -> dict[str, str | None]:
    """``{"model", "tokenizer", "heads"}`` content digests for a profile's provenance.

    ``model_id``/``heads_id`` as loaded (a folder or hub id each; see
    :class:`treeopt.model.loading.LoadedMedusa`): a Medusa-2 checkpoint is its own
    heads, and a draft model is the "heads" of a draft profile. A value is None
    where there is no such file (e.g. a folder without tokenizer files).
    """
    from treeopt.model.loading import MODEL_PATTERNS, checkpoint_dir

    directory = checkpoint_dir(model_id, "model", MODEL_PATTERNS)
    model_digest = weights_digest(directory)
    heads_digest = None if heads_id is None else model_digest if heads_id == model_id else \
        weights_digest(checkpoint_dir(heads_id, "heads or draft model"))
    return {"model": model_digest, "tokenizer": tokenizer_digest(directory),
            "heads": heads_digest}


def digests_provenance(model_id: str, heads_id: str | None) -> dict[str, dict[str, str | None]]:
    """``{"digests": checkpoint_digests(...)}`` on rank 0 (the one that writes provenance);
    ``{}`` on the other ranks of a launched run, which need not read the weights twice."""
    from treeopt.model.distributed import current_world

    if not current_world().is_main:
        return {}
    return {"digests": checkpoint_digests(model_id, heads_id)}
