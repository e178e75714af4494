"""Tiny random HF causal LMs, plain greedy decoding by transformers, random valid trees."""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import nn

from treeopt.core.tree import Tree

VOCAB = 64
NUM_HEADS = 3


def tiny_config(kind: str = "llama"):  # -> a transformers PretrainedConfig
    """A 2-layer random causal LM config with GQA, float32."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    shape = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )
    if kind == "mistral":
        return MistralConfig(sliding_window=None, **shape)
    if kind == "qwen2":
        return Qwen2Config(use_sliding_window=False, **shape)
    return LlamaConfig(**shape)


def tiny_model(kind: str = "llama", seed: int = 0) -> nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(kind)).eval()


def greedy_reference(
    model: nn.Module, prompt: list[int], max_new_tokens: int, eos: int | None = None
) -> list[int]:
    """Plain greedy decoding by transformers itself."""
    input_ids = torch.tensor([prompt])
    output = model.generate(
        input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
        do_sample=False, eos_token_id=eos, pad_token_id=0,
    )
    return output[0, len(prompt):].tolist()


# A random valid tree: each new node extends a random existing node (or the root).
@st.composite
def trees(draw: st.DrawFn, max_nodes: int = 12, max_rank: int = 3) -> Tree:
    paths: set[tuple[int, ...]] = set()
    for _ in range(draw(st.integers(0, max_nodes))):
        parents = [(), *sorted(p for p in paths if len(p) < NUM_HEADS)]
        parent = draw(st.sampled_from(parents))
        paths.add((*parent, draw(st.integers(0, max_rank))))
    return Tree.from_paths(sorted(paths), num_heads=NUM_HEADS, allow_empty=True)
