"""Decode prompts one by one with the bundled runtime and count tokens/s: the one definition.

Every measured decoding speed in treeopt (``treeopt study``'s objective, autotune's
``verify`` stage, the benchmarks) comes from :func:`decode_speed`, so they all mean
the same thing:

    tokens/s = (new tokens - 1 per prompt) / (wall time - prefill time), summed over prompts

that is, the steady-state decoding rate with the prefill left out: the prefill (the
prompt's forward pass, which yields the first new token) costs the same whatever the
tree, so it only dilutes the difference trees make. Tokens per step is the same
tokens over the verification steps (forward passes after the prefill), which is
what ``treeopt build`` predicts.

torch and medusa_runtime are imported inside the function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# Stated in every report and file that records a measured speed.
SPEED_DEFINITION = ("tokens/s = new tokens after the first / wall time after the prefill "
                    "(prefill excluded), summed over prompts")


@dataclass(frozen=True)
class DecodeSpeed:
    """Decoding of a set of prompts: totals and per-prompt figures (prefill excluded).

    Attributes:
        tokens: new tokens after each prompt's first (the prefill's), summed.
        steps: verification steps (forward passes after the prefill), summed.
        seconds: wall time after each prompt's prefill, summed.
        outputs: each prompt's new tokens (the prefill's included), in prompt order.
        per_prompt: (tokens, steps, seconds) of each prompt, for bootstrap intervals.
    """

    tokens: int
    steps: int
    seconds: float
    outputs: list[list[int]] = field(default_factory=list)
    per_prompt: list[tuple[int, int, float]] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        """The steady-state decoding rate (see the module docstring); 0 when nothing ran."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_step(self) -> float:
        """Tokens per verification step (the prefill's token and pass left out); 1.0 when no
        step ran (plain decoding's figure)."""
        return self.tokens / self.steps if self.steps else 1.0


def decode_speed(model: Any, heads: Any, tree: Any, prompts: Sequence[Sequence[int]],
                 max_new_tokens: int, *, acceptance: Any = "greedy",
                 eos_token_id: int | None = None, compile_step: bool = False,
                 drafter: Any = None, warmup_new_tokens: int = 0,
                 on_prompt: Any = None) -> DecodeSpeed:
    """Decode each prompt (token ids) alone with ``medusa_runtime.generate``; its speed.

    ``heads`` is dropped for a one-token tree (plain decoding). ``warmup_new_tokens``
    > 0 first decodes the first prompt that long, untimed (kernels loaded, CUDA graphs
    captured). ``on_prompt()`` is called after each prompt (a progress bar's update).
    """
    from medusa_runtime.decode import generate

    heads = None if tree.num_tokens == 1 and drafter is None else heads
    options = {"acceptance": acceptance, "eos_token_id": eos_token_id,
               "compile_step": compile_step, "drafter": drafter}
    if warmup_new_tokens > 0 and prompts:
        generate(model, heads, tree, prompts[0], warmup_new_tokens, **options)
    outputs, per_prompt = [], []
    for prompt in prompts:
        result = generate(model, heads, tree, prompt, max_new_tokens, **options)
        per_prompt.append((len(result.tokens) - 1, result.verification_steps,
                           result.wall_time_s - result.prefill_s))
        outputs.append(list(result.tokens))
        if on_prompt is not None:
            on_prompt()
    return DecodeSpeed(tokens=sum(p[0] for p in per_prompt), steps=sum(p[1] for p in per_prompt),
                       seconds=sum(p[2] for p in per_prompt), outputs=outputs,
                       per_prompt=per_prompt)
