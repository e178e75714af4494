"""The lossless promise across architectures, and one-line refusals for the rest.

Every supported architecture (``medusa_runtime.architectures.SUPPORTED_MODEL_TYPES``)
decodes exactly ``model.generate``'s greedy tokens: random trees of 1..64 tokens,
random prompts up to past the sliding window, EOS inside accepted paths, batches
of left-padded prompts of different lengths. The compiled step is covered in
``test_runtime_compile.py`` (one compilation per code path: full attention,
sliding window, mixed layer types). Unsupported ones are refused in one line
before the decoder runs.
"""

from __future__ import annotations

import random
import zlib

import pytest
import torch
from tiny_lm import (
    ARCHITECTURES,
    NUM_HEADS,
    SINGLE_PROMPT,
    VOCAB,
    WINDOW,
    BatchOracleHeads,
    full_tree,
    greedy_reference,
    tiny_config,
    tiny_model,
)
from torch import nn

from medusa_runtime.architectures import SUPPORTED_MODEL_TYPES, LogitTransform, decoder_call
from medusa_runtime.decode import TreeDecoder, generate, generate_batch
from medusa_runtime.heads import MedusaConfig, MedusaHeads
from treeopt.core.tree import Tree
from treeopt.errors import TreeoptError

torch.set_num_threads(1)

CASES = 3  # per architecture: each decodes a batch of BATCH prompts
BATCH = 3
MAX_TREE_TOKENS = 64
MAX_RANK = 8  # top-k per head: enough for 64-token trees of depth NUM_HEADS
MAX_PROMPT = 2 * WINDOW + 8  # past the window, so windowed layers drop keys
MAX_NEW = 20


def random_tree(rng: random.Random) -> Tree:
    """A random valid tree of 1..MAX_TREE_TOKENS tokens (root included), depth <= NUM_HEADS."""
    paths: set[tuple[int, ...]] = set()
    target = rng.randint(1, MAX_TREE_TOKENS) - 1
    while len(paths) < target:
        parent = rng.choice([(), *(p for p in paths if len(p) < NUM_HEADS)])
        paths.add((*parent, rng.randrange(MAX_RANK)))
    return Tree.from_paths(sorted(paths), num_heads=NUM_HEADS, allow_empty=True)


def until_eos(tokens: list[int], eos: int | None) -> list[int]:
    """Greedy output cut after its first ``eos`` (what generate with that EOS returns)."""
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def test_every_supported_type_is_in_the_suite() -> None:
    covered = {tiny_config(kind).model_type for kind in ARCHITECTURES}
    assert covered == set(SUPPORTED_MODEL_TYPES)


def test_the_docs_list_the_supported_types() -> None:
    import re
    from pathlib import Path

    page = (Path(__file__).parents[1] / "docs" / "runtime.md").read_text()
    listed = page.split("Supported model types (")[1].split(".\n")[0]
    count, names = listed.split(")", 1)
    assert int(count) == len(SUPPORTED_MODEL_TYPES)
    assert re.findall(r"`([a-z0-9_]+)`", names) == list(SUPPORTED_MODEL_TYPES)


@pytest.mark.parametrize("kind", sorted(ARCHITECTURES))
def test_lossless(kind: str) -> None:
    model = tiny_model(kind, seed=1)
    rng = random.Random(zlib.crc32(kind.encode()))
    longest_accept = 1
    batch = 1 if kind in SINGLE_PROMPT else BATCH
    for _ in range(CASES):
        prompts = [[rng.randrange(VOCAB) for _ in range(rng.randint(1, MAX_PROMPT))]
                   for _ in range(batch)]
        fulls = [greedy_reference(model, prompt, MAX_NEW) for prompt in prompts]
        # An EOS that row 0 emits after a few tokens: it stops there, inside a path.
        eos = rng.choice([*fulls[0][3:], None])
        heads = BatchOracleHeads(model, [p + f for p, f in zip(prompts, fulls, strict=True)],
                                 NUM_HEADS)
        result = generate_batch(model, heads, random_tree(rng), prompts, MAX_NEW,
                                eos_token_id=eos)
        assert result.tokens == [until_eos(full, eos) for full in fulls]
        longest_accept = max(longest_accept, *(max(row.accept_lengths) for row in result.sequences))
        # Every rank the oracle uses at every level: long accepted paths.
        single = generate(model, heads, full_tree(), prompts[-1], MAX_NEW)
        assert single.tokens == fulls[-1]
        longest_accept = max(longest_accept, *single.accept_lengths)
    assert longest_accept == NUM_HEADS + 1  # the oracle heads made whole paths accepted


