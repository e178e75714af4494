"""The engine-style dynamic tree ``dynamic:S,K,N`` built on the device every step.

EAGLE-2/3's and SGLang's construction (EAGLE repo ``eagle/model/cnets.py``
``Model.topK_genrate``; SGLang ``python/sglang/srt/speculative/eagle_utils.py``
``select_top_k_tokens`` / ``organize_draft_results``), as treeopt's shared spec
states it (``S`` steps, top-``K``, ``N`` tokens *including the root*):

1. level 1: the drafter's top-``K`` tokens at the root, score = probability
   (softmax of the drafter's logits, temperature 1);
2. levels ``2 .. S``: the ``K`` frontier nodes are expanded ``K`` ways each, score =
   parent's score x child's probability; all ``K * K`` become candidates and the top
   ``K`` of this level form the next frontier;
3. of all ``K + (S - 1) K^2`` candidates (indexed level by level, frontier-rank-major,
   child-rank-minor) the ``N - 1`` best by score are verified with the root, ties to
   the lower index.

Scores are products of probabilities, so a child never outscores its parent and,
with ties going to the lower index (a parent's index is always lower than its
children's), the ``N - 1`` best are always a closed tree: a stable sort on the
score is the greedy "skip a node whose parent is not selected" rule of the spec.
Everything is fixed-shape tensor work (no host sync), so it compiles with no graph
break and runs inside a captured step. :func:`build_beam_tree` is the function a
replay (or a test) calls with its own ``expand``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from medusa_runtime.buffers import PAD
from treeopt.core.expansion import BeamSetting, parse_beam_setting


class BeamTree(BeamSetting):
    """``dynamic:S,K,N`` as the runtime decodes it: ``steps`` drafter passes, beam width
    and children ``top_k``, ``tokens`` verified a step including the root (see the module
    doc). One concept with the replay's :class:`treeopt.core.expansion.BeamSetting`: the
    same syntax, bounds and errors."""

    @classmethod
    def parse(cls, text: str) -> BeamTree | None:
        """``dynamic:S,K,N`` -> a BeamTree; None for any other text (``dynamic:N`` too)."""
        setting = parse_beam_setting(text.strip())
        return None if setting is None else cls(setting.steps, setting.topk,
                                                setting.num_tokens)

    @property
    def top_k(self) -> int:
        return self.topk

    @property
    def tokens(self) -> int:
        return self.num_tokens

    @property
    def depth(self) -> int:
        """The deepest node a step can verify (a chain of one node per level)."""
        return min(self.steps, self.tokens - 1)

    @property
    def num_heads(self) -> int:
        return self.steps

    @property
    def num_candidates(self) -> int:
        return self.top_k + (self.steps - 1) * self.top_k ** 2

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class BeamResult:
    """One step's tree: ``tokens [B, N]`` (root first, then the chosen candidates in
    candidate order, so parents precede children), ``mask [B, N, N]`` (ancestor or
    self), ``offsets [B, N]`` (depths), ``retrieve [B, N, D + 1]`` (each node's path
    from the root, PAD after it) and ``chosen [B, N - 1]`` (candidate indices)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    offsets: torch.Tensor
    retrieve: torch.Tensor
    chosen: torch.Tensor


