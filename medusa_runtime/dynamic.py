"""Dynamic per-step trees: every step verifies the ``size`` paths the heads rate best now.

The policy is :mod:`treeopt.optimize.dynamic`'s, run on the device: each candidate
path of a fixed *pool* (a tree holding every path the policy could ever choose at
this size) gets the sum of its calibrated log head probabilities; the root and the
``size - 1`` best paths (ties to the canonically earlier) are kept, always a valid
tree, parents first. The chosen tree's mask, position offsets, tokens and retrieve
table are gathered from the pool's static buffers with index tensors: fixed shapes,
no host sync, so the step compiles with no graph break and captures as a CUDA graph
like the static one. Greedy verification stays lossless whatever tree is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medusa_runtime.buffers import PAD, tree_buffers
from medusa_runtime.decode import Acceptance, TreeDecoder
from medusa_runtime.drafter import DraftSession, PerStepLayout
from medusa_runtime.heads import MedusaHeads
from treeopt.core.tree import Tree
from treeopt.errors import TreeoptError


@dataclass(frozen=True, eq=False)
class DynamicTree:
    """A per-step tree policy: ``size`` tokens a step (root included) chosen from ``pool``.

    ``calibration`` ``[D, G]``: head ``d + 1``'s calibrated value of a probability ``p``
    is ``calibration[d, round(p * (G - 1))]`` (see ``treeopt.optimize.dynamic``);
    ``pool`` must hold every path the policy can pick at ``size``
    (``treeopt.optimize.dynamic.candidate_pool``), in canonical order.
    """

    pool: Tree
    size: int
    calibration: torch.Tensor

    def __post_init__(self) -> None:
        if self.pool.depth < 1 or not 2 <= self.size <= self.pool.num_tokens:
            raise TreeoptError(f"a dynamic tree of {self.size} tokens needs a pool of at least "
                               f"that many, not {self.pool.num_tokens}")
        if self.calibration.dim() != 2 or self.calibration.shape[0] < self.pool.depth:
            raise TreeoptError(f"calibration must be [heads >= {self.pool.depth}, grid], "
                               f"not {tuple(self.calibration.shape)}")

    @property
    def depth(self) -> int:
        return self.pool.depth

    @property
    def num_heads(self) -> int:
        return self.pool.num_heads

    @property
    def num_tokens(self) -> int:
        return self.size

    def heads_session(self, heads: MedusaHeads | None, batch_size: int,
                      device: torch.device) -> DynamicHeadsSession:
        """The drafting session running this policy with ``heads`` (the decoder asks
        ``MedusaHeadsDrafter`` for it)."""
        return DynamicHeadsSession(heads, self, batch_size, device)


# The root's value: above every path's (log values are <= 0), so it is always kept.
ROOT_VALUE = 1.0


class DynamicHeadsSession(DraftSession):
    """Medusa heads choosing a :class:`DynamicTree`'s ``size`` paths every step."""

    def __init__(self, heads: MedusaHeads | None, policy: DynamicTree, batch_size: int,
                 device: torch.device) -> None:
        pool, size, depth = tree_buffers(policy.pool).to(device), policy.size, policy.depth
        self.heads, self.pool, self.size, self.depth = heads, pool, size, depth
        self.log_calibration = policy.calibration[:depth].to(device, torch.float32) \
            .clamp_min(1e-6).log()  # floor: treeopt.optimize.dynamic.MIN_CALIBRATED
        nodes = [(), *policy.pool.paths]
        ranks = torch.full((len(nodes), max(depth, 1)), PAD, dtype=torch.long)
        ancestry = torch.full((len(nodes), depth + 1), PAD, dtype=torch.long)
        index = {path: i for i, path in enumerate(nodes)}
        for i, path in enumerate(nodes):
            ranks[i, : len(path)] = torch.tensor(path, dtype=torch.long)
            for length in range(len(path) + 1):
                ancestry[i, length] = index[path[:length]]
        self.pool_ranks = ranks.to(device)  # [M, D]
        self.pool_ancestry = ancestry.to(device)  # [M, D + 1]: each node's path, root first
        self.per_step = PerStepLayout(batch_size, size, depth, device)
        self.tokens = self.per_step.tokens
        self.chosen_nodes = torch.zeros((batch_size, size), dtype=torch.long, device=device)
        self.positions = torch.arange(size, device=device)

    def layout(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.per_step.mask, self.per_step.offsets, self.per_step.retrieve

    def state(self) -> list[torch.Tensor]:
        return [*self.per_step.tensors(), self.chosen_nodes]

    def _path_values(self, head_probs: torch.Tensor) -> torch.Tensor:
        """``[B, M]`` summed calibrated log values of every pool path (root: ROOT_VALUE)."""
        grid = self.log_calibration.shape[1]
        cells = (head_probs.float() * (grid - 1)).round().long().clamp(0, grid - 1)  # [B, D, k]
        depth = torch.arange(cells.shape[1], device=cells.device)[None, :, None]
        log_values = self.log_calibration[depth, cells]  # [B, D, k]
        ranks = self.pool_ranks  # [M, D]
        per_depth = log_values[:, torch.arange(ranks.shape[1], device=ranks.device)[None, :],
                               ranks.clamp(min=0)]  # [B, M, D]
        values = per_depth.masked_fill(ranks[None] < 0, 0.0).sum(dim=-1)
        values[:, 0] = ROOT_VALUE
        return values

    def next_tree(self, root: torch.Tensor, hidden: torch.Tensor) -> None:
        batch, depth = root.shape[0], self.depth
        head_logits = self.heads(hidden, num_heads=depth).reshape(depth, batch, -1)
        top = torch.softmax(head_logits.float(), dim=-1).topk(self.pool.top_k, dim=-1)
        flat = torch.cat([root.view(batch, 1), top.indices.transpose(0, 1).reshape(batch, -1)],
                         dim=1)
        pool_tokens = flat[:, self.pool.candidate_indices]  # [B, M]
        values = self._path_values(top.values.transpose(0, 1))
        # Stable: equal values keep pool (canonical) order, so parents precede children.
        order = torch.sort(-values, dim=1, stable=True).indices[:, : self.size]
        chosen = order.sort(dim=1).values  # [B, N] pool nodes, canonical order, root first
        layout = self.per_step
        self.chosen_nodes.copy_(chosen)
        layout.tokens.copy_(pool_tokens.gather(1, chosen))
        layout.offsets.copy_(self.pool.position_offsets[chosen])
        layout.mask.copy_(self.pool.attention_mask[chosen[:, :, None], chosen[:, None, :]])
        # Each chosen node's path, renumbered from pool nodes to positions in the step.
        position_of = torch.full_like(pool_tokens, PAD).scatter(
            1, chosen, self.positions.expand(batch, -1))
        paths = self.pool_ancestry[chosen]  # [B, N, D + 1]
        renumbered = position_of.gather(1, paths.clamp(min=0).flatten(1)).view(paths.shape)
        layout.retrieve.copy_(renumbered.masked_fill(paths < 0, PAD))


class DynamicTreeDecoder(TreeDecoder):
    """A :class:`TreeDecoder` running a :class:`DynamicTree` with Medusa heads (the same as
    ``TreeDecoder(model, heads, policy, ...)``; ``chosen_nodes`` shows the step's pick)."""

    def __init__(self, model: nn.Module, heads: MedusaHeads | None, policy: DynamicTree,
                 max_cache_len: int, acceptance: Acceptance = "greedy", batch_size: int = 1,
                 compile_step: bool = False) -> None:
        super().__init__(model, heads, policy, max_cache_len, acceptance=acceptance,
                         batch_size=batch_size, compile_step=compile_step)

    @property
    def chosen_nodes(self) -> torch.Tensor:
        """``[B, size]``: the pool nodes of the tree laid out last, canonical order."""
        return self.draft.chosen_nodes
