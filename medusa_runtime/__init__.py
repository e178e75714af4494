"""medusa_runtime: the tree-attention Medusa runtime that consumes treeopt trees.

- ``heads``: Medusa heads (FasterDecoding checkpoint layout) — ``MedusaHeads``.
- ``buffers``: per-tree index tensors — ``tree_buffers``.
- ``acceptance``: greedy and typical acceptance — ``TypicalAcceptance``.
- ``decode``: static-cache tree decoding — ``generate``, ``TreeDecoder``.
- ``timing``: verification-step latency — ``time_verification_step``.
"""

from medusa_runtime.acceptance import TypicalAcceptance
from medusa_runtime.buffers import TreeBuffers, tree_buffers
from medusa_runtime.decode import GenerationResult, TreeDecoder, generate
from medusa_runtime.heads import MedusaConfig, MedusaHeads

__all__ = [
    "GenerationResult",
    "MedusaConfig",
    "MedusaHeads",
    "TreeBuffers",
    "TreeDecoder",
    "TypicalAcceptance",
    "generate",
    "tree_buffers",
]
