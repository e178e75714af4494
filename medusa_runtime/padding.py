"""Padding token rows into one batch: the one helper every batched forward pass uses."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_rows(
    rows: Sequence[Sequence[int]], pad_id: int = 0, left: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids [B, W], mask [B, W] bool)`` for token rows of different lengths.

    ``W`` is the longest row. ``left=True`` puts the padding before each row, so every
    row ends in the last column (where generation continues); ``left=False`` puts it
    after (teacher forcing: a row's real positions then keep their column indices).
    ``mask`` is True on real tokens; pad slots hold ``pad_id``.
    """
    width = max((len(row) for row in rows), default=0)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for index, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[index, span] = torch.as_tensor(list(row), dtype=torch.long)
        mask[index, span] = True
    return ids, mask
