"""Issue 16's new-user findings that autotune's pipeline depends on, one test each.

Item 1: ``tune --measure`` prunes infeasible trials and never silently uses vicuna-7b.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from treeopt.cli import app
from treeopt.errors import TreeoptError

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    from medusa_runtime.heads import MedusaConfig, MedusaHeads

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, vocab_size=64,
                         max_position_embeddings=256)
    model = LlamaForCausalLM(config).eval().requires_grad_(False)
    heads = MedusaHeads(MedusaConfig(2, 1, 32, 64)).eval().requires_grad_(False)
    return model, heads


# ------------------------------------------------------------------ item 1
def test_study_prunes_infeasible_trials_instead_of_a_traceback(tiny):
    """Top-2 ranks of 2 heads leave 6 candidate nodes: budgets above 7 cannot be built."""
    from treeopt.core.profile import Profile
    from treeopt.model.study import StudyConfig, run_study

    model, heads = tiny
    profile = Profile.from_cumulative_accuracy([[0.6, 0.7], [0.4, 0.5]])
    config = StudyConfig(trials=6, seed=0, max_budget=64, max_new_tokens=3)
    outcome = run_study(model, heads, [[1, 5, 9]], profile, config, show_progress=False)
    assert outcome.num_trials == 6
    assert 0 < outcome.pruned_trials < 6
    assert outcome.tree.num_tokens == outcome.params["budget"] <= 7


def test_study_with_no_feasible_trial_is_one_line(tiny, monkeypatch):
    from treeopt.core.profile import Profile
    from treeopt.model import study
    from treeopt.model.study import StudyConfig, run_study

    model, heads = tiny
    profile = Profile.from_cumulative_accuracy([[0.6], [0.4]])  # top-1: 2 nodes at most
    monkeypatch.setattr(study, "MIN_BUDGET", 8)  # every budget searched is above that
    with pytest.raises(TreeoptError, match="all 2 trials were infeasible"):
        run_study(model, heads, [[1, 5, 9]], profile,
                  StudyConfig(trials=2, seed=0, max_budget=16, max_new_tokens=3),
                  show_progress=False)


def test_measure_without_a_profile_for_an_unregistered_model_fails_before_loading(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    result = CliRunner().invoke(app, ["tune", "--measure", "-m", str(tmp_path / "no-model"),
                                      "--heads", str(tmp_path), "--prompts", str(prompts),
                                      "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "--measure builds its trees from --profile" in result.output
    assert "Traceback" not in result.output


def test_study_profile_of_a_registry_model_is_its_shipped_one_said_aloud(capsys):
    from treeopt.model.study import study_profile

    assert study_profile("mine.json", "vicuna-7b") == "mine.json"
    assert study_profile(None, "vicuna-7b") == "vicuna-7b"
    assert "profile: vicuna-7b (shipped" in capsys.readouterr().err
    with pytest.raises(TreeoptError, match="give the profile of"):
        study_profile(None, "./m")


# ----------------------------------------------------------------- item 12
def test_eval_holdout_leads_with_one_figure_and_names_the_in_sample_row(tmp_path):
    import numpy as np

    from treeopt.core.profile import Profile
    from treeopt.files.profile_file import write_profile

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 25)
    first = rng.integers(-1, 4, len(groups))
    ranks = np.where(rng.uniform(size=(len(groups), 3)) < 0.6, first[:, None],
                     rng.integers(-1, 4, (len(groups), 3)))
    profile = tmp_path / "measured.json"
    write_profile(profile, Profile.from_rank_vectors(ranks, 4, groups, {"model": "synthetic"}))
    runner = CliRunner()
    built = runner.invoke(app, ["build", "-p", str(profile), "-b", "16", "--holdout", "0.25",
                                "-o", str(tmp_path / "t.json")])
    assert built.exit_code == 0, built.output
    result = runner.invoke(app, ["eval", str(tmp_path / "t.json"), "-p", str(profile),
                                 "--holdout", "0.25"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    # No rank vectors in this profile: the most faithful model's E[accept] leads.
    assert lines[0] == "tokens per step: E[accept], blend model of acceptance"
    assert lines[1].split()[0] == str(tmp_path / "t.json")
    assert lines[2].split()[0] == "in-sample-16"
    assert "oracle" not in result.stdout


# ------------------------------------------------------------------ item 8
@pytest.fixture
def tiny_arch(tmp_path):
    """A config.json folder of a tiny Llama (what --arch takes for a model's shape)."""
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4, vocab_size=64,
                max_position_embeddings=256).save_pretrained(tmp_path / "arch")
    return tmp_path / "arch"


