"""Tree buffers on hand-worked trees: exact mask, positions, indices."""

from __future__ import annotations

import torch

from medusa_runtime.buffers import tree_buffers
from treeopt.core.tree import Tree


def test_root_only_tree() -> None:
    buffers = tree_buffers(Tree.empty(3))
    assert buffers.attention_mask.tolist() == [[True]]
    assert buffers.position_offsets.tolist() == [0]
    assert buffers.candidate_indices.tolist() == [0]
    assert buffers.retrieve_indices.tolist() == [[0]]
    assert buffers.parent_indices.tolist() == [-1]
    assert buffers.depth == 0


def test_chain_of_two() -> None:
    # root -> (0) -> (0, 0): a greedy chain of 3 tokens.
    buffers = tree_buffers(Tree.from_paths([[0], [0, 0]]))
    assert buffers.attention_mask.tolist() == [
        [True, False, False],
        [True, True, False],
        [True, True, True],
    ]
    assert buffers.position_offsets.tolist() == [0, 1, 2]
    assert buffers.top_k == 1
    # flat candidates: [root, head1 top0, head2 top0]
    assert buffers.candidate_indices.tolist() == [0, 1, 2]
    assert buffers.retrieve_indices.tolist() == [[0, 1, 2]]
    assert buffers.parent_indices.tolist() == [-1, 0, 1]


def test_four_nodes_two_branches() -> None:
    # nodes: 0 root, 1 (0), 2 (1), 3 (0, 0), 4 (0, 2); top_k = 3.
    tree = Tree.from_paths([[0, 2], [1], [0], [0, 0]])
    buffers = tree_buffers(tree)
    t, f = True, False
    assert buffers.attention_mask.tolist() == [
        [t, f, f, f, f],
        [t, t, f, f, f],
        [t, f, t, f, f],
        [t, t, f, t, f],
        [t, t, f, f, t],
    ]
    assert buffers.position_offsets.tolist() == [0, 1, 1, 2, 2]
    assert buffers.top_k == 3
    # depth 1 rank r -> 1 + r; depth 2 rank r -> 1 + 3 + r
    assert buffers.candidate_indices.tolist() == [0, 1, 2, 4, 6]
    # leaves in canonical order: (1), (0, 0), (0, 2); padded with -1
    assert buffers.retrieve_indices.tolist() == [[0, 2, -1], [0, 1, 3], [0, 1, 4]]
    assert buffers.parent_indices.tolist() == [-1, 0, 0, 1, 1]


def test_cached_and_device_copy() -> None:
    tree = Tree.from_paths([[0], [1]])
    assert tree_buffers(tree) is tree_buffers(Tree.from_paths([[1], [0]]))
    moved = tree_buffers(tree).to("cpu")
    assert torch.equal(moved.retrieve_indices, torch.tensor([[0, 1], [0, 2]]))
