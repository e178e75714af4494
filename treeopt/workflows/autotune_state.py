"""autotune's output folder: what a run records in ``autotune.state.json`` and the rules a
rerun follows (see docs/tuning.md, "autotune's output folder").

- The state names every file autotune wrote into the folder (``files``, claimed just
  before each write), so a run never overwrites a file it did not write: a folder
  holding a file autotune could write but did not record is refused, before any stage.
- Inputs given as local paths (``-m``, ``--heads``, ``-d``, ``--holdout-data``,
  ``--arch``) are compared by the digest of their content, never by how the path is
  spelled (``./heads`` and ``heads/`` are the same input; a moved folder too).
- A rerun whose settings differ only in those of :data:`REDO_FROM` redoes the stage
  that setting first affects and every later one; any other difference is refused,
  naming the flags. A state with no finished stage blocks nothing: it is replaced.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from treeopt.errors import TreeoptError
from treeopt.files.engines import FORMATS

STATE_FILE = "autotune.state.json"
STATE_FORMAT = "treeopt.autotune-state/1"
STAGES = ("profile", "build", "latency", "tune", "export", "verify", "report")
# Settings naming an input that may be a local file or folder (compared by content).
INPUT_SETTINGS = ("model", "heads", "data", "holdout_data", "arch")
# Settings a rerun may change: the first stage each affects (it and every later stage
# are redone). The tuned tree's choice decodes calibration prompts with the rounds and
# threads of verify, and only when verifying, so those redo tune onwards.
REDO_FROM = {"threads": "latency", "decode_rounds": "tune", "verify": "tune"}
# The flag of each setting (where it is not --name-with-dashes).
FLAGS = {"model": "-m/--model", "data": "-d/--data", "decode_rounds": "--rounds",
         "batches": "--batch", "contexts": "--context", "compile_step": "--compile",
         "verify": "--verify/--no-verify", "acceptance_model": "-a/--acceptance-model",
         "chat_template": "--chat-template", "warmup": "warmup (library setting)",
         "repeats": "repeats (library setting)"}
# Every name autotune may write into its folder: a file matching one of these that
# the state does not record as autotune's own is never overwritten.
WRITTEN_PATTERNS = (
    STATE_FILE, "profile.json*", "holdout-profile.json*", "calibration-prompts.json",
    "holdout-prompts.json", "built-[0-9]*.json", "latency.json", "tune.json",
    "tree-b[0-9]*.json", *(f"{name}-b[0-9]*" for name in FORMATS), "verify.json",
    "report.md", "tree.svg", "tree.dot", "curve.png", "held-out.png",
)
# Files up to this size are hashed whole; larger ones (weights) by their size and
# their first and last MiB: cheap on a 14 GB model, and a retrained file differs there.
WHOLE_HASH_BYTES = 32 << 20
EDGE_BYTES = 1 << 20


def flag_of(setting: str) -> str:
    """The command-line flag of an autotune setting (``decode_rounds`` -> ``--rounds``)."""
    return FLAGS.get(setting, "--" + setting.replace("_", "-"))


# ------------------------------------------------------------------ inputs
def is_local(value: str | None) -> bool:
    return value is not None and Path(value).exists()


def _file_digest(path: Path, digest: Any) -> None:
    size = path.stat().st_size
    digest.update(str(size).encode())
    with open(path, "rb") as handle:
        if size <= WHOLE_HASH_BYTES:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        else:
            digest.update(handle.read(EDGE_BYTES))
            handle.seek(size - EDGE_BYTES)
            digest.update(handle.read(EDGE_BYTES))


def content_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents) in name order.

    Hidden files and caches (names starting with ``.``) are left out.
    """
    digest = hashlib.sha256()
    if path.is_file():
        _file_digest(path, digest)
        return digest.hexdigest()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = item.relative_to(path)
        if any(part.startswith(".") for part in relative.parts):
            continue
        digest.update(relative.as_posix().encode() + b"\0")
        _file_digest(item, digest)
    return digest.hexdigest()


def input_identity(value: str | None) -> dict[str, Any]:
    """How a run recognises an input again: its resolved path and content digest when
    local, else the name (a registry name or hub id) as given."""
    if not is_local(value):
        return {"name": value}
    path = Path(str(value)).resolve()
    return {"path": str(path), "digest": content_digest(path)}


def same_input(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> bool:
    if "digest" in recorded or "digest" in now:
        return recorded.get("digest") == now.get("digest")
    return recorded.get("name") == now.get("name")


# ----------------------------------------------------------------- the plan
def compare(recorded: Mapping[str, Any], wanted: Mapping[str, Any],
            recorded_inputs: Mapping[str, Any], wanted_inputs: Mapping[str, Any]) -> list[str]:
    """The settings that differ: inputs by identity, every other setting by value."""
    changed = []
    for key in sorted(recorded.keys() | wanted.keys()):
        if key in INPUT_SETTINGS and key in recorded_inputs and key in wanted_inputs:
            if not same_input(recorded_inputs[key], wanted_inputs[key]):
                changed.append(key)
        elif recorded.get(key) != wanted.get(key):
            changed.append(key)
    return changed


def first_stage_to_redo(changed: Iterable[str], redo: str | None, directory: Path) -> str | None:
    """The first stage a rerun redoes (None: none), or a one-line error naming the flags
    of settings a rerun may not change."""
    changed = list(changed)
    fixed = [key for key in changed if key not in REDO_FROM]
    if fixed:
        raise TreeoptError(
            f"{directory} holds an autotune run made with other "
            f"{', '.join(flag_of(key) for key in fixed)}: use another -o, rerun with the "
            "same values, or delete the folder to start over (only --rounds, --threads and "
            "--verify/--no-verify may change on a rerun; --redo STAGE redoes a stage)")
    stages = [REDO_FROM[key] for key in changed] + ([redo] if redo else [])
    return min(stages, key=STAGES.index) if stages else None


def foreign_files(directory: Path, recorded: Iterable[str]) -> list[str]:
    """Files in ``directory`` that autotune could write but this run's state does not
    record as its own (sorted names)."""
    if not directory.is_dir():
        return []
    own = set(recorded)
    return sorted(path.name for path in directory.iterdir()
                  if path.name not in own and path.name != STATE_FILE
                  and any(fnmatch.fnmatch(path.name, pattern) for pattern in WRITTEN_PATTERNS))


def refuse_foreign_files(directory: Path, recorded: Iterable[str]) -> None:
    """One-line error when the folder holds files autotune may write but did not."""
    foreign = foreign_files(directory, recorded)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5
                                          else "")
        raise TreeoptError(
            f"{directory} holds {shown}, which autotune did not write and would overwrite: "
            "use another -o (a new or empty folder), or move those files")


__all__ = ["FLAGS", "REDO_FROM", "STAGES", "STATE_FILE", "STATE_FORMAT", "compare",
           "content_digest", "first_stage_to_redo", "flag_of", "foreign_files",
           "input_identity", "refuse_foreign_files"]
