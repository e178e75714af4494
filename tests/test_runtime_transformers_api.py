"""The runtime calls transformers only through non-deprecated names.

transformers announces renames with a FutureWarning (5.24: ``past_key_values=`` ->
``cache=``, removed in 5.40). Here those warnings are errors, so the next rename
fails CI rather than a user's upgrade.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from tiny_lm import NUM_HEADS, VOCAB, WINDOW, greedy_reference, tiny_model
from torch import nn

from medusa_runtime import decode
from medusa_runtime.architectures import cache_argument
from medusa_runtime.heads import MedusaConfig, MedusaHeads
from treeopt.core.tree import Tree

TREE = Tree.from_paths([[0], [1], [0, 0], [0, 0, 0]], num_heads=NUM_HEADS)


@contextmanager
def deprecations_are_errors() -> Iterator[None]:
    """transformers' FutureWarning (its deprecation category) and any DeprecationWarning
    attributed to transformers or the runtime raise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=FutureWarning)
        warnings.filterwarnings("error", category=DeprecationWarning,
                                module=r"(transformers|medusa_runtime)(\.|$)")
        yield


def heads() -> MedusaHeads:
    torch.manual_seed(0)
    return MedusaHeads(MedusaConfig(NUM_HEADS, 1, 32, VOCAB))


@pytest.mark.parametrize("kind", ["llama", "mistral-window", "gemma2-softcap-window"])
def test_decoding_raises_no_transformers_deprecation(kind: str) -> None:
    model = tiny_model(kind)
    prompts = [[1, 2, 3], [(3 * i) % VOCAB for i in range(WINDOW + 4)]]
    with deprecations_are_errors():
        result = decode.generate(model, heads(), TREE, prompts, 8)
    assert result.tokens == [greedy_reference(model, prompt, 8) for prompt in prompts]


def test_the_old_cache_name_would_fail_here(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model()
    if cache_argument(model.get_decoder()) != "cache":
        pytest.skip("this transformers still names the cache past_key_values")
    monkeypatch.setattr(decode, "cache_argument", lambda decoder: "past_key_values")
    with deprecations_are_errors(), pytest.raises(FutureWarning, match="past_key_values"):
        decode.generate(model, heads(), TREE, [1, 2, 3], 4)


class OldDecoder(nn.Module):
    def forward(self, input_ids=None, attention_mask=None, past_key_values=None):
        return input_ids


class NewDecoder(nn.Module):
    def forward(self, input_ids=None, attention_mask=None, cache=None):
        return input_ids


def test_cache_argument_follows_the_signature() -> None:
    assert cache_argument(OldDecoder()) == "past_key_values"
    assert cache_argument(NewDecoder()) == "cache"
    # The installed transformers: whatever name its decoders take.
    decoder = tiny_model().get_decoder()
    assert cache_argument(decoder) in inspect.signature(decoder.forward).parameters
