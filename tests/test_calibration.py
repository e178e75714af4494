"""Calibration readers: every accepted layout, seeded subsets, one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from treeopt.errors import TreeoptError
from treeopt.model.calibration import encode_prompts, read_prompts, split_held_out

SHARED = Path(__file__).resolve().parents[2] / "shared"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_alpaca_eval_json(tmp_path: Path) -> None:
    data = [{"instruction": "Say hi", "output": "hi", "generator": "x"},
            {"instruction": "Count to 3"}]
    path = write(tmp_path / "alpaca_eval.json", json.dumps(data))
    assert read_prompts(path) == ["Say hi", "Count to 3"]


def test_mt_bench_first_turn_or_each_turn(tmp_path: Path) -> None:
    lines = [{"question_id": 81, "category": "writing", "turns": ["A1", "A2"]},
             {"question_id": 82, "category": "math", "turns": ["B1", "B2"], "reference": ["r"]}]
    path = write(tmp_path / "question.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    assert read_prompts(path) == ["A1", "B1"]
    assert read_prompts(path, turns="each") == ["A1", "A2", "B1", "B2"]


def test_jsonl_prompt_or_text_and_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"prompt": "p1"}\n\n{"text": "t2"}\n{"prompt": "  "}\n')
    assert read_prompts(path) == ["p1", "t2"]


def test_plain_text_one_prompt_per_line(tmp_path: Path) -> None:
    path = write(tmp_path / "p.txt", "Once upon a time\n\n  Tom had a dog.  \n")
    assert read_prompts(path) == ["Once upon a time", "Tom had a dog."]


def test_max_prompts_is_a_seeded_subset_in_file_order(tmp_path: Path) -> None:
    path = write(tmp_path / "p.txt", "\n".join(f"prompt {i}" for i in range(50)))
    first = read_prompts(path, max_prompts=7, seed=3)
    assert first == read_prompts(path, max_prompts=7, seed=3)
    assert first != read_prompts(path, max_prompts=7, seed=4)
    assert len(first) == 7
    assert first == sorted(first, key=lambda p: int(p.split()[1]))
    assert read_prompts(path, max_prompts=100) == read_prompts(path)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("empty.txt", "\n  \n", "holds no prompts"),
        ("bad.jsonl", '{"prompt": "a"}\n{oops\n', "line 2 is not valid JSON"),
        ("nokey.jsonl", '{"question": "a"}\n', "line 1: no prompt field"),
        ("obj.json", '{"instruction": "a"}', "expected a JSON list"),
        ("turns.jsonl", '{"turns": "a"}\n', "\"turns\" must be a list of strings"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path: Path, name: str, text: str,
                                       message: str) -> None:
    with pytest.raises(TreeoptError, match=message) as info:
        read_prompts(write(tmp_path / name, text))
    assert "\n" not in str(info.value)


def test_missing_file_and_bad_options(tmp_path: Path) -> None:
    with pytest.raises(TreeoptError, match="does not exist"):
        read_prompts(tmp_path / "nope.jsonl")
    # A folder is read as a Hugging Face dataset folder (or needs the datasets package).
    with pytest.raises(TreeoptError, match=r"No .supported. data files|needs the 'datasets'"):
        read_prompts(write(tmp_path / "d", "x").parent)
    path = write(tmp_path / "p.txt", "a\n")
    with pytest.raises(TreeoptError, match="--max-prompts must be >= 1"):
        read_prompts(path, max_prompts=0)
    with pytest.raises(TreeoptError, match="turns must be one of"):
        read_prompts(path, turns="last")


def test_hub_dataset_name_without_datasets_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(TreeoptError, match="needs the 'datasets' package"):
        read_prompts("tatsu-lab/alpaca_eval")


def test_local_dataset_folder_with_splits(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    folder = tmp_path / "acme_prompts"
    (folder / "data").mkdir(parents=True)
    for split, prompts in (("train", ["a", "b", "c"]), ("test", ["x", "y"])):
        rows = [{"instruction": prompt, "output": "..."} for prompt in prompts]
        (folder / "data" / f"{split}.jsonl").write_text(
            "".join(json.dumps(row) + "\n" for row in rows))
    assert read_prompts(folder) == ["a", "b", "c"]
    assert read_prompts(f"{folder}:test") == ["x", "y"]
    with pytest.raises(TreeoptError, match=r"cannot load Hugging Face dataset .*split 'dev'"):
        read_prompts(f"{folder}:dev")


def test_uncached_hub_dataset_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(TreeoptError) as caught:
        read_prompts("treeopt-tests/no-such-dataset")
    message = str(caught.value)
    assert message.startswith("cannot load Hugging Face dataset 'treeopt-tests/no-such-dataset'")
    assert message.endswith("download it first or pass a file") and "\n" not in message


def test_split_held_out_is_seeded_and_disjoint() -> None:
    prompts = [f"p{i}" for i in range(20)]
    train, held = split_held_out(prompts, 0.25, seed=1)
    assert len(held) == 5 and len(train) == 15
    assert set(train) | set(held) == set(prompts) and not set(train) & set(held)
    assert (train, held) == split_held_out(prompts, 0.25, seed=1)
    # Any positive fraction holds out at least one prompt and keeps one to train on.
    assert [len(part) for part in split_held_out(["a", "b"], 0.01)] == [1, 1]


class FakeTokenizer:
    """Byte-level tokenizer with BOS 1, optionally a chat template wrapping the turn."""

    def __init__(self, chat_template: str | None) -> None:
        self.chat_template = chat_template

    def __call__(self, text: str) -> SimpleNamespace:
        return SimpleNamespace(input_ids=[1, *text.encode()])

    def apply_chat_template(self, messages, add_generation_prompt: bool, tokenize: bool):
        assert add_generation_prompt and tokenize
        return [1, 7, *messages[0]["content"].encode(), 8]


def test_encode_prompts_chat_template_and_opt_out() -> None:
    with_template = FakeTokenizer("{{ messages }}")
    assert encode_prompts(with_template, ["hi"]) == [[1, 7, 104, 105, 8]]
    assert encode_prompts(with_template, ["hi"], chat_template=False) == [[1, 104, 105]]
    assert encode_prompts(FakeTokenizer(None), ["hi"]) == [[1, 104, 105]]


def test_reads_the_shared_mt_bench_file() -> None:
    path = SHARED / "data" / "mt_bench_questions.jsonl"
    if not path.is_file():
        pytest.skip("../shared is absent")
    assert len(read_prompts(path)) == 80
    assert len(read_prompts(path, turns="each")) == 160
