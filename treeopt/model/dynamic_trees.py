"""Dynamic per-step trees for the runtime, from a measured profile.

``treeopt.optimize.dynamic`` holds the policy and its calibration (pure numpy);
this turns them into the runtime's :class:`medusa_runtime.dynamic.DynamicTree`.
"""

from __future__ import annotations

from typing import Any

from treeopt.core.tree import Tree
from treeopt.errors import TreeoptError
from treeopt.optimize.dynamic import HeadCalibration, candidate_pool, fit_calibration


def dynamic_tree(profile: Any, size: int, num_heads: int | None = None,
                 calibration: HeadCalibration | None = None) -> Any:
    """The runtime policy choosing ``size`` tokens a step, calibrated on ``profile``.

    ``profile`` must carry rank vectors with head probabilities (``treeopt profile``
    records them); ``num_heads`` caps the depth (default: the profile's).
    """
    import torch

    from medusa_runtime.dynamic import DynamicTree

    if calibration is None:
        sequences = getattr(profile, "sequences", None)
        if sequences is None:
            raise TreeoptError("a dynamic tree needs a measured profile (treeopt profile)")
        calibration = fit_calibration(sequences)
    depth = min(num_heads or calibration.num_heads, calibration.num_heads)
    pool = Tree.from_paths(candidate_pool(size, depth), num_heads=depth)
    return DynamicTree(pool, size, torch.tensor(calibration.table[:depth]))
