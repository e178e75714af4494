"""The verification step is capturable and compilable: no graph breaks, same tokens compiled.

A CUDA graph replays device work only, so the step must never sync with the host
(``.item()``, ``bool(tensor)``, data-dependent Python branches). Dynamo refuses
exactly those as graph breaks, so tracing ``_step`` without a break on CPU is the
check this machine can run for what capture needs on a GPU.
"""

from __future__ import annotations

import pytest
import torch
from tiny_lm import NUM_HEADS, VOCAB, WINDOW, greedy_reference, tiny_model

from medusa_runtime.acceptance import TypicalAcceptance
from medusa_runtime.decode import TreeDecoder, generate_batch
from medusa_runtime.heads import MedusaConfig, MedusaHeads
from medusa_runtime.timing import time_verification_step
from treeopt.core.tree import Tree
from treeopt.errors import TreeoptError

TREE = Tree.from_paths([(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0)], num_heads=NUM_HEADS)


def random_heads(seed: int = 0) -> MedusaHeads:
    torch.manual_seed(seed)
    return MedusaHeads(MedusaConfig(NUM_HEADS, 1, 32, VOCAB)).eval()


@pytest.mark.parametrize(
    ("kind", "acceptance", "batch"),
    [
        ("llama", "greedy", 1),
        ("llama", TypicalAcceptance(), 1),
        ("llama", "greedy", 3),
        ("mistral-window", "greedy", 2),
        ("gemma2-softcap-window", TypicalAcceptance(), 2),  # one mask per layer type
        ("qwen2", "greedy", 2),
        ("bloom-alibi", "greedy", 2),  # the ALiBi bias set per call
        ("falcon-alibi", "greedy", 2),
        ("gpt-neo-local-window", "greedy", 2),  # the attentions' tables swapped per call
    ],
)
def test_step_traces_without_graph_breaks(kind: str, acceptance: object, batch: int) -> None:
    model = tiny_model(kind)
    decoder = TreeDecoder(model, random_heads(), TREE, 64, acceptance=acceptance,  # type: ignore[arg-type]
                          batch_size=batch)
    with torch.inference_mode():
        # Longer than the windowed models' window: the window masks cached keys.
        prompts = torch.randint(0, VOCAB, (batch, WINDOW + 5),
                                generator=torch.Generator().manual_seed(1))
        decoder.prefill(prompts)
        explanation = torch._dynamo.explain(decoder._step)()
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def test_compiled_generate_is_lossless_and_matches_eager_steps() -> None:
    """A batch past a sliding window, compiled: the same tokens and steps as eager."""
    model = tiny_model("mistral-window")
    heads = random_heads()
    prompts = [[3, 17, 42, 8, 5], [(5 * i + 1) % VOCAB for i in range(WINDOW + 20)]]
    references = [greedy_reference(model, prompt, 24) for prompt in prompts]
    eager = generate_batch(model, heads, TREE, prompts, 24)
    before = compiled_graphs()
    compiled = generate_batch(model, heads, TREE, prompts, 24, compile_step=True)
    assert compiled_graphs() == before + 1  # the step really went through dynamo
    assert compiled.compiled and not eager.compiled
    assert compiled.tokens == eager.tokens == references
    for got, want in zip(compiled.sequences, eager.sequences, strict=True):
        assert got.accept_lengths == want.accept_lengths
    # Longer prompts fall in the same cache-length bucket: no second compilation.
    longer = [[*prompt, 9, 11] for prompt in prompts]
    again = generate_batch(model, heads, TREE, longer, 24, compile_step=True)
    assert compiled_graphs() == before + 1
    assert again.tokens == [greedy_reference(model, prompt, 24) for prompt in longer]


def test_compiled_timing_reports_it() -> None:
    before = compiled_graphs()
    result = time_verification_step(tiny_model(), random_heads(), 4, context=16, warmup=0,
                                     repeats=2, compile_step=True)
    assert compiled_graphs() == before + 1
    assert result["compiled"] is True and result["cuda_graph"] is False
    assert len(result["samples_s"]) == 2


def test_failed_compilation_is_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = TreeDecoder(tiny_model(), random_heads(), TREE, 32)
    with torch.inference_mode():
        decoder.prefill(torch.tensor([[1, 2, 3]]))
    before = decoder.snapshot()

    def broken() -> None:
        decoder.write_length.add_(5)  # a partial step: warm_up must put the state back
        raise torch._dynamo.exc.Unsupported("data-dependent branch\nmore detail")

    monkeypatch.setattr(decoder, "run_step", broken)
    with pytest.raises(TreeoptError, match=r"^torch.compile of the verification step failed: "
                                           r"data-dependent branch$"):
        decoder.warm_up()
    assert all(torch.equal(a, b) for a, b in zip(before, decoder.snapshot(), strict=True))


def test_measured_latency_table_records_compilation() -> None:
    from treeopt.model.measure import measure_latency

    table = measure_latency(tiny_model(), random_heads(), "tiny", [1], [16], [1, 2], "cpu",
                            "float32", warmup=0, repeats=1, show_progress=False,
                            compile_step=True)
    assert table.method["compiled_step"] is True
    assert sorted(table.measurements) == [(1, 16, 1), (1, 16, 2)]
