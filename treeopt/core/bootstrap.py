"""Confidence intervals of a measured speedup: a paired bootstrap over prompts.

A speedup is (tokens / seconds with the tree) / (tokens / seconds without), summed
over the same prompts. Resampling prompts with replacement, the same prompts for
both sides, gives the spread that comes from which prompts were decoded (the
dominant one: acceptance swings from prompt to prompt); seeded, so a report is
reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95


def speedup_interval(tokens: Sequence[float], seconds: Sequence[float],
                     base_tokens: Sequence[float], base_seconds: Sequence[float],
                     seed: int = 0, resamples: int = DEFAULT_RESAMPLES,
                     level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """``(low, high)``: the ``level`` percentile interval of the speedup over prompts.

    All four sequences hold one value per prompt, in the same prompt order. One
    prompt gives a zero-width interval at the point estimate.
    """
    arrays = [np.asarray(values, dtype=float) for values in
              (tokens, seconds, base_tokens, base_seconds)]
    count = len(arrays[0])
    if count == 0 or any(len(values) != count for values in arrays):
        raise ValueError("speedup_interval needs the same number (>= 1) of values per side")
    picks = np.random.default_rng(seed).integers(0, count, size=(resamples, count))
    sums = [values[picks].sum(axis=1) for values in arrays]
    ratios = (sums[0] / sums[1]) / (sums[2] / sums[3])
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(ratios, [tail, 1.0 - tail])
    return float(low), float(high)


__all__ = ["DEFAULT_LEVEL", "DEFAULT_RESAMPLES", "speedup_interval"]
