"""medusa_runtime: the tree-attention Medusa runtime that consumes treeopt trees.

- ``heads``: Medusa heads (FasterDecoding checkpoint layout) — ``MedusaHeads``.
- ``buffers``: per-tree index tensors — ``tree_buffers``.
- ``acceptance``: greedy and typical acceptance — ``TypicalAcceptance``.
- ``architectures``: the models decoded exactly — ``SUPPORTED_MODEL_TYPES``,
  ``check_supported``.
- ``decode``: static-cache tree decoding — ``generate``, ``generate_batch``,
  ``TreeDecoder``.
- ``static_forward``: the one static-cache forward target and drafters share.
- ``drafter``: the drafter extension point (``Drafter`` / ``DraftSession``), Medusa
  heads and draft models; ``dynamic``: Medusa ``dynamic:N``; ``eagle``: EAGLE-1/2/3
  (``EagleDrafter``, ``random_eagle``, ``save_eagle``); ``beam``: the engine-style
  ``dynamic:S,K,N`` tree (``BeamTree``, ``build_beam_tree``).
- ``timing``: verification-step latency — ``time_verification_step``,
  ``random_weight_model``.
"""

from medusa_runtime.acceptance import Acceptance, TypicalAcceptance
from medusa_runtime.architectures import SUPPORTED_MODEL_TYPES, check_supported
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
    "SUPPORTED_MODEL_TYPES",
    "Acceptance",
    "BatchGenerationResult",
    "GenerationResult",
    "MedusaConfig",
    "MedusaHeads",
    "TreeBuffers",
    "TreeDecoder",
    "TypicalAcceptance",
    "check_supported",
    "generate",
    "generate_batch",
    "random_weight_model",
    "time_verification_step",
    "tree_buffers",
]
