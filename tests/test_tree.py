"""The Tree contract: canonical order, validation messages, structure queries."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from treeopt.core.tree import Tree, check_top_k
from treeopt.errors import TreeError

SMALL = [[1], [0], [0, 1], [0, 0], [0, 0, 0]]


def test_canonical_order_is_depth_then_lexicographic():
    tree = Tree.from_paths(SMALL)
    assert tree.paths == ((0,), (1,), (0, 0), (0, 1), (0, 0, 0))
    assert tree.num_heads == 3  # defaults to depth
    assert len(tree) == 5
    assert tree.num_tokens == 6


def test_structure_queries():
    tree = Tree.from_paths(SMALL, num_heads=5)
    assert tree.depth == 3
    assert tree.width_per_depth() == [2, 2, 1]
    assert tree.max_rank_per_depth() == [1, 1, 0]
    assert tree.children(()) == [(0,), (1,)]
    assert tree.children((0,)) == [(0, 0), (0, 1)]
    assert tree.leaves() == [(1,), (0, 1), (0, 0, 0)]
    assert tree.index(()) == 0
    assert tree.index((0, 0)) == 3
    assert (0, 1) in tree and (1, 1) not in tree
    assert tree.summary()["leaves"] == 3


def test_networkx_view_is_rooted_arborescence():
    import networkx as nx

    graph = Tree.from_paths(SMALL).to_networkx()
    assert nx.is_arborescence(graph)
    assert graph.number_of_nodes() == 6
    assert set(graph.successors((0,))) == {(0, 0), (0, 1)}
    assert graph.nodes[(0, 1)] == {"depth": 2, "rank": 1}


def test_equality_and_hash_ignore_input_order():
    a = Tree.from_paths([[0], [1], [0, 0]])
    b = Tree.from_paths([(0, 0), (1,), (0,)])
    assert a == b and hash(a) == hash(b)


def test_empty_tree_is_refused_unless_allowed():
    with pytest.raises(TreeError, match="no paths"):
        Tree.from_paths([])
    empty = Tree.from_paths([], num_heads=4, allow_empty=True)
    assert empty == Tree.empty(4)
    assert empty.num_tokens == 1 and empty.depth == 0


@pytest.mark.parametrize(
    ("paths", "kwargs", "message"),
    [
        ([[0], [1, 0]], {}, r"path \[1, 0\] has no parent \[1\]"),
        ([[0], [0]], {}, r"duplicate path \[0\]"),
        ([[0], [-1]], {}, r"rank -1 in path \[-1\] is negative"),
        ([[0], [0.5]], {}, r"rank 0.5 in path \[0.5\] is not an integer"),
        ([[True]], {}, r"rank True .* not an integer"),
        ([[0], []], {}, r"empty path \[\]"),
        ([[0], 3], {}, r"path 3 is not a list"),
        ([[0], [0, 0]], {"num_heads": 1}, r"depth 2 > num_heads 1"),
        ([[0], [3]], {"top_k": 3}, r"rank 3 at depth 1 in path \[3\] >= top_k 3"),
        ([[0], [0, 2]], {"top_k": [5, 2]}, r"rank 2 at depth 2 .* >= top_k 2"),
    ],
)
def test_validation_messages_name_the_offending_path(paths, kwargs, message):
    with pytest.raises(TreeError, match=message):
        Tree.from_paths(paths, **kwargs)


def test_per_depth_top_k_repeats_last_bound():
    check_top_k([(0, 1, 1)], [3, 2])  # depth 3 uses the last bound, 2
    with pytest.raises(TreeError):
        check_top_k([(0, 1, 2)], [3, 2])


@st.composite
def valid_trees(draw):
    """Random valid trees: each new node extends an existing node (or the root)."""
    nodes: list[tuple[int, ...]] = []
    for _ in range(draw(st.integers(1, 25))):
        parent = draw(st.sampled_from([(), *nodes]))
        child = (*parent, draw(st.integers(0, 4)))
        if child not in nodes and len(child) <= 5:
            nodes.append(child)
    return nodes


@given(valid_trees())
def test_any_prefix_closed_set_is_accepted_and_canonical(nodes):
    tree = Tree.from_paths(list(reversed(nodes)), num_heads=5)
    assert set(tree.paths) == set(nodes)
    assert list(tree.paths) == sorted(nodes, key=lambda p: (len(p), p))
    assert sum(tree.width_per_depth()) == len(nodes)
