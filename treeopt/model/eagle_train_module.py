"""The EAGLE drafters as ``train-heads --eagle-version`` trains them (full sequences).

Key names follow the EAGLE repo (SafeAILab/EAGLE at cb7e0841) so that its loaders
and treeopt's read the files this writes:

- EAGLE-1/2, ``eagle/model/cnets1.py`` ``Model``: ``fc`` (Linear 2H -> H, with
  bias) over ``[embed(token); target feature]``, then ``layers.0.*`` a Llama decoder
  layer WITHOUT ``input_layernorm`` (cnets1 builds it only for ``index != 0``); the
  logits are the target's own ``lm_head`` of the predicted feature.
- EAGLE-3, ``eagle/model/cnets.py`` ``Model``: ``fc`` (Linear 3H -> H, no bias)
  over the target's low/mid/high hidden states, ``midlayer.*`` (``hidden_norm``,
  ``input_layernorm``, attention whose q/k/v read ``[normed embed; normed
  feature]`` (2H), MLP, ``post_attention_layernorm``), ``norm``, ``lm_head`` over
  the draft vocabulary, and the buffers ``d2t`` (draft id -> target id offset) and
  ``t2d`` (bool over the target vocabulary). vLLM's ``llama_eagle3.py`` reads
  ``midlayer.`` as ``layers.0.``.

``embed_tokens`` is the target's (frozen) and is not written: the EAGLE loaders
take it from the target when a checkpoint lacks it. This module only trains; the
runtime decodes with :mod:`medusa_runtime` 's own EAGLE drafter.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


class RMSNorm(nn.Module):
    """Llama RMSNorm (key: ``weight``)."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype)


def _rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Llama rotary embedding (rotate-half form) of ``x`` [B, heads, T, D]."""
    dim = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim))
    angles = positions.float()[..., None] * inv  # [B, T, D/2]
    emb = torch.cat((angles, angles), dim=-1)[:, None]
    half = dim // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * emb.cos() + rotated * emb.sin()).to(x.dtype)


class Attention(nn.Module):
    """Llama attention (GQA, RoPE) whose q/k/v read ``in_size`` features.

    ``forward`` takes the keys/values of earlier training-time-test steps: the
    query at position t sees step 0's keys at positions <= t (causal) and each
    later step's key at position t only (EAGLE-3's diagonal, cnets.py).
    """

    def __init__(self, config: dict[str, Any], in_size: int) -> None:
        super().__init__()
        hidden = config["hidden_size"]
        self.heads = config["num_attention_heads"]
        self.kv_heads = config.get("num_key_value_heads") or self.heads
        self.head_dim = config.get("head_dim") or hidden // self.heads
        self.theta = float(config.get("rope_theta", 10000.0))
        self.q_proj = nn.Linear(in_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(in_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(in_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, hidden, bias=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor,
                earlier: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, Any]:
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = _rope(q, positions, self.theta), _rope(k, positions, self.theta)
        repeat = self.heads // self.kv_heads
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        steps = [*earlier, (k, v)]
        scale = self.head_dim ** -0.5
        k0, v0 = steps[0]
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        scores = (q @ k0.transpose(-1, -2)) * scale
        scores = scores.masked_fill(~causal, float("-inf"))
        diagonal = [(q * kj).sum(-1, keepdim=True) * scale for kj, _ in steps[1:]]
        weights = torch.softmax(torch.cat([scores, *diagonal], dim=-1).float(), -1).to(q.dtype)
        out = weights[..., :length] @ v0
        for j, (_, vj) in enumerate(steps[1:]):
            out = out + weights[..., length + j:length + j + 1] * vj
        out = out.transpose(1, 2).reshape(batch, length, -1)
        return self.o_proj(out), (k, v)


class MLP(nn.Module):
    """Llama SwiGLU MLP (keys ``gate_proj``, ``up_proj``, ``down_proj``)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        hidden, inner = config["hidden_size"], config["intermediate_size"]
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """cnets1.py's layer 0 (``eagle3`` False) or cnets.py's ``LlamaDecoderLayeremb``."""

    def __init__(self, config: dict[str, Any], eagle3: bool) -> None:
        super().__init__()
        hidden, eps = config["hidden_size"], config.get("rms_norm_eps", 1e-6)
        self.eagle3 = eagle3
        if eagle3:
            self.hidden_norm = RMSNorm(hidden, eps)
            self.input_layernorm = RMSNorm(hidden, eps)
        self.self_attn = Attention(config, 2 * hidden if eagle3 else hidden)
        self.mlp = MLP(config)
        self.post_attention_layernorm = RMSNorm(hidden, eps)

    def forward(self, hidden: torch.Tensor, embeds: torch.Tensor | None, positions: torch.Tensor,
                earlier: list[Any]) -> tuple[torch.Tensor, Any]:
        residual = hidden
        if self.eagle3:
            hidden = torch.cat((self.input_layernorm(embeds), self.hidden_norm(hidden)), dim=-1)
        attended, cache = self.self_attn(hidden, positions, earlier)
        hidden = residual + attended
        return hidden + self.mlp(self.post_attention_layernorm(hidden)), cache


