"""medusa_runtime decoding: lossless greedy vs model.generate, acceptance rules, errors."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_lm import NUM_HEADS, VOCAB, greedy_reference, tiny_model, trees
from torch import nn

from medusa_runtime.acceptance import TypicalAcceptance, greedy_accept, typical_accept
from medusa_runtime.decode import generate
from medusa_runtime.heads import MedusaConfig, MedusaHeads
from treeopt.core.tree import Tree
from treeopt.errors import TreeoptError

SHARED = Path(__file__).resolve().parents[2] / "shared"
STORIES = SHARED / "models" / "stories260K"

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def llama() -> nn.Module:
    return tiny_model()


class OracleHeads(nn.Module):
    """Heads that know the base model's greedy continuation, to exercise long accepts.

    Head k at the hidden state of sequence position p puts the true token
    ``x[p + 2 + k]`` at a pseudo-random rank in {0, 1, 2} (so some tree branches
    hit and some miss) over a random ordering of the rest of the vocabulary.
    The position is found by nearest neighbour among the reference hidden states.
    """

    def __init__(self, model: nn.Module, sequence: list[int], num_heads: int) -> None:
        super().__init__()
        self.sequence = sequence
        self.num_heads = num_heads
        with torch.no_grad():
            self.reference = model.get_decoder()(torch.tensor([sequence])).last_hidden_state[0]
        self.vocab = model.get_output_embeddings().weight.shape[0]

    def forward(self, hidden: torch.Tensor, num_heads: int | None = None) -> torch.Tensor:
        position = int((self.reference - hidden).norm(dim=-1).argmin())
        rows = []
        for k in range(num_heads if num_heads is not None else self.num_heads):
            generator = torch.Generator().manual_seed(position * 31 + k)
            order = torch.randperm(self.vocab, generator=generator)
            target = position + 2 + k
            if target < len(self.sequence):
                rank = int(torch.randint(0, 3, (1,), generator=generator))
                true_token = self.sequence[target]
                order = order[order != true_token]
                order = torch.cat([order[:rank], torch.tensor([true_token]), order[rank:]])
            logits = torch.empty(self.vocab)
            logits[order] = torch.arange(self.vocab, 0, -1, dtype=torch.float32)
            rows.append(logits)
        return torch.stack(rows).to(hidden.device)


HYPOTHESIS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@HYPOTHESIS
@given(
    tree=trees(),
    prompt=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=12),
    max_new_tokens=st.integers(1, 24),
)
def test_random_heads_lossless(
    llama: nn.Module, tree: Tree, prompt: list[int], max_new_tokens: int
) -> None:
    torch.manual_seed(len(prompt))
    heads = MedusaHeads(MedusaConfig(NUM_HEADS, 1, 32, VOCAB))
    result = generate(llama, heads, tree, prompt, max_new_tokens)
    assert result.tokens == greedy_reference(llama, prompt, max_new_tokens)
    assert sum(result.accept_lengths) >= len(result.tokens)


@HYPOTHESIS
@given(
    tree=trees(),
    prompt=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=10),
    max_new_tokens=st.integers(1, 30),
    eos_at=st.one_of(st.none(), st.integers(0, 29)),
)
def test_oracle_heads_lossless_with_eos_and_length(
    llama: nn.Module, tree: Tree, prompt: list[int], max_new_tokens: int, eos_at: int | None
) -> None:
    full = greedy_reference(llama, prompt, 40)
    eos = full[eos_at] if eos_at is not None else None
    heads = OracleHeads(llama, prompt + full, NUM_HEADS)
    result = generate(llama, heads, tree, prompt, max_new_tokens, eos_token_id=eos)
    assert result.tokens == greedy_reference(llama, prompt, max_new_tokens, eos)


def test_oracle_chain_accepts_long_paths(llama: nn.Module) -> None:
    prompt = [5, 9, 13]
    full = greedy_reference(llama, prompt, 40)
    heads = OracleHeads(llama, prompt + full, NUM_HEADS)
    # Every rank 0..2 at every level: the oracle's true token is always in the tree.
    paths = [p for d in (1, 2, 3) for p in itertools.product(range(3), repeat=d)]
    tree = Tree.from_paths(paths, num_heads=NUM_HEADS)
    result = generate(llama, heads, tree, prompt, 30)
    assert result.tokens == full[:30]
    assert max(result.accept_lengths) == NUM_HEADS + 1
    assert result.acceleration_rate > 3.0
    # 29 tokens after the prefill's: 7 full steps of 4, then one cut to 1 at the limit.
    assert result.verification_steps == 8
    assert result.tokens_per_verification_step == 29 / 8
    # EOS in the middle of an accepted path stops right after it.
    eos = full[6]
    stopped = generate(llama, heads, tree, prompt, 30, eos_token_id=eos)
    assert stopped.tokens == full[: full.index(eos) + 1]


def test_root_only_tree_is_plain_decoding(llama: nn.Module) -> None:
    prompt = [1, 2, 3, 4]
    result = generate(llama, None, Tree.empty(), prompt, 17)
    assert result.tokens == greedy_reference(llama, prompt, 17)
    assert result.accept_lengths == [1] * 17
    assert result.steps == 17 and result.acceleration_rate == 1.0
    assert result.verification_steps == 16 and result.tokens_per_verification_step == 1.0
    assert result.tokens_per_second > 0


@pytest.mark.parametrize("kind", ["mistral", "qwen2"])
def test_other_architectures_lossless(kind: str) -> None:
    model = tiny_model(kind, seed=3)
    prompt = [3, 1, 4, 1, 5]
    full = greedy_reference(model, prompt, 25)
    heads = OracleHeads(model, prompt + full, NUM_HEADS)
    tree = Tree.from_paths([[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0]], num_heads=3)
    result = generate(model, heads, tree, prompt, 25)
    assert result.tokens == full
    assert result.acceleration_rate > 1.2


def test_typical_extremes(llama: nn.Module) -> None:
    prompt = [7, 7, 7]
    torch.manual_seed(1)
    heads = MedusaHeads(MedusaConfig(NUM_HEADS, 1, 32, VOCAB))
    tree = Tree.from_paths([[0], [0, 0], [1]], num_heads=NUM_HEADS)
    # The threshold is min(1.0, alpha * exp(-H)) and H <= ln V, so alpha >= V makes it 1.0
    # whatever the distribution: no probability exceeds it. (alpha 10 would not: above
    # H = ln 10 the threshold drops below 1.)
    never = TypicalAcceptance(posterior_threshold=1.0, posterior_alpha=float(VOCAB))
    strict = generate(llama, heads, tree, prompt, 12, acceptance=never)
    assert strict.tokens == greedy_reference(llama, prompt, 12)
    assert strict.accept_lengths == [1] * 12
    always = TypicalAcceptance(posterior_threshold=0.0, posterior_alpha=0.0)
    loose = generate(llama, heads, tree, prompt, 12, acceptance=always)
    assert loose.accept_lengths[1:-1] == [3] * (len(loose.accept_lengths) - 2)


def test_typical_threshold_below_one_at_high_entropy() -> None:
    """Why test_typical_extremes needs alpha >= V: with alpha 10, threshold 1.0 is not
    'never accept'. Half the mass on one token, half spread over 9999 others: H = 5.3
    > ln 20, so the threshold is 10 exp(-H) = 0.05 and the token (p = 0.5) passes."""
    vocab = 10_000
    retrieve = torch.tensor([[0, 1]])
    tokens = torch.tensor([0, 1])
    logits = torch.zeros(2, vocab)
    logits[0, 1] = math.log(vocab - 1)  # p(token 1) = 0.5 at the root
    rule = TypicalAcceptance(posterior_threshold=1.0, posterior_alpha=10.0)
    assert int(typical_accept(tokens, logits, retrieve, rule)[1]) == 2
    never = TypicalAcceptance(posterior_threshold=1.0, posterior_alpha=float(vocab))
    assert int(typical_accept(tokens, logits, retrieve, never)[1]) == 1


@pytest.mark.parametrize(("fields", "message"), [
    (dict(posterior_threshold=-1.0), "posterior_threshold must be in"),
    (dict(posterior_threshold=float("nan")), "posterior_threshold must be in"),
    (dict(posterior_alpha=float("nan")), "posterior_alpha must be finite"),
    (dict(posterior_alpha=float("inf")), "posterior_alpha must be finite"),
    (dict(temperature=0.0), "temperature must be finite and > 0"),
])
def test_typical_rule_is_checked(fields: dict, message: str) -> None:
    with pytest.raises(TreeoptError, match=message):
        TypicalAcceptance(**fields)


def test_greedy_accept_by_hand() -> None:
    # Tree: 0 root, 1 (0), 2 (1), 3 (0, 0). Leaves: (1) -> [0, 2, -1], (0, 0) -> [0, 1, 3].
    retrieve = torch.tensor([[0, 2, -1], [0, 1, 3]])
    tokens = torch.tensor([10, 11, 12, 13])
    logits = torch.zeros(4, 20)
    logits[0, 11] = 1.0  # after the root the base model wants 11: node 1 accepted
    logits[1, 13] = 1.0  # after node 1 it wants 13: node 3 accepted
    row, length = greedy_accept(tokens, logits, retrieve)
    assert (int(row), int(length)) == (1, 3)
    logits[1, 13], logits[1, 5] = 0.0, 1.0
    assert int(greedy_accept(tokens, logits, retrieve)[1]) == 2
    logits[0, 11], logits[0, 12] = 0.0, 1.0  # now only the (1) branch matches
    row, length = greedy_accept(tokens, logits, retrieve)
    assert (int(row), int(length)) == (0, 2)


def test_typical_accept_by_hand() -> None:
    retrieve = torch.tensor([[0, 1]])
    tokens = torch.tensor([0, 1])
    # Root distribution: p(1) = 0.2 over 2 tokens; H = entropy of (0.8, 0.2) = 0.5004.
    logits = torch.log(torch.tensor([[0.8, 0.2], [0.5, 0.5]]))
    # threshold = min(0.09, 0.3 * exp(-0.5004)) = 0.09 < 0.2: accepted.
    assert int(typical_accept(tokens, logits, retrieve, TypicalAcceptance())[1]) == 2
    # threshold = min(0.5, 1.0 * exp(-0.5004) = 0.606) = 0.5 > 0.2: rejected.
    rule = TypicalAcceptance(posterior_threshold=0.5, posterior_alpha=1.0)
    assert int(typical_accept(tokens, logits, retrieve, rule)[1]) == 1


def test_typical_ties_go_to_the_likelier_path() -> None:
    # Root then two children (tokens 1 and 2), both above the threshold; rows [0, 1] and
    # [0, 2] accept one candidate each. Token 2 is likelier (0.5 vs 0.3): row 1 wins,
    # though row 0 comes first.
    retrieve = torch.tensor([[0, 1], [0, 2]])
    tokens = torch.tensor([0, 1, 2])
    logits = torch.log(torch.tensor([[0.2, 0.3, 0.5], [1 / 3] * 3, [1 / 3] * 3]))
    row, length = typical_accept(tokens, logits, retrieve, TypicalAcceptance())
    assert (int(row), int(length)) == (1, 2)
    # Swap the probabilities: row 0 wins.
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3], [1 / 3] * 3, [1 / 3] * 3]))
    row, length = typical_accept(tokens, logits, retrieve, TypicalAcceptance())
    assert (int(row), int(length)) == (0, 2)
    # Nothing accepted: the first row, length 1 (the root).
    rule = TypicalAcceptance(posterior_threshold=0.9, posterior_alpha=10.0)
    row, length = typical_accept(tokens, logits, retrieve, rule)
    assert (int(row), int(length)) == (0, 1)


def test_tree_must_fit_heads(llama: nn.Module) -> None:
    heads = MedusaHeads(MedusaConfig(2, 1, 32, VOCAB))
    too_deep = Tree.from_paths([[0], [0, 0], [0, 0, 0]])
    with pytest.raises(TreeoptError, match="depth 3 > 2 Medusa heads"):
        generate(llama, heads, too_deep, [1, 2], 5)
    with pytest.raises(TreeoptError, match="rank 64"):
        generate(llama, heads, Tree.from_paths([[64]]), [1, 2], 5)
    with pytest.raises(TreeoptError, match="needs Medusa heads"):
        generate(llama, None, Tree.from_paths([[0]]), [1, 2], 5)
    with pytest.raises(TreeoptError, match="non-empty"):  # batches work; empty rows do not
        generate(llama, heads, Tree.empty(), [[1, 2], []], 5)


@pytest.mark.skipif(not STORIES.is_dir(), reason="needs ../shared/models/stories260K")
def test_stories260k_lossless() -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(STORIES).eval()
    eos = model.config.eos_token_id
    prompt = [1, 403, 261, 389, 266, 400]
    full = greedy_reference(model, prompt, 60, eos)
    heads = OracleHeads(model, prompt + full, 4)
    tree = Tree.from_paths(
        [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0, 0]], num_heads=4
    )
    result = generate(model, heads, tree, prompt, 60, eos_token_id=eos)
    assert result.tokens == full
    assert result.acceleration_rate > 1.5
    torch.manual_seed(0)
    random_heads = MedusaHeads(MedusaConfig(4, 1, 64, 512))
    assert generate(model, random_heads, tree, prompt, 60, eos_token_id=eos).tokens == full


def test_failed_capture_falls_back_to_eager_or_errors(llama: nn.Module,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from medusa_runtime.decode import TreeDecoder

    heads = MedusaHeads(MedusaConfig(NUM_HEADS, 1, 32, VOCAB))
    decoder = TreeDecoder(llama, heads, Tree.from_paths([[0], [1]]), 32)
    decoder.prefill(torch.tensor([[1, 2, 3]]))
    before = decoder.snapshot()

    def fail() -> None:
        raise RuntimeError("operation not permitted when stream is capturing\ndetails")

    monkeypatch.setattr(decoder, "capture", fail)
    with pytest.warns(RuntimeWarning, match=r"capture failed \(operation not permitted"):
        assert decoder.capture_or_eager(required=False) is False
    assert decoder.capture_error == "operation not permitted when stream is capturing"
    assert decoder.graph is None
    with pytest.raises(TreeoptError, match=r"^CUDA graph capture failed: operation not permitted "
                       r"when stream is capturing$"):
        decoder.capture_or_eager(required=True)
    for got, want in zip(decoder.snapshot(), before, strict=True):
        assert torch.equal(got, want)
    # Eager steps still run from the untouched state.
    decoder.step()
    assert int(decoder.accept_length[0]) >= 1


def test_cuda_graph_on_cpu_is_a_one_line_error(llama: nn.Module) -> None:
    with pytest.raises(TreeoptError, match="cuda_graph=True needs a model on a CUDA device"):
        generate(llama, None, Tree.empty(), [1, 2], 4, cuda_graph=True)


class WordTokenizer:
    """A tokenizer stand-in: one id per word (BOS 1 first), ids -> words again."""

    words = ("<s>", "once", "upon", "a", "time", "the", "dog")

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": [1, *(self.words.index(word) for word in text.lower().split())]}

    def decode(self, tokens: list[int], skip_special_tokens: bool = False) -> str:
        return " ".join(f"w{token}" for token in tokens)


def test_text_prompts_with_a_tokenizer(llama: nn.Module) -> None:
    tokenizer = WordTokenizer()
    texts = ["Once upon a time", "The dog"]
    tree = Tree.from_paths([[0], [1], [0, 0]], num_heads=NUM_HEADS)
    heads = MedusaHeads(MedusaConfig(NUM_HEADS, 1, 32, VOCAB))
    result = generate(llama, heads, tree, texts, 10, tokenizer=tokenizer)
    assert result.tokens == [greedy_reference(llama, [1, 1, 2, 3, 4], 10),
                             greedy_reference(llama, [1, 5, 6], 10)]
    # The continuation as it reads after the prompt: its leading space kept.
    assert result.sequences[0].text == " " + tokenizer.decode(result.tokens[0])
    single = generate(llama, heads, tree, "The dog", 10, tokenizer=tokenizer)
    assert single.tokens == result.tokens[1] and single.text is not None
    assert generate(llama, heads, tree, [1, 5, 6], 10).text is None


@pytest.mark.parametrize(("prompts", "kwargs", "message"), [
    (["Once upon a time", "The dog"], {}, r"^text prompts need tokenizer= \(e\.g\. "),
    ("Once upon a time", {}, r"^text prompts need tokenizer="),
    (["The dog"], dict(tokenizer=WordTokenizer(), attention_mask=[[1, 1]]),
     "attention_mask goes with token ids"),
    ([[1, 2], ["a", "b"]], {}, "must be token ids"),
    ([1.5, 2.0], {}, "must be token ids"),
    ([[1, VOCAB]], {}, rf"token ids in \[0, {VOCAB}\)"),
    ([[-1, 2]], {}, rf"token ids in \[0, {VOCAB}\)"),
    (torch.tensor([[1.0, 2.0]]), {}, "tensor of token ids"),
])
def test_bad_prompts_are_one_line_errors(llama: nn.Module, prompts: object, kwargs: dict,
                                         message: str) -> None:
    with pytest.raises(TreeoptError, match=message) as error:
        generate(llama, None, Tree.empty(), prompts, 4, **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(error.value)


@pytest.mark.skipif(not STORIES.is_dir(), reason="needs ../shared/models/stories260K")
def test_stories260k_text_prompts() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(STORIES).eval()
    tokenizer = AutoTokenizer.from_pretrained(STORIES)
    texts = ["Once upon a time", "The dog"]
    result = generate(model, None, Tree.empty(), texts, 12, tokenizer=tokenizer,
                      eos_token_id=model.config.eos_token_id)
    for text, row in zip(texts, result.sequences, strict=True):
        ids = tokenizer(text)["input_ids"]
        assert row.tokens == greedy_reference(model, ids, 12, model.config.eos_token_id)
        whole = tokenizer.decode(ids + row.tokens, skip_special_tokens=True)
        assert text + row.text == whole  # no word glued to the prompt ("Onceupon")
    assert result.sequences[1].text.startswith(" ")
