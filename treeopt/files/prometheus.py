"""vLLM's speculative-decoding counters in Prometheus text, read as a chain profile.

A running vLLM server exports (``/metrics``, vllm-project/vllm
``vllm/v1/spec_decode/metrics.py@ee4ceaa``, class ``SpecDecodingProm``) the counters
``vllm:spec_decode_num_drafts`` (draft steps) and
``vllm:spec_decode_num_accepted_tokens_per_pos`` (label ``position``: steps whose
draft at that 0-based position was accepted; Prometheus text adds ``_total``).
Greedy chain acceptance is a prefix, so ``accepted[p] / drafts`` is the chance a
step accepts at least ``p + 1`` drafts, and a chain of ``K <= `` the deployed length
emits ``1 + sum_{p < K} accepted[p] / drafts`` tokens per step. Counts from every
label set (engine, model) are summed. Pure text parsing; no client library needed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from treeopt.errors import TreeoptError

DRAFTS = "vllm:spec_decode_num_drafts"
ACCEPTED_PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos"
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_POSITION = re.compile(r'position="(\d+)"')


@dataclass(frozen=True)
class ChainCounters:
    """Draft steps and, per draft position, the steps that accepted it."""

    drafts: float
    accepted_per_position: tuple[float, ...]

    def tokens_per_step(self, length: int) -> float:
        """Tokens per step of a chain of ``length`` drafts (the root included)."""
        if not 0 <= length <= len(self.accepted_per_position):
            raise TreeoptError(f"the counters cover chains up to {len(self.accepted_per_position)}"
                               f" drafts (the deployed length), not {length}")
        return 1.0 + sum(self.accepted_per_position[:length]) / self.drafts


def looks_like_vllm_metrics(text: str) -> bool:
    return DRAFTS in text and ACCEPTED_PER_POS in text


def parse_vllm_spec_counters(text: str, where: str = "metrics") -> ChainCounters:
    """The counters in Prometheus text exposition ``text``; one-line TreeoptError naming
    ``where`` when they are missing or inconsistent."""
    drafts = 0.0
    per_position: dict[int, float] = {}
    for line in text.splitlines():
        found = _SAMPLE.match(line.strip())
        if not found or line.startswith("#"):
            continue
        name, labels, value = found.group(1), found.group(2) or "", found.group(3)
        name = name.removesuffix("_total")
        try:
            number = float(value)
        except ValueError:
            continue
        if name == DRAFTS:
            drafts += number
        elif name == ACCEPTED_PER_POS:
            position = _POSITION.search(labels)
            if position is None:
                raise TreeoptError(f"{where}: {ACCEPTED_PER_POS} without a position label")
            index = int(position.group(1))
            per_position[index] = per_position.get(index, 0.0) + number
    if drafts <= 0 or not per_position:
        raise TreeoptError(f"{where}: no {DRAFTS} and {ACCEPTED_PER_POS} counts (is it a vLLM "
                           "server's /metrics with speculative decoding on?)")
    accepted = tuple(per_position.get(p, 0.0) for p in range(max(per_position) + 1))
    if any(b > a for a, b in zip((drafts, *accepted), accepted, strict=False)):
        raise TreeoptError(f"{where}: accepted counts must not rise with position (nor pass "
                           "the drafts): greedy acceptance is a prefix")
    return ChainCounters(drafts, accepted)
