"""EAGLE drafters (EAGLE-1/2 and EAGLE-3) for the tree runtime.

Shapes, layer choice and key names follow the EAGLE repo (SafeAILab/EAGLE at commit
cb7e0841fe0c206c6ed74a197ad5e2a1f13f5a2b) and vLLM (vllm-project/vllm at commit
583507d13075783a12ccbd774575974d10ca4959); the code here is written for this runtime.

- EAGLE-1/2 (``eagle/model/cnets1.py``, ``Model`` and ``LlamaDecoderLayer``):
  ``fc`` (``Linear(2H, H)``, with bias) over ``[token embedding; feature]``, one Llama
  decoder layer *without* its input norm (layer index 0 skips ``input_layernorm``),
  no final norm, and the target's LM head. Keys ``fc.*``, ``layers.0.*``, optional
  ``embed_tokens.weight`` (absent: the target's embedding).
- EAGLE-3 (``eagle/model/cnets.py``, ``Model`` and ``LlamaDecoderLayeremb``; vLLM
  ``vllm/model_executor/models/llama_eagle3.py``): ``fc`` (``Linear(3H, H)``, no bias)
  over the target's low/mid/high hidden states, one decoder layer whose attention
  takes ``[input_layernorm(embedding); hidden_norm(feature)]`` (``2H`` into q/k/v),
  ``norm`` and its own ``lm_head`` over a draft vocabulary; draft id ``i`` is target id
  ``i + d2t[i]`` (``t2d`` marks the target ids kept). Keys ``fc.weight``,
  ``midlayer.*``, ``norm.weight``, ``lm_head.weight``, ``d2t``, ``t2d``.
- Which target layers feed EAGLE-3: HF ``hidden_states`` indices
  ``(2, L // 2, L - 3)`` for ``L`` target layers, the input of those layers (vLLM
  ``vllm/model_executor/models/llama.py`` ``get_eagle3_aux_hidden_state_layers``
  collects ``hidden_states + residual`` before layer ``idx``; EAGLE's
  ``modeling_llama_kv.py`` the same three).

Deeper tree levels feed the drafter's own output hidden state back as the feature
(EAGLE's ``topK_genrate``; EAGLE-3 applies ``fc`` only to the target's ``3H``
features). The draft input at position ``i`` pairs the feature of token ``i`` with
token ``i + 1``. The drafter keeps its own one-layer static cache in step with the
target's (``drafter.CachedDraftSession``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medusa_runtime.architectures import LogitTransform, text_config
from medusa_runtime.beam import BeamTree
from medusa_runtime.drafter import (
    CachedDraftSession,
    Drafter,
    DraftSession,
    TreeSpec,
    check_top_k,
    tree_top_k,
)
from medusa_runtime.static_forward import StaticForward
from treeopt.core.tree import Tree
from treeopt.errors import TreeoptError


@dataclass(frozen=True)
class EagleConfig:
    """An EAGLE drafter's shape (its config.json holds these Llama fields)."""

    version: int  # 1 (EAGLE-1/2) or 3
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int  # the target's vocabulary (the embedding's rows)
    draft_vocab_size: int  # EAGLE-3's LM head rows (= vocab_size for EAGLE-1)
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    hidden_act: str = "silu"

    def llama_config(self) -> Any:
        from transformers import LlamaConfig

        fields = {k: v for k, v in asdict(self).items() if k not in ("version",
                                                                       "draft_vocab_size")}
        fields["rope_parameters"] = {"rope_type": "default", "rope_theta": self.rope_theta}
        return LlamaConfig(num_hidden_layers=1, **fields)