# expand(level, frontier_tokens [B, K] (target ids), parent_rank [B, K]) -> the drafter's
# probabilities after each frontier node [B, K, V_draft]. ``parent_rank[b, i]``: the rank
# of node i's parent in the previous frontier (level 2: all 0, the root).
Expand = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def _top(probs: torch.Tensor, top_k: int,
         to_target: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(probabilities, target token ids)`` of the ``top_k`` most likely, best first."""
    top = probs.topk(top_k, dim=-1)
    return top.values, to_target(top.indices)


def _best_first(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` highest ``scores [B, C]``, ties to the lower index."""
    return torch.sort(-scores, dim=-1, stable=True).indices[:, :count]


def build_beam_tree(spec: BeamTree, root: torch.Tensor, root_probs: torch.Tensor,
                    expand: Expand, to_target: Callable[[torch.Tensor], torch.Tensor]
                    = lambda ids: ids) -> BeamResult:
    """Build ``spec``'s tree below ``root [B]`` from the drafter's ``root_probs [B, V]``.

    ``expand`` runs the drafter on a level's frontier (it is called ``S - 1`` times,
    levels 2..S); ``to_target`` maps drafter token ids to the target's (EAGLE-3's
    ``d2t``). See the module doc for the rule; no host sync.
    """
    k, batch = spec.top_k, root.shape[0]
    scores, tokens = _top(root_probs.float(), k, to_target)  # level 1: [B, K]
    all_scores, all_tokens, all_parents = [scores], [tokens], [torch.full_like(tokens, -1)]
    frontier_index = torch.arange(k, device=root.device).expand(batch, k)  # candidate ids
    frontier_rank = torch.zeros_like(tokens)
    offset = k
    for level in range(2, spec.steps + 1):
        child_probs = expand(level, tokens, frontier_rank).float()  # [B, K, V]
        probs, child_tokens = _top(child_probs, k, to_target)  # [B, K, K]
        # Never above the parent (probabilities <= 1; keeps ties parent-first).
        scores = torch.minimum(scores[:, :, None] * probs, scores[:, :, None]).flatten(1)
        child_tokens = child_tokens.flatten(1)
        all_scores.append(scores)
        all_tokens.append(child_tokens)
        all_parents.append(frontier_index.repeat_interleave(k, dim=1))
        best = _best_first(scores, k)  # the next frontier: this level's top K
        frontier_rank = best // k
        frontier_index = offset + best
        scores, tokens = scores.gather(1, best), child_tokens.gather(1, best)
        offset += k * k
    return beam_layout(spec, root, torch.cat(all_scores, 1), torch.cat(all_tokens, 1),
                       torch.cat(all_parents, 1))


def beam_layout(spec: BeamTree, root: torch.Tensor, scores: torch.Tensor,
                tokens: torch.Tensor, parents: torch.Tensor) -> BeamResult:
    """The verified tree from all candidates' ``scores``, ``tokens`` and ``parents``
    (``[B, C]``; parent -1 = the root): the root and the ``N - 1`` best."""
    batch, count = scores.shape
    size, depth = spec.tokens, spec.depth
    chosen = _best_first(scores, size - 1).sort(dim=-1).values  # [B, N-1], parents first
    device = root.device
    # Each candidate's path of candidate ids (root excluded), PAD-padded: [B, C, S].
    levels = [0] + [spec.top_k + i * spec.top_k ** 2 for i in range(spec.steps)]
    paths = torch.full((batch, count, spec.steps), PAD, dtype=torch.long, device=device)
    ids = torch.arange(count, device=device).expand(batch, count)
    for level in range(spec.steps):
        lo, hi = levels[level], levels[level + 1]
        if level:
            paths[:, lo:hi] = paths.gather(1, parents[:, lo:hi, None].expand(-1, -1, spec.steps))
        paths[:, lo:hi, level] = ids[:, lo:hi]
    # Candidate id -> its node number in the step (1..N-1); the root is node 0.
    node_of = torch.full((batch, count + 1), PAD, dtype=torch.long, device=device)
    node_of = node_of.scatter(1, chosen + 1, torch.arange(1, size, device=device)
                              .expand(batch, -1))
    chosen_paths = paths.gather(1, chosen[:, :, None].expand(-1, -1, spec.steps))
    path_nodes = node_of.gather(1, (chosen_paths + 1).flatten(1)).view(chosen_paths.shape)
    path_nodes = path_nodes[..., :depth]  # a chosen node lies at most `depth` deep
    root_column = torch.zeros(batch, size - 1, 1, dtype=torch.long, device=device)
    retrieve = torch.cat([root_column, path_nodes], dim=-1)  # [B, N-1, D+1]
    root_row = torch.full((batch, 1, depth + 1), PAD, dtype=torch.long, device=device)
    root_row[..., 0] = 0
    retrieve = torch.cat([root_row, retrieve], dim=1)  # [B, N, D+1]
    nodes = torch.arange(size, device=device)
    mask = (retrieve[..., None] == nodes).any(dim=-2)  # [B, N, N]: ancestor or self
    offsets = (retrieve != PAD).sum(dim=-1) - 1
    step_tokens = torch.cat([root[:, None], tokens.gather(1, chosen)], dim=1)
    return BeamResult(step_tokens, mask, offsets, retrieve, chosen)
