"""Options and checks shared by the verbs: one definition each, so verbs agree.

typer callbacks here check an option when the command line is parsed, before any
work, so a bad second output never costs a long run or leaves the first written.
Nothing here imports torch.
"""

from __future__ import annotations

import math
import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from treeopt.core.atomic import check_output_path
from treeopt.errors import TreeoptError
from treeopt.files.curve_file import curve_suffix
from treeopt.optimize.acceptance_models import ACCEPTANCE_MODELS
from treeopt.optimize.build import ENGINES, WEIGHTINGS

# ctx.meta key: the stage a long verb is in, for the line Ctrl-C prints (treeopt.cli.app).
STAGE_KEY = "treeopt.stage"

# typer choices, made from the API's own tuples so the two never drift apart.
AcceptanceChoice = Enum("AcceptanceChoice", {name: name for name in ACCEPTANCE_MODELS}, type=str)
WeightingChoice = Enum("WeightingChoice", {name: name for name in WEIGHTINGS}, type=str)
EngineChoice = Enum("EngineChoice", {name: name for name in ENGINES}, type=str)
# tune --engine also takes the knob targets (treeopt.files.engines.KNOB_TARGETS).
TuneEngineChoice = Enum("TuneEngineChoice", {name: name for name in (
    *ENGINES, "sglang", "vllm-spec", "trtllm-pytorch")}, type=str)


ProfileOption = Annotated[
    str,
    typer.Option(
        "--profile", "-p",
        help=(
            "Acceptance profile: a treeopt.profile/1 file or a shipped name "
            "(vicuna-7b, vicuna-13b, vicuna-33b). Measure your own with treeopt profile."
        ),
    ),
]
HoldoutOption = Annotated[
    float | None,
    typer.Option(
        "--holdout",
        help=(
            "Split the profile by prompt: this fraction of prompts, strictly between 0 and 1, "
            "is held out (needs a measured profile with per-prompt groups). build uses the "
            "other part; eval scores on the held-out part."
        ),
    ),
]
def quiet_callback(value: bool) -> bool:
    """``-q``: silence transformers' and huggingface_hub's loading bars and warnings too."""
    if value:
        from treeopt.model.progress import quiet_libraries

        quiet_libraries()
    return value


QuietOption = Annotated[bool, typer.Option(
    "--quiet", "-q", callback=quiet_callback,
    help="No progress bars, and no loading bars or warnings from transformers.")]
SeedOption = Annotated[
    int, typer.Option("--seed", help="Seed of the prompt split (same seed = same split).")
]
# One device rule for every verb that runs a model.
DeviceOption = Annotated[str, typer.Option(
    "--device",
    help="Torch device: auto (cuda when a GPU is visible, else cpu), cpu, cuda, cuda:1, mps.")]
# One dtype rule: the checkpoint's own unless asked.
LoadDtypeOption = Annotated[str, typer.Option(
    "--dtype", help="auto (the checkpoint's own dtype), bf16, fp16 or fp32.")]
DATA_HELP = ("Calibration prompts: AlpacaEval alpaca_eval.json (instruction), FastChat "
             "MT-Bench question.jsonl (turns), JSONL with prompt/text, plain text (one prompt "
             "a line), or a cached Hugging Face dataset owner/name[:split] (needs `datasets`).")
DataOption = Annotated[str, typer.Option("--data", "-d", help=DATA_HELP)]
# For a verb that still takes an old name of -d/--data (hidden), so -d itself is optional.
OptionalDataOption = Annotated[str | None, typer.Option("--data", "-d", help=DATA_HELP)]
DraftModelOption = Annotated[
    str | None,
    typer.Option(
        "--draft-model",
        help="Draft model (folder or hub id) with the target's tokenizer: speculative decoding "
        "by a small causal LM instead of Medusa heads.",
    ),
]


# ------------------------------------------------------------------ callbacks
def output_file(value: Path | None) -> Path | None:
    """Check an output file option (see :func:`check_output_path`); None passes."""
    return None if value is None else check_output_path(value)


def output_file_or_stdout(value: Path | None) -> Path | None:
    """Like :func:`output_file`, for options whose default is stdout: ``-`` means stdout."""
    return None if value is None or os.fspath(value) == "-" else check_output_path(value)


def output_folder(value: Path | None) -> Path | None:
    """Check an output folder option: an existing folder, or a new one in an existing folder."""
    if value is None:
        return None
    try:
        if value.exists() and not value.is_dir():
            raise TreeoptError(f"cannot write into {value}: it is a file, give a folder")
        if not value.exists() and not value.parent.is_dir():
            raise TreeoptError(f"cannot create folder {value}: {value.parent} does not exist")
    except OSError as exc:
        raise TreeoptError(f"cannot write into {value}: {exc.strerror or exc}") from None
    return value


def curve_file(value: Path | None) -> Path | None:
    """Check a ``--curve`` output option (.json or .csv)."""
    if value is not None:
        curve_suffix(check_output_path(value))
    return value


def plot_file(value: Path | None) -> Path | None:
    """Check a ``--plot`` file option (folder, extension)."""
    if value is not None:
        from treeopt.pictures.plots import plot_format

        plot_format(value)
    return value


def picture_file(value: Path | None) -> Path | None:
    """Check a picture output option (folder, extension)."""
    if value is not None:
        from treeopt.pictures.render import output_format

        output_format(check_output_path(value))
    return value


def finite_number(value: float, option: str, low: float = -math.inf,
                  high: float = math.inf) -> float:
    """Check a float option is a finite number in ``[low, high]`` (NaN and inf refused)."""
    if not (math.isfinite(value) and low <= value <= high):
        bounds = f" in [{low:g}, {high:g}]" if math.isfinite(high) else (
            f" >= {low:g}" if math.isfinite(low) else "")
        raise TreeoptError(f"{option} must be a finite number{bounds}, not {value}")
    return value


# -------------------------------------------------------------------- parsing
def parse_int_list(text: str, option: str) -> list[int]:
    """``"1,4,16"`` -> [1, 4, 16], sorted and unique; one-line error naming ``option``."""
    from treeopt.cost.predict import check_sizes

    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            values.append(int(part))
        except ValueError:
            raise TreeoptError(
                f"{option} takes comma-separated integers like 1,4,16, not {text!r}"
            ) from None
    return check_sizes(values, option)


# --------------------------------------------------------------------- tables
def print_table(table: object, *, err: bool = False) -> None:
    """Print a rich table whole: the console is widened to the table's natural width, so
    no cell is cut to "0.0…" at 80 columns or in a pipe (a wide table wraps in the
    terminal instead of losing digits).
    """
    import sys

    from rich.console import Console
    from rich.measure import Measurement

    stream = sys.stderr if err else sys.stdout
    console = Console(file=stream)
    unbounded = console.options.update(max_width=10_000)
    title, table.title = table.title, None  # type: ignore[attr-defined]  # a title wraps
    needed = Measurement.get(console, unbounded, table).maximum  # type: ignore[arg-type]
    table.title = title  # type: ignore[attr-defined]
    if needed > console.width:
        console = Console(file=stream, width=needed)
    console.print(table)
