"""treeopt: find, tune and export the best Medusa token tree for a model and GPU.

The everyday API imports no torch::

    import treeopt
    tree = treeopt.load_tree("mc_sim_7b_63")
"""

from treeopt.errors import TreeError, TreeoptError
from treeopt.tree import Tree
from treeopt.treefile import TreeDocument, load_tree, load_tree_document, write_tree

__version__ = "0.1.0"

__all__ = [
    "Tree",
    "TreeDocument",
    "TreeError",
    "TreeoptError",
    "__version__",
    "load_tree",
    "load_tree_document",
    "write_tree",
]
