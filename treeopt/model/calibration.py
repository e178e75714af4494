"""Calibration prompts: read the files users already have, as they are.

Accepted sources (picked by content and extension, see :func:`read_prompts`):

- AlpacaEval ``alpaca_eval.json``: a JSON list of objects with ``instruction``.
- FastChat MT-Bench ``question.jsonl``: one object a line with ``turns`` (a list of
  strings). By default only the first turn is a prompt: the later turns ask about
  "your previous response", which means nothing without the model's first answer
  in the context. ``turns="each"`` makes every turn its own prompt.
- JSONL (or a JSON list) of objects with ``prompt`` or ``text`` (or ``instruction``).
- Plain text: one prompt per non-blank line.
- A Hugging Face dataset name (``owner/name`` or ``owner/name:split``) when the
  ``datasets`` package is installed and the dataset is in its local cache, or a
  local dataset folder (data files ``datasets.load_dataset`` reads, e.g. a
  downloaded dataset repository; ``FOLDER:split`` picks a split).

Every problem (missing file, no prompts, unknown layout) is a one-line TreeoptError.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from treeopt.errors import TreeoptError, first_line
from treeopt.files.jsondoc import parse_json, read_text

# Keys that hold a prompt in an object, in the order they are tried.
PROMPT_KEYS = ("prompt", "text", "instruction")
TURN_MODES = ("first", "each")
DEFAULT_SPLIT = "train"


def _prompts_from_object(obj: Any, where: str, turns: str) -> list[str]:
    """The prompt(s) of one record; raises naming ``where`` if it holds none."""
    if isinstance(obj, str):
        return [obj]
    if not isinstance(obj, dict):
        raise TreeoptError(f"{where}: expected a JSON object or string, not {type(obj).__name__}")
    if "turns" in obj:
        found = obj["turns"]
        if not isinstance(found, list) or not all(isinstance(t, str) for t in found):
            raise TreeoptError(f"{where}: \"turns\" must be a list of strings")
        return list(found[:1]) if turns == "first" else list(found)
    for key in PROMPT_KEYS:
        if key in obj:
            if not isinstance(obj[key], str):
                raise TreeoptError(f"{where}: \"{key}\" must be a string")
            return [obj[key]]
    raise TreeoptError(
        f"{where}: no prompt field (expected one of \"turns\", "
        + ", ".join(f'"{key}"' for key in PROMPT_KEYS) + ")"
    )


def _read_file(path: Path, turns: str) -> list[str]:
    # The files layer's bounds (size, UTF-8, JSON depth): a hostile file is one line.
    text = read_text(path, "calibration data")
    suffix = path.suffix.lower()
    stripped = text.lstrip()
    if suffix == ".jsonl" or (suffix not in (".txt", ".json") and stripped.startswith("{")):
        prompts: list[str] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            record = parse_json(line, f"{path} line {number}", strict_numbers=False)
            prompts.extend(_prompts_from_object(record, f"{path} line {number}", turns))
        return prompts
    if suffix == ".json" or (suffix != ".txt" and stripped.startswith("[")):
        data = parse_json(text, str(path), strict_numbers=False)
        if not isinstance(data, list):
            raise TreeoptError(f"{path}: expected a JSON list of prompts (AlpacaEval layout)")
        prompts = []
        for index, record in enumerate(data):
            prompts.extend(_prompts_from_object(record, f"{path} item {index}", turns))
        return prompts
    return [line.strip() for line in text.splitlines() if line.strip()]


def _name_and_split(source: str) -> tuple[str, str]:
    """``"owner/name:split"`` -> ``("owner/name", "split")``; no colon: an empty split."""
    name, colon, split = source.rpartition(":")
    return (name, split) if colon else (source, "")


def _read_hf_dataset(name: str, turns: str) -> list[str]:
    """Rows of a cached Hugging Face dataset (``owner/name[:split]``), offline only."""
    try:
        import datasets
    except ImportError:
        raise TreeoptError(
            f"calibration data {name!r} is not a file, and reading it as a Hugging Face "
            "dataset needs the 'datasets' package (pip install datasets)"
        ) from None
    dataset_name, split = _name_and_split(name)
    try:
        rows = datasets.load_dataset(dataset_name, split=split or DEFAULT_SPLIT)
    except Exception as exc:  # datasets raises many types; all mean "not available"
        hint = ("pass a folder of data files that datasets reads, or a file"
                if Path(dataset_name).is_dir() else "download it first or pass a file")
        raise TreeoptError(
            f"cannot load Hugging Face dataset {dataset_name!r} (split "
            f"{split or DEFAULT_SPLIT!r}): {first_line(exc)}; {hint}"
        ) from None
    prompts: list[str] = []
    for index, row in enumerate(rows):
        prompts.extend(_prompts_from_object(dict(row), f"{name} row {index}", turns))
    return prompts


def read_prompts(
    source: str | Path,
    max_prompts: int | None = None,
    seed: int = 0,
    turns: str = "first",
) -> list[str]:
    """The calibration prompts in ``source``, non-empty, in file order.

    With ``max_prompts`` a seeded random subset of that size is returned (still in
    file order), so the same ``seed`` always picks the same prompts. Raises
    TreeoptError if the source is unreadable, has an unknown layout or holds no
    non-blank prompt.
    """
    if turns not in TURN_MODES:
        raise TreeoptError(f"turns must be one of {', '.join(TURN_MODES)}, not {turns!r}")
    if max_prompts is not None and max_prompts < 1:
        raise TreeoptError(f"--max-prompts must be >= 1, not {max_prompts}")
    path = Path(source)
    if path.is_dir() or Path(_name_and_split(str(source))[0]).is_dir():
        prompts = _read_hf_dataset(str(source), turns)
    elif path.exists():
        prompts = _read_file(path, turns)
    elif path.suffix.lower() in (".json", ".jsonl", ".txt") or "/" not in str(source):
        raise TreeoptError(f"calibration data {source} does not exist")
    else:
        prompts = _read_hf_dataset(str(source), turns)
    prompts = [prompt for prompt in prompts if prompt.strip()]
    if not prompts:
        raise TreeoptError(f"calibration data {source} holds no prompts")
    if max_prompts is not None and max_prompts < len(prompts):
        keep = sorted(random.Random(seed).sample(range(len(prompts)), max_prompts))
        prompts = [prompts[index] for index in keep]
    return prompts


def split_held_out(
    prompts: Sequence[str], held_out_fraction: float, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split prompts into (train, held_out), seeded; both non-empty when possible.

    ``held_out_fraction`` of the prompts (at least one when there are two or more)
    go to the held-out part; the order within each part is the input order.
    """
    if not 0.0 <= held_out_fraction < 1.0:
        raise TreeoptError(f"held-out fraction must be in [0, 1), not {held_out_fraction}")
    count = round(len(prompts) * held_out_fraction)
    if held_out_fraction > 0 and len(prompts) >= 2:
        count = min(max(count, 1), len(prompts) - 1)
    held = set(random.Random(seed).sample(range(len(prompts)), count))
    train = [p for i, p in enumerate(prompts) if i not in held]
    return train, [p for i, p in enumerate(prompts) if i in held]


def encode_prompts(tokenizer: Any, prompts: Sequence[str], chat_template: bool = True) -> list[
    list[int]
]:
    """Token ids of each prompt as the model sees it at inference.

    When ``chat_template`` and the tokenizer has one, each prompt is one user turn
    with the generation prompt appended (what a chat model sees before answering);
    otherwise it is the plain text with the tokenizer's special tokens (BOS).
    """
    use_template = chat_template and getattr(tokenizer, "chat_template", None)
    encoded: list[list[int]] = []
    for prompt in prompts:
        if use_template:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
            )
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding
                ids = ids["input_ids"]
        else:
            ids = tokenizer(prompt).input_ids
        encoded.append([int(token) for token in ids])
    return encoded


