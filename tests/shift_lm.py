"""``ShiftLM``: a hand-built causal LM whose greedy text and head ranks are known exactly.

Vocabulary ``V = 8``, one-hot hidden states; greedy continues token ``a`` with
``(a + STEP) % V``. Head k's projection (``shift_heads``) scores token b after
token a as ``-((b - a - k - 1) % V)``, so the rank of b is ``(b - a - k - 1) % V``.
On greedy text ``x_{t+1+k} = x_t + STEP (k + 1)``, so head k's rank is
``(STEP - 1)(k + 1) % V``: with STEP = 2, heads 1, 2, 3 rank the truth 2, 3, 4.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from medusa_runtime.heads import MedusaConfig, MedusaHeads

V = 8
STEP = 2
NUM_HEADS = 3
CONTEXT = 64


class Body(nn.Module):
    def __init__(self, embed: nn.Embedding) -> None:
        super().__init__()
        self.embed = embed

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(last_hidden_state=self.embed(input_ids))


class ShiftLM(nn.Module):
    """Greedy next token of ``a`` is ``(a + STEP) % V``; hidden state = one-hot(token)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(V, V)
        self.embed.weight.data = torch.eye(V)
        self.body = Body(self.embed)
        self.lm_head = nn.Linear(V, V, bias=False)
        self.lm_head.weight.data = torch.eye(V)[(torch.arange(V) - STEP) % V]
        self.config = SimpleNamespace(max_position_embeddings=CONTEXT)
        self.generate_calls = 0

    def get_decoder(self) -> nn.Module:
        return self.body

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def generate(self, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id,
                 **_: object) -> torch.Tensor:
        self.generate_calls += 1
        out = input_ids.clone()
        done = torch.zeros(len(out), dtype=torch.bool)
        for _ in range(max_new_tokens):
            nxt = self.lm_head(self.embed(out[:, -1])).argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
            out = torch.cat([out, nxt[:, None]], dim=1)
            done |= nxt == eos_token_id
        return out


def shift_heads() -> MedusaHeads:
    heads = MedusaHeads(MedusaConfig(NUM_HEADS, 1, hidden_size=V, vocab_size=V))
    b, a = torch.meshgrid(torch.arange(V), torch.arange(V), indexing="ij")
    for k, head in enumerate(heads.heads, start=1):
        head[-1].weight.data = -((b - a - k - 1) % V).float()
    return heads
