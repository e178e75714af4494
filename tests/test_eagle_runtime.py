"""EAGLE drafters and the engine-style dynamic tree dynamic:S,K,N in medusa_runtime.

Random-weight EAGLE-1 (EAGLE repo layout, safetensors, embedding from the target) and
EAGLE-3 (draft vocabulary smaller than the target's, d2t/t2d, pytorch_model.bin)
checkpoints for ../shared/models/stories260K decode exactly the greedy tokens with a
static tree and with dynamic:3,4,8; bad drafters fail in one line; the beam follows
the shared spec (notes: selection order, ties, N counts the root).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medusa_runtime.beam import BeamTree, build_beam_tree
from medusa_runtime.decode import TreeDecoder, generate
from medusa_runtime.drafter import DraftModelDrafter
from medusa_runtime.eagle import random_eagle, save_eagle
from treeopt.errors import TreeoptError
from treeopt.files.tree_file import load_tree
from treeopt.model.loading import load_eagle

torch.set_num_threads(1)
STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"
PROMPTS = [[1, 403, 407, 261, 378], [1, 70, 33], [1, 9, 300, 301, 302, 303, 304, 8]]
pytestmark = pytest.mark.skipif(not STORIES.is_dir(), reason="needs ../shared/models/stories260K")


@pytest.fixture(scope="module")
def target() -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(STORIES, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def checkpoints(target: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("eagle")
    save_eagle(random_eagle(target, 1, seed=1), root / "eagle1")
    save_eagle(random_eagle(target, 3, draft_vocab_size=200, seed=2), root / "eagle3",
               safetensors=False, embed_tokens=True)
    return {"eagle1": root / "eagle1", "eagle3": root / "eagle3", "root": root}


def greedy(model: torch.nn.Module, prompt: list[int], count: int,
           eos: int | None = None) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=count,
                         do_sample=False, eos_token_id=eos, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("name", ["eagle1", "eagle3"])
@pytest.mark.parametrize("tree", ["mc_sim_7b_63", "dynamic:3,4,8"])
def test_random_eagle_decodes_the_greedy_tokens(target, checkpoints, name, tree) -> None:
    drafter = load_eagle(str(checkpoints[name]), target)
    spec = BeamTree.parse(tree) or load_tree(tree)
    eos = greedy(target, PROMPTS[2], 30)[12]
    result = generate(target, None, spec, PROMPTS, 30, eos_token_id=eos, drafter=drafter)
    for prompt, tokens in zip(PROMPTS, result.tokens, strict=True):
        assert tokens == greedy(target, prompt, 30, eos)


def test_beam_with_a_perfect_drafter_accepts_whole_paths_and_stops_at_eos(target) -> None:
    drafter = DraftModelDrafter(target)  # the target drafts for itself: every path accepted
    full = greedy(target, PROMPTS[0], 30)
    eos = full[9]  # inside an accepted path of 4 (steps of S + 1 = 4 tokens)
    result = generate(target, None, BeamTree(3, 4, 8), PROMPTS[:2], 30, eos_token_id=eos,
                      drafter=drafter)
    assert result.sequences[0].tokens == full[:10]
    assert result.sequences[0].accept_lengths[1:3] == [4, 4]
    assert result.sequences[1].tokens == greedy(target, PROMPTS[1], 30, eos)


@pytest.mark.parametrize("name,tree", [("eagle3", "dynamic:3,4,8"), ("eagle1", "mc_sim_7b_63")])
def test_eagle_step_traces_without_graph_breaks(target, checkpoints, name, tree) -> None:
    drafter = load_eagle(str(checkpoints[name]), target)
    spec = BeamTree.parse(tree) or load_tree(tree)
    decoder = TreeDecoder(target, None, spec, 128, batch_size=2, drafter=drafter)
    with torch.inference_mode():
        decoder.prefill(torch.tensor([PROMPTS[0], PROMPTS[0][::-1]]))
        explanation = torch._dynamo.explain(decoder._step)()
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_compiled_eagle_beam_is_lossless(target, checkpoints) -> None:
    drafter = load_eagle(str(checkpoints["eagle3"]), target)
    result = generate(target, None, BeamTree(2, 2, 4), PROMPTS[0], 12, compile_step=True,
                      drafter=drafter)
    assert result.compiled and result.tokens == greedy(target, PROMPTS[0], 12)


def _reference_beam(spec: BeamTree, root_probs: list[float],
                    child_probs: dict[tuple[int, ...], list[float]]) -> list[tuple[int, ...]]:
    """The spec in plain Python: candidates as rank paths, their scores, the N-1 best."""
    k = spec.top_k
    top = sorted(range(len(root_probs)), key=lambda t: -root_probs[t])[:k]
    candidates = [((t,), root_probs[t]) for t in top]
    frontier = list(candidates)
    for _ in range(2, spec.steps + 1):
        level = []
        for path, score in frontier:
            probs = child_probs[path]
            for t in sorted(range(len(probs)), key=lambda t: -probs[t])[:k]:
                level.append(((*path, t), score * probs[t]))
        candidates += level
        frontier = [level[i] for i in sorted(range(len(level)), key=lambda i: -level[i][1])[:k]]
    order = sorted(range(len(candidates)), key=lambda i: -candidates[i][1])
    chosen, kept = [], set()
    for i in order:
        path = candidates[i][0]
        if len(chosen) < spec.tokens - 1 and (len(path) == 1 or path[:-1] in kept):
            chosen.append(path)
            kept.add(path)
    return sorted(chosen, key=lambda p: next(i for i, c in enumerate(candidates) if c[0] == p))


@pytest.mark.parametrize("spec", [BeamTree(3, 4, 8), BeamTree(3, 2, 11), BeamTree(1, 3, 3),
                                  BeamTree(4, 1, 5), BeamTree(2, 3, 13)])
def test_beam_follows_the_spec(spec: BeamTree) -> None:
    vocab, generator = 6, torch.Generator().manual_seed(spec.tokens)
    # Tokens are token ids = ranks by construction (a distinct probability per token);
    # probabilities of a parent's children depend on the path so levels differ.
    table = {}
    for depth in range(spec.steps):
        for path in itertools.product(range(vocab), repeat=depth):
            table[path] = torch.softmax(torch.randn(vocab, generator=generator) * 2, 0).tolist()
    paths_of = {}

    def expand(level: int, tokens: torch.Tensor, parent_rank: torch.Tensor) -> torch.Tensor:
        # The frontier (depth level - 1): level 2's are the root's children; deeper
        # ones extend the previous frontier's paths by their parent's rank.
        if level == 2:
            current = [(int(t),) for t in tokens[0]]
        else:
            current = [(*paths_of[level - 1][int(r)], int(t))
                       for t, r in zip(tokens[0], parent_rank[0], strict=True)]
        paths_of[level] = current
        return torch.tensor([[table[path] for path in current]])

    result = build_beam_tree(spec, torch.tensor([99]), torch.tensor([table[()]]), expand)
    want = _reference_beam(spec, table[()], table)
    tokens = result.tokens[0].tolist()
    assert tokens[0] == 99 and len(tokens) == spec.tokens
    # Node i's path of tokens from the retrieve table equals the reference's path.
    got = [tuple(tokens[n] for n in row[1:] if n >= 0) for row in result.retrieve[0].tolist()[1:]]
    assert got == want
    mask = result.mask[0]
    assert bool(mask.diagonal().all()) and bool(mask[:, 0].all())
    assert result.offsets[0].tolist() == [0] + [len(p) for p in want]


def test_bad_drafters_fail_in_one_line(target, checkpoints) -> None:
    from treeopt.cli import app

    root = checkpoints["root"]
    corrupt = root / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((checkpoints["eagle1"] / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(TreeoptError, match="cannot read weights"):
        load_eagle(str(corrupt), target)
    from medusa_runtime.timing import random_weight_model

    small = random_weight_model({"model_type": "llama", "hidden_size": 32, "vocab_size": 512,
                                 "intermediate_size": 64, "num_hidden_layers": 4,
                                 "num_attention_heads": 4}, dtype=torch.float32)
    save_eagle(random_eagle(small, 3, 100), root / "other_hidden")
    with pytest.raises(TreeoptError, match="hidden size is 64"):
        load_eagle(str(root / "other_hidden"), target)
    for folder in ("corrupt", "other_hidden"):
        run = CliRunner().invoke(app, ["generate", "-m", str(STORIES), "--eagle",
                                       str(root / folder), "--tree", "mc_sim_7b_63",
                                       "--prompt", "Once"])
        assert run.exit_code == 2
        last = run.output.strip().splitlines()[-1]  # after transformers' loading bar
        assert last.startswith("error:") and "Traceback" not in run.output


@pytest.mark.parametrize("version", [1, 3])
def test_eagle_cache_follows_the_accepted_text(target, version, monkeypatch) -> None:
    """The drafter's root logits each step equal EAGLE run from scratch over the text
    so far (pairs of the target's feature at i and token i + 1), with accept lengths
    forced to vary: the cached drafter sees exactly the committed text."""
    from medusa_runtime.eagle import EagleDrafter, _EagleSession
    from medusa_runtime.static_forward import StaticCache
    from treeopt.core.tree import Tree

    prompt, count = PROMPTS[0], 24
    full = prompt + greedy(target, prompt, count + 6)
    eagle = random_eagle(target, version, draft_vocab_size=200, seed=5)
    drafter = EagleDrafter(eagle, target)
    recorded, original = [], _EagleSession._commit
    accept_plan = iter([4, 1, 2, 3, 1, 4, 2] * 10)

    def record(self, root):
        expansion = original(self, root)
        rows = int(self.static.row_lengths[0])  # the root's pair sits at rows - 1
        recorded.append((rows, expansion.logits[0].clone()))
        return expansion

    def oracle_tree(self, root, hidden):  # force the next accept length (test only)
        original_next(self, root, hidden)
        rows = int(self.static.row_lengths[0])
        good = next(accept_plan) - 1
        chain = torch.tensor(full[rows + 1: rows + 5])
        chain[good:] = (chain[good:] + 1) % 512  # wrong from here on
        self.tokens[0, 1:] = chain

    original_next = _EagleSession.next_tree
    monkeypatch.setattr(_EagleSession, "_commit", record)
    monkeypatch.setattr(_EagleSession, "next_tree", oracle_tree)
    result = generate(target, None, Tree.chain(4), prompt, count, drafter=drafter)
    assert result.tokens == full[len(prompt): len(prompt) + count]
    assert {1, 2, 3, 4} <= set(result.accept_lengths)
    seq = full  # the drafter also drafts after the last step
    with torch.no_grad():
        out = target(torch.tensor([seq]), output_hidden_states=True)
        states = out.hidden_states
        features = (states[-1] if version == 1
                    else torch.cat([states[i] for i in drafter.feature_layers], dim=-1))
        n = len(seq) - 1
        static = StaticCache(1, n, 1, torch.device("cpu"))
        mask = torch.full((n, static.num_slots), float("-inf")).triu(1)[None, None]
        mask[..., n:] = float("-inf")
        logits, _ = eagle(torch.tensor([seq[1:]]), features[:, :n], torch.arange(n)[None],
                          mask, static.cache)
    assert len(recorded) > 5
    for rows, root_logits in recorded:
        assert torch.allclose(logits[0, rows - 1], root_logits, atol=1e-4)