class EagleTrainDrafter(nn.Module):
    """An EAGLE-1 (``version`` 1) or EAGLE-3 (3) drafter for a Llama-like target.

    ``config``: the drafter's config.json (the target's shape; EAGLE-3 adds
    ``draft_vocab_size``). ``embed`` and ``target_lm_head`` are the target's modules,
    held by reference (not parameters of this module, not saved).
    """

    def __init__(self, config: dict[str, Any], version: int, embed: nn.Module,
                 target_lm_head: nn.Module) -> None:
        super().__init__()
        hidden = config["hidden_size"]
        self.version = version
        self.config = config
        self._target = [embed, target_lm_head]  # a list: kept out of state_dict()
        if version == 1:
            self.fc = nn.Linear(2 * hidden, hidden, bias=True)
            self.layers = nn.ModuleList([DecoderLayer(config, eagle3=False)])
        else:
            eps = config.get("rms_norm_eps", 1e-6)
            draft_vocab = config["draft_vocab_size"]
            self.fc = nn.Linear(3 * hidden, hidden, bias=False)
            self.midlayer = DecoderLayer(config, eagle3=True)
            self.norm = RMSNorm(hidden, eps)
            self.lm_head = nn.Linear(hidden, draft_vocab, bias=False)
            self.register_buffer("d2t", torch.zeros(draft_vocab, dtype=torch.long))
            self.register_buffer("t2d", torch.zeros(config["vocab_size"], dtype=torch.bool))

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._target[0](input_ids).float()

    def step(self, input_ids: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor,
             earlier: list[Any], first: bool) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """One drafter pass: (output hidden, logits, this step's keys/values).

        EAGLE-1: ``hidden`` is the target's feature, the output the predicted next
        feature and the logits the target's ``lm_head`` of it. EAGLE-3: ``hidden`` is
        the 3H low/mid/high features at the ``first`` step, else the drafter's own
        previous output; logits are over the draft vocabulary.
        """
        embeds = self.embed(input_ids)
        if self.version == 1:
            x = self.fc(torch.cat((embeds, hidden), dim=-1))
            out, cache = self.layers[0](x, None, positions, earlier)
            return out, self._target[1](out), cache
        x = self.fc(hidden) if first else hidden
        out, cache = self.midlayer(x, embeds, positions, earlier)
        return out, self.lm_head(self.norm(out)), cache


def init_from_target(drafter: EagleTrainDrafter, target_layer: nn.Module | None) -> None:
    """Start the drafter's layer from a target decoder layer where shapes match.

    A warm start, not part of EAGLE's recipe (which starts from random), that
    helps the few-minute CPU runs; attention in EAGLE-3 reads 2H so only its
    output projection and the MLP are copied.
    """
    if target_layer is None:
        return
    layer = drafter.layers[0] if drafter.version == 1 else drafter.midlayer
    source = dict(target_layer.named_parameters())
    with torch.no_grad():
        for name, value in layer.named_parameters():
            if name in source and source[name].shape == value.shape:
                value.copy_(source[name].float())
