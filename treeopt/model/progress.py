"""Telling the user what a long step is doing, and keeping libraries quiet under ``-q``.

:func:`working` shows a spinner with the elapsed time on stderr for a step whose
length cannot be known in advance (building random weights, compiling); loops with
a known length use tqdm bars with an ETA instead. :func:`quiet_libraries` is what
``-q`` does to transformers and huggingface_hub (loading bars, warnings).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def working(description: str, enabled: bool = True) -> Iterator[None]:
    """Say ``description ...`` on stderr, then spin with the elapsed time until done.

    Nothing is shown when ``enabled`` is False. On a terminal the spinner line is
    replaced by ``description: done in N s``; elsewhere the two lines are printed.
    """
    if not enabled:
        yield
        return
    import time

    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(file=sys.stderr)
    if not console.is_terminal:
        print(f"{description} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        progress.add_task(description, total=None)
        yield
    print(f"{description}: done in {time.perf_counter() - started:.1f} s", file=sys.stderr)


def quiet_libraries() -> None:
    """Silence transformers' and huggingface_hub's progress bars, info logs and warnings.

    For ``-q``: only treeopt's own results and errors should reach the terminal.
    Affects the rest of the process.
    """
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    disable_progress_bars()
    # Deprecation notices from inside transformers' and torch's own calls: nothing a
    # treeopt user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