def test_roofline_measure_shows_a_progress_bar(tiny_arch):
    result = CliRunner().invoke(app, ["roofline", "--arch", str(tiny_arch), "--measure",
                                      "--batch", "1", "--context", "16", "--candidates", "1,2",
                                      "--repeats", "1"])
    assert result.exit_code == 0, result.output
    assert "timing operators on cpu" in result.stderr and "op/s" in result.stderr


def test_overhead_random_weights_says_it_builds_weights(tiny_arch, tmp_path):
    result = CliRunner().invoke(app, ["overhead", "--random-weights", "--arch", str(tiny_arch),
                                      "--device", "cpu", "--dtype", "fp32", "--batch", "1",
                                      "--context", "8", "--sizes", "1,2", "--repeats", "1",
                                      "-o", str(tmp_path / "lat.json")])
    assert result.exit_code == 0, result.output
    assert "building random float32 weights of" in result.stderr
    assert "weights of arch on cpu: done in" in result.stderr


class _ChatTokenizer:
    """The parts of a tokenizer generate uses, with a chat template that marks its use."""

    chat_template = "{{ messages }}"
    eos_token_id = None

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert add_generation_prompt and tokenize
        return [7, 7, 7]

    def __call__(self, text):
        from types import SimpleNamespace

        return SimpleNamespace(input_ids=[1, 2])

    def decode(self, tokens, skip_special_tokens=True):
        return ""


@pytest.mark.parametrize(("flags", "expected_ids"), [
    ([], [7, 7, 7]), (["--no-chat-template"], [1, 2])])
def test_generate_uses_the_chat_template_like_profile_and_says_when_it_compiles(
        tiny, monkeypatch, flags, expected_ids):
    # ------------------------------------------------------------- item 13 and 8
    import medusa_runtime.decode
    import treeopt.model.loading

    model, _ = tiny
    seen = {}

    def fake_generate(base, heads, tree, input_ids, max_new_tokens, **options):
        seen.update(input_ids=list(input_ids), compile_step=options["compile_step"])
        from medusa_runtime.decode import GenerationResult

        return GenerationResult(tokens=[5], accept_lengths=[1], wall_time_s=0.1)

    from types import SimpleNamespace

    monkeypatch.setattr(treeopt.model.loading, "load_medusa", lambda *args, **kwargs:
                        SimpleNamespace(model=model, tokenizer=_ChatTokenizer(), heads=None))
    monkeypatch.setattr(medusa_runtime.decode, "generate", fake_generate)
    result = CliRunner().invoke(app, ["generate", "-m", "any", "--prompt", "hi",
                                      "--compile", *flags])
    assert result.exit_code == 0, result.output
    assert seen == {"input_ids": expected_ids, "compile_step": True}
    assert "compiling the verification step" in result.stderr


# ----------------------------------------------------------------- item 13
def test_quiet_silences_transformers_loading_bars_and_warnings(tmp_path):
    from transformers.utils import logging as transformers_logging

    transformers_logging.enable_progress_bar()
    try:
        result = CliRunner().invoke(app, ["profile", "-m", str(tmp_path / "none"), "-d",
                                          str(tmp_path / "none.txt"), "--heads", str(tmp_path),
                                          "-q", "-o", str(tmp_path / "p.json")])
        assert result.exit_code == 2  # the data file does not exist; -q already applied
        assert not transformers_logging.is_progress_bar_enabled()
        assert transformers_logging.get_verbosity() == transformers_logging.ERROR
    finally:
        transformers_logging.enable_progress_bar()
        transformers_logging.set_verbosity_warning()


# ------------------------------------------------------------------ item 2
def test_tune_warns_when_the_latency_table_is_not_monotone(tmp_path):
    """Issue 16: 484 ms at n=1, 111 ms at n=16 gave "predicted speedup 9.120x" silently."""
    from treeopt.core.latency import LatencyTable
    from treeopt.core.profile import Profile
    from treeopt.files.latency_file import write_latency
    from treeopt.files.profile_file import write_profile

    write_profile(tmp_path / "p.json", Profile.from_cumulative_accuracy(
        [[0.6, 0.7, 0.75], [0.4, 0.5, 0.55], [0.3, 0.38, 0.42]]))
    rows = {(1, 128, 1): 0.484, (1, 128, 4): 0.2, (1, 128, 16): 0.111}
    write_latency(tmp_path / "lat.json", LatencyTable(rows, source="measured", device="cpu",
                                                      dtype="float32", arch="tiny"))
    result = CliRunner().invoke(app, ["tune", "-p", str(tmp_path / "p.json"), "--latency",
                                      str(tmp_path / "lat.json")])
    assert result.exit_code == 0, result.output
    assert "warning: batch 1, context 128: overhead 0.413 < 1 at n=4" in result.stderr
