"""Which root-to-leaf path of a verified tree to keep, and how much of it.

Both rules are pure, fixed-shape tensor functions (no host sync), so they run
inside the captured verification step. Inputs, for a tree of ``q`` nodes whose
retrieve table has ``P`` rows of ``D + 1`` columns (see ``buffers``):

- ``tree_tokens`` ``[..., q]``: the token placed at each node;
- ``logits`` ``[..., q, V]``: the base model's logits *after* each node;
- ``retrieve_indices`` ``[P, D + 1]``: node numbers root-first, ``-1`` padded
  (one tree, shared by every sequence of a batch), or ``[B, P, D + 1]`` when each
  sequence verifies its own tree (dynamic trees).

``...`` is an optional batch dimension ``B`` (one decision per sequence). They
return ``(best_row, accept_length)``, each ``[...]``: the chosen row and how many
of its nodes are accepted, the root included (so ``accept_length >= 1``). The root
is always accepted: it is the base model's own greedy token from the step before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from medusa_runtime.buffers import PAD
from treeopt.errors import TreeoptError


@dataclass(frozen=True)
class TypicalAcceptance:
    """Medusa's typical acceptance (Cai et al. 2024, section 2.3.1).

    A candidate is accepted when its probability under the base model (softmax of
    logits / ``temperature`` at its parent) exceeds
    ``min(posterior_threshold, posterior_alpha * exp(-H))``, H the entropy of that
    distribution. The first token of each step (the root) is greedy. Among paths
    accepted to the same length, the one whose candidates are most likely under
    the base model wins, as in Medusa's reference implementation.
    """

    posterior_threshold: float = 0.09
    posterior_alpha: float = 0.3
    temperature: float = 1.0

    def __post_init__(self) -> None:
        """One-line TreeoptError for a rule that is not a probability threshold."""
        threshold, alpha, temperature = (self.posterior_threshold, self.posterior_alpha,
                                         self.temperature)
        if not 0.0 <= threshold <= 1.0:  # also False for NaN
            raise TreeoptError(f"posterior_threshold must be in [0, 1], not {threshold}")
        if not 0.0 <= alpha < math.inf:
            raise TreeoptError(f"posterior_alpha must be finite and >= 0, not {alpha}")
        if not 0.0 < temperature < math.inf:
            raise TreeoptError(f"temperature must be finite and > 0, not {temperature}")


Acceptance = Literal["greedy"] | TypicalAcceptance


def at_nodes(values: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """``values[..., nodes]`` for per-node ``values [..., q]``, ``nodes`` shared ``[P, D]``
    or per row ``[B, P, D]`` (a gather: fixed shapes, no host sync)."""
    if nodes.dim() == 2:
        return values[..., nodes]
    return values.gather(-1, nodes.flatten(1)).view(nodes.shape)


def select_rows(retrieve_indices: torch.Tensor, best_row: torch.Tensor) -> torch.Tensor:
    """``[B, D + 1]``: row ``best_row[b]`` of the shared or per-row retrieve table."""
    if retrieve_indices.dim() == 2:
        return retrieve_indices.index_select(0, best_row)
    index = best_row[:, None, None].expand(-1, 1, retrieve_indices.shape[-1])
    return retrieve_indices.gather(1, index)[:, 0]


def _longest_accepted(
    matches: torch.Tensor, retrieve_indices: torch.Tensor,
    log_probs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row with the longest all-accepted prefix and its length + 1.

    Ties go to the row whose accepted candidates have the largest summed
    ``log_probs`` ``[..., P, D]`` (Medusa's rule for typical acceptance), or to the
    first such row without them. (Under greedy acceptance tied rows share their
    accepted nodes: only one child of a node can be the argmax.)
    """
    matches = matches & (retrieve_indices[..., 1:] != PAD)
    prefix = matches.long().cumprod(dim=-1)  # [..., P, D]
    accepted = prefix.sum(dim=-1)  # [..., P]
    # max/argmax(dim) return the first maximal index, and index without a host sync.
    longest, best_row = accepted.max(dim=-1)
    if log_probs is not None:
        likelihood = (log_probs * prefix).sum(dim=-1)
        tied = accepted == longest.unsqueeze(-1)
        best_row = likelihood.masked_fill(~tied, float("-inf")).argmax(dim=-1)
    return best_row, longest + 1


def greedy_accept(
    tree_tokens: torch.Tensor, logits: torch.Tensor, retrieve_indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept a node iff its token is the base model's argmax after its parent.

    Lossless: the accepted tokens are exactly what plain greedy decoding emits.
    """
    nodes = retrieve_indices.clamp(min=0)
    predictions = logits.argmax(dim=-1)
    matches = at_nodes(tree_tokens, nodes[..., 1:]) == at_nodes(predictions, nodes[..., :-1])
    return _longest_accepted(matches, retrieve_indices)


def typical_accept(
    tree_tokens: torch.Tensor,
    logits: torch.Tensor,
    retrieve_indices: torch.Tensor,
    rule: TypicalAcceptance,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept a node iff its base probability beats the entropy-scaled threshold."""
    nodes = retrieve_indices.clamp(min=0)
    probs = torch.softmax(logits.float() / rule.temperature, dim=-1)
    entropy = -(probs * torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))).sum(dim=-1)
    threshold = torch.minimum(
        torch.full_like(entropy, rule.posterior_threshold),
        rule.posterior_alpha * torch.exp(-entropy),
    )
    parents = nodes[..., :-1]
    # probs[..., parent, token] as one gather over the flattened (node, vocab) axis:
    # fixed-shape and with no [..., P, D, V] intermediate.
    vocab = probs.shape[-1]
    flat_index = parents * vocab + at_nodes(tree_tokens, nodes[..., 1:])  # [..., P, D]
    candidate_probs = probs.flatten(-2).gather(-1, flat_index.flatten(-2)).view(flat_index.shape)
    matches = candidate_probs > at_nodes(threshold, parents)
    log_probs = torch.log(candidate_probs.clamp_min(torch.finfo(candidate_probs.dtype).tiny))
    return _longest_accepted(matches, retrieve_indices, log_probs)


def accept(
    acceptance: Acceptance,
    tree_tokens: torch.Tensor,
    logits: torch.Tensor,
    retrieve_indices: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch to :func:`greedy_accept` or :func:`typical_accept`."""
    if isinstance(acceptance, TypicalAcceptance):
        return typical_accept(tree_tokens, logits, retrieve_indices, acceptance)
    return greedy_accept(tree_tokens, logits, retrieve_indices)
