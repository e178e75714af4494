"""The one table of dtype names: short (``bf16``) and long (torch's ``bfloat16``) names, bytes.

Every layer that takes a dtype name (the roofline, latency files, model loading,
latency measurement) reads it here, so ``bf16`` and ``bfloat16`` are accepted
and refused alike everywhere.
"""

from __future__ import annotations

from treeopt.errors import ParameterError, TreeoptError

DTYPE_BYTES: dict[str, int] = {"bf16": 2, "fp16": 2, "fp32": 4, "fp8": 1}
# The names latency files and torch use for the same dtypes.
DTYPE_LONG_NAMES: dict[str, str] = {
    "bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp8": "float8_e4m3fn",
}
DTYPE_SHORT_NAMES: dict[str, str] = {
    **{short: short for short in DTYPE_LONG_NAMES},
    **{long: short for short, long in DTYPE_LONG_NAMES.items()},
}
# What a model can be loaded and timed in (fp8 exists only for predictions).
LOADABLE_SHORT_NAMES = ("bf16", "fp16", "fp32")


def short_dtype(dtype: str) -> str:
    """``bf16`` or ``bfloat16`` -> ``bf16`` (any case); one-line error for an unknown name."""
    try:
        return DTYPE_SHORT_NAMES[dtype.lower()]
    except KeyError:
        raise TreeoptError(
            f"unknown dtype {dtype!r} (choose from {', '.join(DTYPE_SHORT_NAMES)})"
        ) from None


def canonical_dtype(dtype: str) -> str:
    """torch's name for a dtype given either way: ``bf16`` -> ``bfloat16``."""
    return DTYPE_LONG_NAMES[short_dtype(dtype)]


def dtype_bytes_of(dtype: str) -> int:
    """Bytes per element of a dtype name (``bf16`` or ``bfloat16``); one-line error if unknown."""
    return DTYPE_BYTES[short_dtype(dtype)]


def loadable_dtype(dtype: str, parameter: str = "dtype") -> str:
    """torch's name of a dtype a model can be loaded in (bf16, fp16, fp32, either spelling)."""
    short = short_dtype(dtype)
    if short not in LOADABLE_SHORT_NAMES:
        raise ParameterError(parameter, f"must be {', '.join(LOADABLE_SHORT_NAMES)} for a real "
                             f"model, not {dtype} (fp8 only for predictions)")
    return DTYPE_LONG_NAMES[short]
