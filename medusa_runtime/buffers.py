"""Tree buffers: everything decoding needs to verify a tree, computed once per tree.

Nodes are numbered in the tree's canonical order with the root as node 0 (the
base model's own next token), so node ``i`` is ``tree.index(path)``. For a tree
with ``q = tree.num_tokens`` nodes:

- ``attention_mask`` ``[q, q]`` bool: node ``i`` sees node ``j`` iff ``j`` is ``i``
  or an ancestor of ``i``. The prefix (everything already in the KV cache) is
  visible to every node; the caller adds it.
- ``position_offsets`` ``[q]``: each node's depth; its position id is
  ``prefix_length + depth``.
- ``candidate_indices`` ``[q]``: where each node's token sits in the flat
  candidate vector ``[root_token, head1_top0..head1_top(k-1), head2_top0, ...]``
  (``k = top_k``): the root is 0, a node at depth ``d`` with rank ``r`` is
  ``1 + (d - 1) * top_k + r``.
- ``retrieve_indices`` ``[num_leaves, depth + 1]``: one row per root-to-leaf path
  (leaves in canonical order), the node numbers from the root down, padded with
  ``-1`` after the leaf.
- ``parent_indices`` ``[q]``: each node's parent (-1 for the root).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from treeopt.core.tree import Tree

PAD = -1  # retrieve_indices filler past a path's leaf


@dataclass(frozen=True)
class TreeBuffers:
    """Index tensors (CPU, int64 / bool) for verifying one tree. See the module doc."""

    attention_mask: torch.Tensor
    position_offsets: torch.Tensor
    candidate_indices: torch.Tensor
    retrieve_indices: torch.Tensor
    parent_indices: torch.Tensor
    top_k: int  # candidates taken from each head: 1 + the largest rank in the tree
    depth: int

    @property
    def num_tokens(self) -> int:
        return int(self.position_offsets.numel())

    def to(self, device: torch.device | str) -> TreeBuffers:
        """The same buffers on ``device``."""
        return TreeBuffers(
            attention_mask=self.attention_mask.to(device),
            position_offsets=self.position_offsets.to(device),
            candidate_indices=self.candidate_indices.to(device),
            retrieve_indices=self.retrieve_indices.to(device),
            parent_indices=self.parent_indices.to(device),
            top_k=self.top_k,
            depth=self.depth,
        )


@lru_cache(maxsize=64)
def tree_buffers(tree: Tree) -> TreeBuffers:
    """Buffers for ``tree`` (pure; cached per tree). Do not modify the returned tensors."""
    nodes = [(), *tree.paths]
    index = {path: i for i, path in enumerate(nodes)}
    num_tokens = len(nodes)
    top_k = max((path[-1] for path in tree.paths), default=0) + 1

    mask = torch.zeros(num_tokens, num_tokens, dtype=torch.bool)
    parents = torch.full((num_tokens,), PAD, dtype=torch.long)
    candidates = torch.zeros(num_tokens, dtype=torch.long)
    for i, path in enumerate(nodes):
        for length in range(len(path) + 1):  # the root, each ancestor, itself
            mask[i, index[path[:length]]] = True
        if path:
            parents[i] = index[path[:-1]]
            candidates[i] = 1 + (len(path) - 1) * top_k + path[-1]
    positions = torch.tensor([len(path) for path in nodes], dtype=torch.long)

    leaves = tree.leaves() or [()]
    retrieve = torch.full((len(leaves), tree.depth + 1), PAD, dtype=torch.long)
    for row, leaf in enumerate(leaves):
        for length in range(len(leaf) + 1):
            retrieve[row, length] = index[leaf[:length]]
    return TreeBuffers(
        attention_mask=mask,
        position_offsets=positions,
        candidate_indices=candidates,
        retrieve_indices=retrieve,
        parent_indices=parents,
        top_k=top_k,
        depth=tree.depth,
    )
