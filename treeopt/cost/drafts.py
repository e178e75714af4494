"""The roofline cost of a draft-model step: the draft's passes, then the verification.

The runtime (``medusa_runtime.drafter``) drafts a tree of depth ``D`` in ``D``
passes of the draft model: the first feeds a fixed block of ``D + 2`` tokens (the
accepted path, re-fed so the draft's cache follows the target, and the new root),
each later one the nodes of one level that have children. Then the target verifies
the tree's ``num_tokens`` tokens in one pass, with no Medusa heads. Each pass is
predicted by :func:`treeopt.cost.roofline.predict_step_latency` from its model's
shape; ``pass_overhead_s`` adds a fixed cost per draft pass (framework and launch
time that the roofline leaves out, which dominates for a tiny draft). A device profile
with fitted host terms (``layer_overhead_us``, ``pass_overhead_us``,
``token_layer_overhead_us``; see :func:`treeopt.cost.roofline.fit_pass_overheads`)
already charges them to every pass, the draft's and the verification's, so leave
``pass_overhead_s`` at 0 with such a profile.
"""

from __future__ import annotations

from dataclasses import dataclass

from treeopt.core.tree import Tree
from treeopt.cost.arch import ArchShape
from treeopt.cost.gpus import GPUSpec
from treeopt.cost.roofline import DeviceProfile, predict_step_latency


def draft_pass_tokens(tree: Tree) -> list[int]:
    """Tokens each draft pass of ``tree`` feeds: ``[D + 2, m_1, ..., m_{D-1}]``.

    ``m_d``: the nodes at depth ``d`` with children. Empty for the root-only tree.
    """
    if tree.depth == 0:
        return []
    parents = {path[:-1] for path in tree.paths}
    per_depth = [sum(1 for path in parents if len(path) == depth)
                 for depth in range(1, tree.depth)]
    return [tree.depth + 2, *per_depth]


@dataclass(frozen=True)
class DraftStepCost:
    """Predicted seconds of one draft-model step, and of a plain decoding step."""

    draft_s: float  # all draft passes
    verify_s: float  # the target's verification of the tree
    plain_s: float  # the target's plain decoding step (one token)

    @property
    def step_s(self) -> float:
        return self.draft_s + self.verify_s

    @property
    def overhead(self) -> float:
        """Step time over a plain decoding step's."""
        return self.step_s / self.plain_s


def predict_draft_step(
    target: ArchShape, draft: ArchShape, tree: Tree, gpu: GPUSpec | None, batch: int = 1,
    context: int = 1024, dtype_bytes: float = 2, device_profile: DeviceProfile | None = None,
    pass_overhead_s: float = 0.0,
) -> DraftStepCost:
    """Predicted (draft, verification, plain) seconds of a step drafting ``tree``."""
    def seconds(arch: ArchShape, tokens: int) -> float:
        return predict_step_latency(arch, gpu, batch, context, tokens, dtype_bytes,
                                    device_profile, medusa_heads=0)

    passes = draft_pass_tokens(tree)
    draft_s = sum(seconds(draft, tokens) + pass_overhead_s for tokens in passes)
    return DraftStepCost(draft_s, seconds(target, tree.num_tokens), seconds(target, 1))


def beam_pass_tokens(steps: int, topk: int) -> list[int]:
    """Tokens each draft pass of ``dynamic:S,K,N`` feeds per sequence: ``[S + 2, K, ..., K]``.

    The first pass re-feeds the accepted path and the new root (a block of ``S + 2``, as
    the runtime's draft model does); each of the ``S - 1`` deeper passes feeds the ``K``
    frontier nodes. A chain of ``K`` (``topk`` 1) is :func:`draft_pass_tokens` of it.
    """
    return [steps + 2, *([topk] * (steps - 1))] if steps else []


def predict_beam_step(
    target: ArchShape, draft: ArchShape, steps: int, topk: int, num_tokens: int,
    gpu: GPUSpec | None, batch: int = 1, context: int = 1024, dtype_bytes: float = 2,
    device_profile: DeviceProfile | None = None,
) -> DraftStepCost:
    """Predicted seconds of one ``dynamic:S,K,N`` step: ``S`` draft passes, then the
    target's verification of ``N`` tokens per sequence."""
    def seconds(arch: ArchShape, tokens: int) -> float:
        return predict_step_latency(arch, gpu, batch, context, tokens, dtype_bytes,
                                    device_profile, medusa_heads=0)

    draft_s = sum(seconds(draft, tokens) for tokens in beam_pass_tokens(steps, topk))
    return DraftStepCost(draft_s, seconds(target, num_tokens), seconds(target, 1))
