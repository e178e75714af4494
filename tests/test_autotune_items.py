"""Issue 16's new-user findings, one test each: items 2 (latency warnings in tune), 8
(progress on long steps) and 13 (-q, generate's chat template). Item 1 is tested in
test_tune_measure.py, item 12 in test_cli_build.py.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from treeopt.cli import app

torch = pytest.importorskip("torch")


# ------------------------------------------------------------------ item 8
@pytest.fixture
def tiny_arch(tmp_path):
    """A config.json folder of a tiny Llama (what --arch takes for a model's shape)."""
    from tiny_lm import tiny_config

    tiny_config().save_pretrained(tmp_path / "arch")
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
        monkeypatch, flags, expected_ids):
    # ------------------------------------------------------------- item 13 and 8
    from tiny_lm import tiny_model

    import medusa_runtime.decode
    import treeopt.model.loading

    model = tiny_model()
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
