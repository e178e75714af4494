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
    treeopt.tokens_per_step(treeopt.load_tree("mc_sim_7b_63"), measured)
    treeopt.write_tree("tree.json", result.tree, result.expected_accept_length)
    print(treeopt.export_text(result.tree, "trtllm"))

    # Tune the size for a GPU: a roofline prediction here, or a measured table
    # (``treeopt.measure_latency``, or ``treeopt overhead``'s file).
    table = treeopt.predict_latency(treeopt.get_arch("llama-7b"), treeopt.get_gpu("h100-sxm"),
                                    batches=[1], contexts=[1024], sizes=range(1, 129))
    tuned = treeopt.tune_tree(profile, table)           # tuned.tree, tuned.result.best

Measuring a model (``treeopt.profiling``, ``treeopt.train_heads``,
``treeopt.overhead``) and decoding (``medusa_runtime``) import torch when used.
"""

from treeopt.arch import get_arch
from treeopt.build import BuildResult, build_tree
from treeopt.curve import Curve, read_curve, write_curve
from treeopt.errors import TreeError, TreeoptError
from treeopt.evaluate import expected_accept_length, node_values
from treeopt.formats import FORMATS, export_text, import_text
from treeopt.hardware import get_gpu
from treeopt.latency import LatencyTable, load_latency, write_latency
from treeopt.overhead import measure_latency, predict_latency
from treeopt.profile import Profile, load_profile, write_profile
from treeopt.replay import RankSequences, tokens_per_step
from treeopt.shipped import shipped_profile_names, shipped_tree_names
from treeopt.tree import Tree
from treeopt.treefile import TreeDocument, load_tree, load_tree_document, write_tree
from treeopt.tune import BatchBest, TunedTree, TuneResult, batch_view, tune_size, tune_tree

__version__ = "0.1.0"

__all__ = [
    "FORMATS",
    "BatchBest",
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
    "TunedTree",
    "__version__",
    "batch_view",
    "build_tree",
    "expected_accept_length",
    "export_text",
    "get_arch",
    "get_gpu",
    "import_text",
    "load_latency",
    "load_profile",
    "load_tree",
    "load_tree_document",
    "measure_latency",
    "node_values",
    "predict_latency",
    "read_curve",
    "shipped_profile_names",
    "shipped_tree_names",
    "tokens_per_step",
    "tune_size",
    "tune_tree",
    "write_curve",
    "write_latency",
    "write_profile",
    "write_tree",
]