def eagle3_feature_layers(num_layers: int) -> tuple[int, int, int]:
    """HF ``hidden_states`` indices EAGLE-3 reads: ``(2, L // 2, L - 3)`` (module doc)."""
    if num_layers < 4:
        raise TreeoptError(f"EAGLE-3 reads target layers (2, L//2, L-3): the target has only "
                           f"{num_layers} layers")
    return (2, num_layers // 2, num_layers - 3)


class _RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class _MLP(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _Attention(nn.Module):
    """Llama attention over one static-cache layer (``input_size`` into q/k/v)."""

    def __init__(self, config: EagleConfig, input_size: int) -> None:
        super().__init__()
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim or config.hidden_size // self.heads
        self.q_proj = nn.Linear(input_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(input_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(input_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor, layer: Any) -> torch.Tensor:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *rotary)
        keys, values = layer.update(k, v)
        groups = self.heads // self.kv_heads
        keys = keys.repeat_interleave(groups, dim=1)
        values = values.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class _Layer(nn.Module):
    """EAGLE's decoder layer: EAGLE-1 without ``input_layernorm``; EAGLE-3 with
    ``input_layernorm`` (embedding) and ``hidden_norm`` (feature) into 2H attention."""

    def __init__(self, config: EagleConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.version = config.version
        self.self_attn = _Attention(config, hidden * (2 if config.version == 3 else 1))
        self.mlp = _MLP(hidden, config.intermediate_size)
        self.post_attention_layernorm = _RMSNorm(hidden, config.rms_norm_eps)
        if config.version == 3:
            self.input_layernorm = _RMSNorm(hidden, config.rms_norm_eps)
            self.hidden_norm = _RMSNorm(hidden, config.rms_norm_eps)

    def forward(self, hidden: torch.Tensor, embeds: torch.Tensor,
                rotary: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor,
                layer: Any) -> torch.Tensor:
        residual = hidden
        if self.version == 3:
            hidden = torch.cat([self.input_layernorm(embeds), self.hidden_norm(hidden)], dim=-1)
        hidden = residual + self.self_attn(hidden, rotary, mask, layer)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class EagleModel(nn.Module):
    """An EAGLE-1/2 or EAGLE-3 drafter's weights (EAGLE repo key names; module doc).

    ``embed_tokens`` may be None until :meth:`attach` gives it the target's.
    """

    def __init__(self, config: EagleConfig, fc_bias: bool | None = None) -> None:
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        self.config = config
        hidden, v3 = config.hidden_size, config.version == 3
        self.embed_tokens = nn.Embedding(config.vocab_size, hidden)
        bias = (not v3) if fc_bias is None else fc_bias
        self.fc = nn.Linear(hidden * (3 if v3 else 2), hidden, bias=bias)
        if v3:
            self.midlayer = _Layer(config)
            self.norm = _RMSNorm(hidden, config.rms_norm_eps)
            self.lm_head = nn.Linear(hidden, config.draft_vocab_size, bias=False)
            self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.long))
            self.register_buffer("t2d", torch.zeros(config.vocab_size, dtype=torch.bool))
        else:
            self.layers = nn.ModuleList([_Layer(config)])
        self.rotary_emb = LlamaRotaryEmbedding(config=config.llama_config())
        self.target_head: nn.Module | None = None  # EAGLE-1: the target's LM head

    @property
    def layer(self) -> _Layer:
        return self.midlayer if self.config.version == 3 else self.layers[0]

    def forward(self, tokens: torch.Tensor, features: torch.Tensor, positions: torch.Tensor,
                mask: torch.Tensor, cache: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, T, V_draft], output hidden [B, T, H])`` for the pairs
        ``(tokens [B, T], features [B, T, F])``; ``cache``: one static-cache layer."""
        embeds = self.embed_tokens(tokens)
        dtype = self.fc.weight.dtype
        features, embeds = features.to(dtype), embeds.to(dtype)
        if self.config.version == 3:
            hidden = self.fc(features) if features.shape[-1] != embeds.shape[-1] else features
        else:
            hidden = self.fc(torch.cat([embeds, features], dim=-1))
        rotary = self.rotary_emb(hidden, positions)
        out = self.layer(hidden, embeds, rotary, mask.to(dtype), cache.layers[0])
        if self.config.version == 3:
            return self.lm_head(self.norm(out)), out
        assert self.target_head is not None
        return self.target_head(out), out


def random_eagle(target: nn.Module, version: int, draft_vocab_size: int | None = None,
                 seed: int = 0) -> EagleModel:
    """A random-weight EAGLE drafter shaped for ``target`` (tests, training starts).

    EAGLE-3: ``draft_vocab_size`` (default: half the target's) draft tokens mapped to
    the target's first ones by ``d2t`` (``t2d`` marks them).
    """
    config = text_config(target)
    vocab = int(target.get_output_embeddings().weight.shape[0])
    draft_vocab = vocab if version == 1 else (draft_vocab_size or max(vocab // 2, 1))
    eagle_config = EagleConfig(
        version=version, hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=getattr(config, "num_key_value_heads", None)
        or config.num_attention_heads,
        vocab_size=vocab, draft_vocab_size=draft_vocab,
        head_dim=getattr(config, "head_dim", None),
        rms_norm_eps=float(getattr(config, "rms_norm_eps", 1e-6)),
        max_position_embeddings=int(getattr(config, "max_position_embeddings", 2048)),
    )
    generator = torch.Generator().manual_seed(seed)
    model = EagleModel(eagle_config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                continue
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
        if version == 3:
            kept = torch.sort(torch.randperm(vocab, generator=generator)[:draft_vocab]).values
            model.d2t.copy_(kept - torch.arange(draft_vocab))
            model.t2d.zero_()
            model.t2d[kept] = True
    return model.eval()


class EagleDrafter(Drafter):
    """An EAGLE drafter for ``target`` (module doc). Checks the shapes match in one line."""

    def __init__(self, model: EagleModel, target: nn.Module) -> None:
        check_eagle_fits(model, target)
        self.model = model
        config = model.config
        if model.embed_tokens is None or getattr(model, "embedding_from_target", False):
            model.embed_tokens = target.get_input_embeddings()
        if config.version == 1:
            model.target_head = _TargetHead(target)
            self.feature_layers: tuple[int, ...] | None = ()
        else:
            self.feature_layers = eagle3_feature_layers(text_config(target).num_hidden_layers)
        self.feature_size = model.fc.in_features - (config.hidden_size if config.version == 1
                                                    else 0)

    def check_tree(self, tree: TreeSpec, vocab_size: int) -> None:
        if not isinstance(tree, Tree | BeamTree):
            raise TreeoptError("dynamic:N trees are chosen by Medusa heads; an EAGLE drafter "
                               "builds dynamic:STEPS,TOPK,TOKENS")
        check_top_k(tree_top_k(tree), self.model.config.draft_vocab_size,
                    "the EAGLE drafter's vocabulary")

    def session(self, tree: TreeSpec, batch_size: int, committed_slots: int,
                device: torch.device) -> DraftSession:
        return _EagleSession(self, tree, batch_size, committed_slots, device)


class _TargetHead(nn.Module):
    """The target's LM head and logit transform (EAGLE-1 drafts through them)."""

    def __init__(self, target: nn.Module) -> None:
        super().__init__()
        self.head = target.get_output_embeddings()
        self.transform = LogitTransform.of(target)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.transform(self.head(hidden.to(self.head.weight.dtype)))


def check_eagle_fits(model: EagleModel, target: nn.Module) -> None:
    """One-line TreeoptError unless ``model`` drafts for ``target`` (hidden size, vocab)."""
    hidden = int(text_config(target).hidden_size)
    vocab = int(target.get_output_embeddings().weight.shape[0])
    config = model.config
    width = 3 if config.version == 3 else 2
    if model.fc.in_features != width * hidden:
        raise TreeoptError(f"the EAGLE-{config.version} drafter reads features of "
                           f"{model.fc.in_features // width} but the target's hidden size is "
                           f"{hidden}")
    if config.vocab_size != vocab:
        raise TreeoptError(f"the EAGLE drafter's vocabulary ({config.vocab_size} tokens) differs "
                           f"from the target's ({vocab})")
    if config.version == 3:
        targets = model.d2t + torch.arange(config.draft_vocab_size, device=model.d2t.device)
        if bool((targets < 0).any()) or bool((targets >= vocab).any()):
            raise TreeoptError("the EAGLE-3 drafter's d2t maps draft tokens outside the "
                               f"target's vocabulary of {vocab}")


class _EagleSession(CachedDraftSession):
    pairs_with_next = True

    def __init__(self, drafter: EagleDrafter, tree: TreeSpec, batch_size: int,
                 committed_slots: int, device: torch.device) -> None:
        self.feature_size = drafter.feature_size
        self.hidden_size = drafter.model.config.hidden_size
        super().__init__(tree, 1, batch_size, committed_slots, device)
        model = drafter.model
        self.model = model
        self.forward = StaticForward(self.static, self._call, model.fc.weight.dtype)
        if model.config.version == 3:
            self.d2t = model.d2t.to(device)

    def _call(self, inputs: Any, mask: torch.Tensor, positions: torch.Tensor,
              static: Any) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, features = inputs
        return self.model(tokens, features, positions, mask, static.cache)

    def to_target(self, ids: torch.Tensor) -> torch.Tensor:
        if self.model.config.version == 3:
            return ids + self.d2t[ids]
        return ids

    def _pass(self, tokens: torch.Tensor, features: torch.Tensor | None,
              positions: torch.Tensor, write_at: torch.Tensor,
              visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        assert features is not None
        return self.forward((tokens, features), positions, write_at, visible)


EAGLE_WEIGHTS_SAFETENSORS = "model.safetensors"
EAGLE_WEIGHTS_PT = "pytorch_model.bin"


def eagle_config_json(config: EagleConfig) -> dict[str, Any]:
    """The config.json an EAGLE repo checkpoint carries (a one-layer Llama config;
    EAGLE-3 adds ``draft_vocab_size``)."""
    fields = {k: v for k, v in asdict(config).items() if k != "version" and v is not None}
    fields.update(architectures=["LlamaForCausalLM"], model_type="llama", num_hidden_layers=1)
    if config.version == 1:
        fields.pop("draft_vocab_size")
    return fields


def save_eagle(model: EagleModel, directory: Any, embed_tokens: bool = False,
               safetensors: bool = True) -> None:
    """Write ``model`` in the EAGLE repo layout: config.json and ``model.safetensors``
    (or ``pytorch_model.bin``); ``embed_tokens`` False leaves the embedding to the
    target, as EAGLE's released checkpoints do."""
    import json
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    skip = ("rotary_emb.", "target_head.") + (() if embed_tokens else ("embed_tokens.",))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
             if not k.startswith(skip)}
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, str(directory / EAGLE_WEIGHTS_SAFETENSORS))
    else:
        torch.save(state, directory / EAGLE_WEIGHTS_PT)
    (directory / "config.json").write_text(json.dumps(eagle_config_json(model.config), indent=2))
