"""treeopt: find, tune and export the best Medusa token tree for a model and GPU.

The everyday API imports no torch::

    import treeopt

    profile = treeopt.load_profile("vicuna-7b")          # shipped, or a file
    result = treeopt.build_tree(profile, budget=64)      # 63 paths + the root
    result.expected_accept_length                        # tokens/step, root included
    treeopt.expected_accept_length(treeopt.load_tree("mc_sim_7b_63"), profile)
    # A measured profile (treeopt profile) keeps its rank vectors: score a tree by
    # tokens per decoding step, as the runtime measures it on those prompts.
    measured = treeopt.load_profile("my-profile.json")
    treeopt.tokens_per_step(treeopt.load_tree("mc_sim_7b_63"), measured.sequences)
    treeopt.write_tree("tree.json", result.tree, result.expected_accept_length)
    print(treeopt.export_text(result.tree, "trtllm"))

Measuring a model (``treeopt.profiling``, ``treeopt.train_heads``,
``treeopt.overhead``) and decoding (``medusa_runtime``) import torch when used.
"""

from treeopt.build import BuildResult, build_tree
from treeopt.curve import Curve, read_curve, write_curve
from treeopt.errors import TreeError, TreeoptError
from treeopt.evaluate import expected_accept_length, node_values
from treeopt.formats import export_text, import_text
from treeopt.latency import LatencyTable, load_latency, write_latency
from treeopt.profile import Profile, load_profile, write_profile
from treeopt.replay import RankSequences, tokens_per_step
from treeopt.tree import Tree
from treeopt.treefile import TreeDocument, load_tree, load_tree_document, write_tree
from treeopt.tune import TuneResult, tune_size

__version__ = "0.1.0"

__all__ = [
    "BuildResult",
    "Curve",
    "LatencyTable",
    "Profile",
    "RankSequences",
    "Tree",
    "TreeDocument",
    "TreeError",
    "TreeoptError",
    "TuneResult",
    "__version__",
    "build_tree",
    "expected_accept_length",
    "export_text",
    "import_text",
    "load_latency",
    "load_profile",
    "load_tree",
    "load_tree_document",
    "node_values",
    "read_curve",
    "tokens_per_step",
    "tune_size",
    "write_curve",
    "write_latency",
    "write_profile",
    "write_tree",
]