@pytest.mark.parametrize("kind", ["mistral-window", "gemma2-softcap-window"])
def test_the_window_matters(kind: str) -> None:
    """Past the window, the windowed model's tokens differ from the same weights unwindowed,
    so the lossless suite really checks the window."""
    prompt = [(7 * i + 3) % VOCAB for i in range(3 * WINDOW)]
    windowed = tiny_model(kind, seed=1)
    full = tiny_model(kind, seed=1, sliding_window=100 * WINDOW)  # a window never reached
    tree = Tree.from_paths([[0], [1], [0, 0], [0, 0, 0]], num_heads=NUM_HEADS)
    torch.manual_seed(0)
    heads = MedusaHeads(MedusaConfig(NUM_HEADS, 1, 32, VOCAB))
    tokens = generate(windowed, heads, tree, prompt, 2 * WINDOW).tokens
    assert tokens == greedy_reference(windowed, prompt, 2 * WINDOW)
    assert tokens != greedy_reference(full, prompt, 2 * WINDOW)


@pytest.mark.parametrize("kind", ["granite-logits-scaling", "cohere-logit-scale",
                                  "gemma2-softcap-window", "gemma3-softcap-window"])
def test_logit_transform_is_the_models_own(kind: str) -> None:
    model = tiny_model(kind, seed=2)
    transform = LogitTransform.of(model)
    assert transform != LogitTransform()
    ids = torch.tensor([[5, 9, 13, 2, 7]])
    with torch.no_grad():
        hidden = model.get_decoder()(ids).last_hidden_state
        raw = model.get_output_embeddings()(hidden)
        want = model(ids).logits
    assert torch.allclose(transform(raw), want, atol=1e-5)
    assert not torch.allclose(raw, want, atol=1e-3)  # the transform changes probabilities
    # The decoder's logits (what typical acceptance reads) are the model's own.
    decoder = TreeDecoder(model, None, Tree.empty(), 16)
    assert torch.allclose(decoder._logits(hidden), want, atol=1e-5)


def _forward_calls(model: nn.Module) -> list[int]:
    calls: list[int] = []
    model.get_decoder().register_forward_hook(lambda *_: calls.append(1))
    return calls


def _refused(model: nn.Module, match: str, prompt_length: int = 4, max_new: int = 4) -> None:
    calls = _forward_calls(model)
    with pytest.raises(TreeoptError, match=match) as error:
        generate(model, None, Tree.empty(), list(range(1, prompt_length + 1)), max_new)
    assert "\n" not in str(error.value)
    assert calls == []  # refused before decoding


def test_length_dependent_rope_is_refused() -> None:
    dynamic = tiny_model("llama", rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    _refused(dynamic, r"^llama with rope_type 'dynamic' is not supported")
    half = 32 // 4 // 2  # head_dim / 2 factors
    longrope = tiny_model("phi3-window", original_max_position_embeddings=64, rope_scaling={
        "rope_type": "longrope", "short_factor": [1.0] * half, "long_factor": [2.0] * half})
    _refused(longrope, r"^phi3 with rope_type 'longrope' is not supported")


def test_unsupported_families_are_refused_in_one_line() -> None:
    from transformers import AutoModelForCausalLM, CTRLConfig, MambaConfig

    configs = {
        "'ctrl'": CTRLConfig(vocab_size=VOCAB, n_embd=32, dff=64, n_layer=2, n_head=4),
        "'mamba'": MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2),
    }
    for name, config in configs.items():
        model = AutoModelForCausalLM.from_config(config).eval()
        _refused(model, rf"^model type {name} is not supported by medusa_runtime \(supported: "
                        r"biogpt, .*, xglm\)$")


def test_mpt_batches_and_compiling_are_refused_in_one_line() -> None:
    model = tiny_model("mpt-alibi")
    calls = _forward_calls(model)
    with pytest.raises(TreeoptError, match=r"^mpt decodes one prompt at a time: MPT takes its "
                                           r"ALiBi bias without a batch dimension"):
        generate_batch(model, None, Tree.empty(), [[1, 2, 3], [4, 5]], 4)
    with pytest.raises(TreeoptError, match=r"^mpt cannot run a compiled step: MPT's attention "
                                           r"reads the cache length on the host"):
        generate(model, None, Tree.empty(), [1, 2, 3], 4, compile_step=True)
    assert calls == []


