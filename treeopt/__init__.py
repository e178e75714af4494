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

The package reads like the pipeline, one layer on the next (imports point one way):
``core`` (data types) -> ``files`` (documents, engine formats) -> ``optimize``
(acceptance, replay, build, tune) and ``cost`` (architectures, GPUs, roofline) ->
``model`` (torch: loading, profiling, measuring, training) and ``pictures`` ->
``workflows`` (one call per job, provenance) -> ``cli``. Names below load
lazily: ``import treeopt`` costs nothing until a name is used, and only the
model-side names import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from treeopt._version import __version__

# public name -> module that defines it; resolved on first use (PEP 562).
_EXPORTS: dict[str, str] = {
    "get_arch": "treeopt.cost.arch",
    "BuildResult": "treeopt.optimize.build",
    "build_tree": "treeopt.optimize.build",
    "Curve": "treeopt.core.curve",
    "read_curve": "treeopt.files.curve_file",
    "write_curve": "treeopt.files.curve_file",
    "TreeError": "treeopt.errors",
    "TreeoptError": "treeopt.errors",
    "expected_accept_length": "treeopt.optimize.acceptance_models",
    "node_values": "treeopt.optimize.acceptance_models",
    "FORMATS": "treeopt.files.engines",
    "export_text": "treeopt.files.engines",
    "import_text": "treeopt.files.engines",
    "get_gpu": "treeopt.cost.gpus",
    "LatencyTable": "treeopt.core.latency",
    "load_latency": "treeopt.files.latency_file",
    "write_latency": "treeopt.files.latency_file",
    "measure_latency": "treeopt.model.measure",
    "predict_latency": "treeopt.cost.predict",
    "Profile": "treeopt.core.profile",
    "load_profile": "treeopt.files.profile_file",
    "write_profile": "treeopt.files.profile_file",
    "RankSequences": "treeopt.core.ranks",
    "tokens_per_step": "treeopt.optimize.replay",
    "shipped_profile_names": "treeopt.files.shipped",
    "shipped_tree_names": "treeopt.files.shipped",
    "Tree": "treeopt.core.tree",
    "TreeDocument": "treeopt.files.tree_file",
    "load_tree": "treeopt.files.tree_file",
    "load_tree_document": "treeopt.files.tree_file",
    "write_tree": "treeopt.files.tree_file",
    "BatchBest": "treeopt.optimize.tune",
    "TunedTree": "treeopt.optimize.tune",
    "TuneResult": "treeopt.optimize.tune",
    "batch_view": "treeopt.optimize.tune",
    "tune_size": "treeopt.optimize.tune",
    "tune_tree": "treeopt.optimize.tune",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'treeopt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # static tools see the names without importing anything at run time
    from treeopt.core.curve import Curve
    from treeopt.core.latency import LatencyTable
    from treeopt.core.profile import Profile
    from treeopt.core.ranks import RankSequences
    from treeopt.core.tree import Tree
    from treeopt.cost.arch import get_arch
    from treeopt.cost.gpus import get_gpu
    from treeopt.cost.predict import predict_latency
    from treeopt.errors import TreeError, TreeoptError
    from treeopt.files.curve_file import read_curve, write_curve
    from treeopt.files.engines import FORMATS, export_text, import_text
    from treeopt.files.latency_file import load_latency, write_latency
    from treeopt.files.profile_file import load_profile, write_profile
    from treeopt.files.shipped import shipped_profile_names, shipped_tree_names
    from treeopt.files.tree_file import TreeDocument, load_tree, load_tree_document, write_tree
    from treeopt.model.measure import measure_latency
    from treeopt.optimize.acceptance_models import expected_accept_length, node_values
    from treeopt.optimize.build import BuildResult, build_tree
    from treeopt.optimize.replay import tokens_per_step
    from treeopt.optimize.tune import (
        BatchBest,
        TunedTree,
        TuneResult,
        batch_view,
        tune_size,
        tune_tree,
    )
