"""Tiny random HF causal LMs, plain greedy decoding by transformers, random valid trees."""

from __future__ import annotations

import itertools
import math

import torch
from hypothesis import strategies as st
from torch import nn

from treeopt.core.tree import Tree

VOCAB = 64
NUM_HEADS = 3
ORACLE_RANKS = 3  # the oracle heads put the true token at rank 0, 1 or 2


WINDOW = 16  # sliding window of the windowed tiny models; suites' prompts run past it
TINY_SHAPE = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    pad_token_id=0, bos_token_id=1, eos_token_id=2,
)
# Final logit softcap of the tiny Gemma2/3: small enough to change their tiny logits.
SOFTCAP = 0.2
MOE = dict(num_experts_per_tok=2, moe_intermediate_size=32)
# kind -> (transformers config class, fields beyond TINY_SHAPE). Windowed kinds get
# WINDOW; hybrid ones (Qwen2/3 with max_window_layers, Gemma2/3) mix full and window
# layers; Granite, Cohere and Gemma2/3 transform their logits.
ARCHITECTURES: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", {}),
    "llama-linear-rope": ("LlamaConfig", dict(rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "llama-llama3-rope": ("LlamaConfig", dict(rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32})),
    "llama-yarn-rope": ("LlamaConfig", dict(rope_scaling={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32})),
    "mistral": ("MistralConfig", dict(sliding_window=None)),
    "mistral-window": ("MistralConfig", dict(sliding_window=WINDOW)),
    "mixtral-window": ("MixtralConfig", dict(sliding_window=WINDOW, num_local_experts=4,
                                             num_experts_per_tok=2)),
    "qwen2": ("Qwen2Config", dict(use_sliding_window=False)),
    "qwen2-hybrid-window": ("Qwen2Config", dict(use_sliding_window=True, sliding_window=WINDOW,
                                                max_window_layers=1)),
    "qwen2-moe": ("Qwen2MoeConfig", dict(num_experts=4, shared_expert_intermediate_size=32,
                                         **MOE)),
    "qwen3-hybrid-window": ("Qwen3Config", dict(use_sliding_window=True, sliding_window=WINDOW,
                                                max_window_layers=1, head_dim=8)),
    "qwen3-moe": ("Qwen3MoeConfig", dict(num_experts=4, head_dim=8, **MOE)),
    "gemma": ("GemmaConfig", dict(head_dim=8)),
    "gemma2-softcap-window": ("Gemma2Config", dict(head_dim=8, sliding_window=WINDOW,
                                                       final_logit_softcapping=SOFTCAP)),
    "gemma3-softcap-window": ("Gemma3TextConfig", dict(head_dim=8, sliding_window=WINDOW,
                                                       sliding_window_pattern=2,
                                                       final_logit_softcapping=SOFTCAP)),
    "phi3-window": ("Phi3Config", dict(sliding_window=WINDOW)),
    "phi": ("PhiConfig", {}),
    "granite-logits-scaling": ("GraniteConfig", dict(logits_scaling=4.0)),
    "cohere-logit-scale": ("CohereConfig", dict(logit_scale=0.25)),
    "starcoder2-window": ("Starcoder2Config", dict(sliding_window=WINDOW)),
    "stablelm": ("StableLmConfig", {}),
    "olmo2": ("Olmo2Config", {}),
    "gpt-neox": ("GPTNeoXConfig", {}),
    "falcon-rotary": ("FalconConfig", dict(num_kv_heads=2, new_decoder_architecture=True)),
    # Learned or sinusoidal absolute positions (OPT and BioGPT offset theirs by 2).
    "gpt2": ("GPT2Config", dict(tie_word_embeddings=False)),
    "gpt-bigcode": ("GPTBigCodeConfig", dict(tie_word_embeddings=False)),
    "gpt-neo-local-window": ("GPTNeoConfig", dict(attention_types=[[["global", "local"], 1]],
                                                  window_size=WINDOW, tie_word_embeddings=False)),
    "opt": ("OPTConfig", dict(ffn_dim=64, word_embed_proj_dim=32, tie_word_embeddings=False)),
    "biogpt": ("BioGptConfig", dict(tie_word_embeddings=False)),
    "xglm": ("XGLMConfig", dict(ffn_dim=64, tie_word_embeddings=False)),
    # Rotary on part of each head, NoPE layers, QK norms; windows where the family has them.
    "gptj": ("GPTJConfig", dict(rotary_dim=4, tie_word_embeddings=False)),
    "codegen": ("CodeGenConfig", dict(rotary_dim=4, tie_word_embeddings=False)),
    "olmo": ("OlmoConfig", dict(tie_word_embeddings=False)),
    "helium": ("HeliumConfig", dict(head_dim=8, tie_word_embeddings=False)),
    "smollm3-nope-window": ("SmolLM3Config", dict(
        no_rope_layer_interval=2, use_sliding_window=True, sliding_window=WINDOW,
        tie_word_embeddings=False)),
    "glm": ("GlmConfig", dict(head_dim=8, tie_word_embeddings=False)),
    "exaone4-window": ("Exaone4Config", dict(sliding_window=WINDOW, sliding_window_pattern=2,
                                             tie_word_embeddings=False)),
    "cohere2-window": ("Cohere2Config", dict(sliding_window=WINDOW, sliding_window_pattern=2,
                                             tie_word_embeddings=False)),
    # ALiBi: the bias follows token positions (medusa_runtime.architectures.decoder_call).
    "bloom-alibi": ("BloomConfig", dict(tie_word_embeddings=False)),
    "mpt-alibi": ("MptConfig", dict(max_seq_len=256)),
    "falcon-alibi": ("FalconConfig", dict(alibi=True, num_kv_heads=4, tie_word_embeddings=False)),
}
# Kinds whose default init (std 0.02) decodes one token over and over: their matrices are
# redrawn with fan-in scaling (gain REDRAW_GAIN) so their greedy tokens depend on
# positions and masks, and a wrong bias or window shows as a mismatch.
REDRAWN = frozenset(list(ARCHITECTURES)[list(ARCHITECTURES).index("gpt2"):])
REDRAW_GAIN = 2.0
# Kinds that decode one prompt at a time (medusa_runtime refuses a batch for them).
SINGLE_PROMPT = frozenset({"mpt-alibi"})