@pytest.mark.parametrize("kind", ["bloom-alibi", "falcon-alibi"])
def test_alibi_bias_is_the_models_own_at_contiguous_positions(kind: str) -> None:
    """Where slots are positions (a plain sequence), the runtime's bias is the model's own:
    the same slopes and the same arithmetic (Falcon multiplies in bfloat16)."""
    import sys

    model = tiny_model(kind)
    decoder = model.get_decoder()
    seen: list[dict] = []
    owner = decoder if kind == "bloom-alibi" else sys.modules[type(decoder).__module__]
    own = owner.build_alibi_tensor(torch.ones(2, 300, dtype=torch.long), 4, torch.float32)
    layer = decoder.h[0]
    layer.register_forward_hook(lambda _, args, kwargs, out: seen.append(kwargs),
                                with_kwargs=True)
    positions = torch.arange(300).expand(2, 300)  # past 256: bfloat16 rounds the products
    decoder_call(model, 2)(positions, positions, input_ids=torch.ones(2, 300, dtype=torch.long),
                           attention_mask=torch.zeros(2, 1, 300, 300), use_cache=False)
    if kind == "bloom-alibi":
        assert torch.equal(seen[0]["alibi"], own)
    else:  # Falcon folds the bias, over sqrt(head_dim), into the mask
        mask = seen[0]["attention_mask"]
        assert torch.equal(mask[:, :, 0], own.reshape(2, 4, 1, 300)[:, :, 0] / 8 ** 0.5)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "opt", "mpt-alibi"])
def test_positions_past_the_limit_are_refused(kind: str) -> None:
    """Up to the last position of the table decodes (OPT's is offset by 2); past it is refused."""
    model = tiny_model(kind, max_position_embeddings=32, **(
        {"max_seq_len": 32} if kind == "mpt-alibi" else {}))
    # 20 prompt tokens + 13 new: the last step's root sits at position 31, the limit's last.
    tokens = generate(model, None, Tree.empty(), list(range(20)), 13).tokens
    assert tokens == greedy_reference(model, list(range(20)), 13)
    _refused(model, r"^decoding would reach position 32, past the model's limit of 32 positions",
             prompt_length=20, max_new=14)
    tree = Tree.from_paths([[0], [0, 0]], num_heads=NUM_HEADS)
    heads = MedusaHeads(MedusaConfig(NUM_HEADS, 1, 32, VOCAB))
    with pytest.raises(TreeoptError, match="position 33"):  # the tree reaches 2 deeper
        generate(model, heads, tree, list(range(20)), 13)


def test_flash_attention_is_refused() -> None:
    model = tiny_model("llama")
    model.config._attn_implementation_internal = "flash_attention_2"
    if model.config._attn_implementation != "flash_attention_2":
        pytest.skip("this transformers keeps the attention implementation elsewhere")
    _refused(model, r"^attention implementation 'flash_attention_2' ignores the tree mask")


def test_a_multimodal_wrapper_is_not_its_text_decoder() -> None:
    from transformers import AutoModelForImageTextToText, Gemma3Config

    text = tiny_config("gemma3-softcap-window").to_dict()
    config = Gemma3Config(text_config=text, vision_config=dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        image_size=28, patch_size=14), mm_tokens_per_image=4)
    model = AutoModelForImageTextToText.from_config(config).eval()
    _refused(model, r"^model type 'gemma3' is not supported by medusa_runtime")


@pytest.mark.parametrize("kind", ["bloom-alibi", "gpt-neo-local-window"])
def test_draft_models_with_positions_beyond_position_ids_are_refused(kind: str) -> None:
    from medusa_runtime.drafter import DraftModelDrafter

    target = tiny_model("llama")
    tree = Tree.from_paths([[0], [0, 0]], num_heads=NUM_HEADS)
    calls = _forward_calls(target)
    with pytest.raises(TreeoptError, match=r"draft models are not supported: their positions "
                                           r"enter beyond position_ids") as error:
        generate(target, None, tree, [1, 2, 3], 4, drafter=DraftModelDrafter(tiny_model(kind)))
    assert "\n" not in str(error.value)
    assert calls == []
