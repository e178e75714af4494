"""The best engine knob setting per batch size: replayed tokens/step over predicted step time.

For each batch size ``b`` and knob setting ``s`` (``dynamic:S,K,N``; a chain of ``K``
is ``(K, 1, K + 1)``), predicted throughput is ``b * tokens_per_step(s) /
step_seconds(s, b)``; plain decoding gives ``b / plain_seconds(b)``. The best
setting per batch is the highest throughput (ties: fewer tokens, fewer passes);
where no setting beats plain decoding, the answer is ``None``: switch speculation
off. Pure functions; no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from treeopt.core.expansion import BeamSetting
from treeopt.errors import TreeoptError


@dataclass(frozen=True)
class KnobPoint:
    """One setting at one batch size, predicted."""

    setting: BeamSetting
    batch: int
    tokens_per_step: float
    step_seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.batch * self.tokens_per_step / self.step_seconds


@dataclass(frozen=True)
class BatchChoice:
    """Every setting scored at one batch size, and the choice (None: speculation off)."""

    batch: int
    points: list[KnobPoint]
    plain_tokens_per_second: float

    @property
    def best_point(self) -> KnobPoint:
        return max(self.points, key=lambda p: (p.tokens_per_second, -p.setting.num_tokens,
                                               -p.setting.steps))

    @property
    def best(self) -> BeamSetting | None:
        point = self.best_point
        return point.setting if point.tokens_per_second > self.plain_tokens_per_second \
            else None

    @property
    def speedup(self) -> float:
        return self.best_point.tokens_per_second / self.plain_tokens_per_second


def chain_settings(max_length: int) -> list[BeamSetting]:
    """Chains of 1..max_length drafts, as settings."""
    return [BeamSetting(k, 1, k + 1) for k in range(1, max_length + 1)]


def engine_settings(takes: str, max_steps: int, max_topk: int, max_tokens: int
                    ) -> list[BeamSetting]:
    """The knob grid an engine takes: chains only, or every ``dynamic:S,K,N`` (``K == 1``
    only with ``N = S + 1``, as SGLang forces) up to ``max_tokens`` per step."""
    if takes == "chain" or max_topk == 1:
        return chain_settings(max_steps)
    out = []
    for steps in range(1, max_steps + 1):
        out.append(BeamSetting(steps, 1, steps + 1))
        for topk in range(2, max_topk + 1):
            top = min(BeamSetting.max_tokens(steps, topk), max_tokens)
            out.extend(BeamSetting(steps, topk, n) for n in range(2, top + 1))
    return out


def choose_per_batch(rates: dict[BeamSetting, float], batches: Iterable[int],
                     step_seconds: Callable[[BeamSetting, int], float],
                     plain_seconds: Callable[[int], float]) -> list[BatchChoice]:
    """Score every setting in ``rates`` (its tokens/step) at every batch size."""
    if not rates:
        raise TreeoptError("no knob settings to score")
    out = []
    for batch in batches:
        if batch < 1:
            raise TreeoptError(f"batch sizes must be >= 1, not {batch}")
        points = [KnobPoint(s, batch, rate, step_seconds(s, batch)) for s, rate in rates.items()]
        out.append(BatchChoice(batch, points, batch / plain_seconds(batch)))
    return out