def tiny_config(kind: str = "llama", **fields):  # -> a transformers PretrainedConfig
    """A 2-layer random causal LM config of ``kind`` (see :data:`ARCHITECTURES`), float32."""
    import transformers

    class_name, extra = ARCHITECTURES[kind]
    return getattr(transformers, class_name)(**{**TINY_SHAPE, **extra, **fields})


def tiny_model(kind: str = "llama", seed: int = 0, **fields) -> nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(kind, **fields)).eval()
    if kind in REDRAWN:
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.dim() >= 2:
                    parameter.normal_(0.0, REDRAW_GAIN / math.sqrt(parameter.shape[-1]))
    return model


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


class BatchOracleHeads(nn.Module):
    """Heads that know every row's greedy continuation, so rows accept long, unequal paths.

    For each hidden state ``[H]`` of the batch, the nearest reference hidden state
    over all rows' sequences gives (row, position p); head k puts the true token
    ``x[p + 2 + k]`` at a pseudo-random rank in {0, 1, 2} over a random order of
    the rest of the vocabulary. Returns ``[K, B, V]``.
    """

    def __init__(self, model: nn.Module, sequences: list[list[int]], num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.vocab = model.get_output_embeddings().weight.shape[0]
        self.entries: list[tuple[int, list[int]]] = []  # (position, sequence) per reference
        references = []
        with torch.no_grad():
            for sequence in sequences:
                states = model.get_decoder()(torch.tensor([sequence])).last_hidden_state[0]
                references.append(states)
                self.entries += [(position, sequence) for position in range(len(sequence))]
        self.reference = torch.cat(references)

    def _row(self, hidden: torch.Tensor, num_heads: int) -> torch.Tensor:
        position, sequence = self.entries[int((self.reference - hidden).norm(dim=-1).argmin())]
        rows = []
        for k in range(num_heads):
            generator = torch.Generator().manual_seed(position * 31 + k + 7 * sequence[0])
            order = torch.randperm(self.vocab, generator=generator)
            target = position + 2 + k
            if target < len(sequence):
                rank = int(torch.randint(0, ORACLE_RANKS, (1,), generator=generator))
                order = order[order != sequence[target]]
                order = torch.cat([order[:rank], torch.tensor([sequence[target]]), order[rank:]])
            logits = torch.empty(self.vocab)
            logits[order] = torch.arange(self.vocab, 0, -1, dtype=torch.float32)
            rows.append(logits)
        return torch.stack(rows)

    def forward(self, hidden: torch.Tensor, num_heads: int | None = None) -> torch.Tensor:
        count = num_heads if num_heads is not None else self.num_heads
        return torch.stack([self._row(row, count) for row in hidden], dim=1)


def full_tree(depth: int = NUM_HEADS) -> Tree:
    """Every rank 0..2 at every level: the oracle's true token is always in the tree."""
    paths = [
        p for d in range(1, depth + 1) for p in itertools.product(range(ORACLE_RANKS), repeat=d)
    ]
    return Tree.from_paths(paths, num_heads=depth)


# A random valid tree: each new node extends a random existing node (or the root).
@st.composite
def trees(draw: st.DrawFn, max_nodes: int = 12, max_rank: int = 3) -> Tree:
    paths: set[tuple[int, ...]] = set()
    for _ in range(draw(st.integers(0, max_nodes))):
        parents = [(), *sorted(p for p in paths if len(p) < NUM_HEADS)]
        parent = draw(st.sampled_from(parents))
        paths.add((*parent, draw(st.integers(0, max_rank))))
    return Tree.from_paths(sorted(paths), num_heads=NUM_HEADS, allow_empty=True)
