"""medusa_runtime: the tree-attention Medusa runtime that consumes treeopt trees.

- ``heads``: Medusa heads (FasterDecoding checkpoint layout) — ``MedusaHeads``.
- ``buffers``: per-tree index tensors — ``tree_buffers``.
- ``acceptance``: greedy and typical acceptance — ``TypicalAcceptance``.
- ``decode``: static-cache tree decoding — ``generate``, ``generate_batch``,
  ``TreeDecoder``.
- ``timing``: verification-step latency — ``time_verification_step``,
  ``random_weight_model``.
"""

from medusa_runtime.acceptance import Acceptance, TypicalAcceptance
from medusa_runtime.buffers import TreeBuffers, tree_buffers
from medusa_runtime.decode import (
    BatchGenerationResult,
    GenerationResult,
    TreeDecoder,
    generate,
    generate_batch,
)
from medusa_runtime.heads import MedusaConfig, MedusaHeads
from medusa_runtime.timing import random_weight_model, time_verification_step

__all__ = [
    "Acceptance",
    "BatchGenerationResult",
    "GenerationResult",
    "MedusaConfig",
    "MedusaHeads",
    "TreeBuffers",
    "TreeDecoder",
    "TypicalAcceptance",
    "generate",
    "generate_batch",
    "random_weight_model",
    "time_verification_step",
    "tree_buffers",
]
