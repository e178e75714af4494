"""Import/export of other runtimes' tree formats."""

import json

import pytest
from typer.testing import CliRunner

from treeopt.cli import app
from treeopt.core.tree import Tree
from treeopt.errors import TreeoptError
from treeopt.files.engines import (
    ENGINE_STATUS,
    FORMATS,
    TREE_FORMATS,
    export_text,
    import_text,
    nonuniform_levels,
    parse_paths,
    static_tree_warning,
    vllm_batch_schedule,
    vllm_speculative_config,
)
from treeopt.files.shipped import shipped_tree_names
from treeopt.files.tree_file import load_tree

runner = CliRunner()
UNIFORM = Tree.from_paths([[0], [1], [0, 0], [0, 1], [1, 0], [1, 1], [0, 0, 0], [0, 1, 0],
                           [1, 0, 0], [1, 1, 0]])


@pytest.mark.parametrize("name", shipped_tree_names())
@pytest.mark.parametrize("target", TREE_FORMATS)
def test_round_trip_every_shipped_tree_through_every_format(tmp_path, name, target):
    tree = load_tree(name)
    text = export_text(tree, target, allow_nonuniform=True)
    assert import_text(text, target, num_heads=tree.num_heads) == tree
    # and through the CLI, file to file
    exported = tmp_path / f"{name}.{target}"
    args = ["export", name, "--to", target, "-o", str(exported)]
    result = runner.invoke(app, [*args, "--allow-nonuniform"] if target == "vllm" else args)
    assert result.exit_code == 0, result.output
    back = tmp_path / "back.json"
    result = runner.invoke(app, ["import", str(exported), "--from", target, "-o", str(back),
                                 "--num-heads", str(tree.num_heads)])
    assert result.exit_code == 0, result.output
    assert load_tree(back) == tree


def test_export_texts_are_what_each_runtime_reads():
    tree = Tree.from_paths([[0], [1], [0, 0]])
    assert export_text(tree, "medusa") == "[[0], [1], [0, 0]]"
    assert export_text(tree, "eagle") == "[[0], [1], [0, 0]]"
    assert json.loads(export_text(tree, "trtllm")) == [[0], [1], [0, 0]]
    assert export_text(UNIFORM, "vllm").startswith("[(0,), (1,), (0, 0), (0, 1), (1, 0)")


def test_parse_accepts_tuples_assignments_and_vllm_strings():
    assert parse_paths("mc = [(0,), (0, 1)]") == [[0], [0, 1]]
    assert parse_paths("medusa_choices: list = [[0], [1]]\n") == [[0], [1]]
    assert parse_paths('"[(0,), (1,), (0, 0)]"') == [[0], [1], [0, 0]]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[[0], [1, 1]]", "path [1, 1] has no parent [1]"),  # TRT-LLM would re-root it silently
        ("not a list", "not a list of paths"),
        ("{'a': 1}", "not a list of paths: got a dict"),
        ("[[0], 5]", "path 5 is not a list or tuple"),
        ("[[0], [0]]", "duplicate path [0]"),
        ("__import__('os')", "not a list of paths"),
    ],
)
def test_import_refuses_bad_text(text, fragment):
    with pytest.raises(TreeoptError) as info:
        import_text(text, "trtllm")
    assert fragment in str(info.value)


def test_trtllm_limits():
    big = Tree.from_paths([[rank] for rank in range(15)] + [[0, r] for r in range(15)]
                          + [[0, 0, r] for r in range(15)] + [[0, 0, 0, r] for r in range(15)]
                          + [[1, r] for r in range(4)])
    assert len(big) == 64
    with pytest.raises(TreeoptError, match="at most max_draft_len=63 nodes; this tree has 64"):
        export_text(big, "trtllm")
    assert json.loads(export_text(big, "trtllm", max_draft_len=64))[0] == [0]
    with pytest.raises(TreeoptError, match="ranks below 16"):
        export_text(Tree.from_paths([[r] for r in range(17)]), "trtllm")
    deep = Tree.from_paths([[0] * d for d in range(1, 18)])
    with pytest.raises(TreeoptError, match="at most 16 deep"):
        export_text(deep, "trtllm")


def test_vllm_refuses_nonuniform_children():
    mc = load_tree("mc_sim_7b_63")
    assert nonuniform_levels(mc)
    with pytest.raises(TreeoptError, match="same number of children; depth 1"):
        export_text(mc, "vllm")
    assert nonuniform_levels(UNIFORM) == []
    result = runner.invoke(app, ["export", "mc_sim_7b_63", "--to", "vllm"])
    assert result.exit_code == 2 and result.output.startswith("error: vLLM needs")


def test_export_unknown_target_is_usage_error():
    result = runner.invoke(app, ["export", "mc_sim_7b_63", "--to", "sglang"])
    assert result.exit_code == 2


def test_failed_export_leaves_no_file(tmp_path):
    out = tmp_path / "t.txt"
    result = runner.invoke(app, ["export", "mc_sim_7b_63", "--to", "vllm", "-o", str(out)])
    assert result.exit_code == 2 and not out.exists()


# ---------------------------------------------------------------- engines today
def triton_parse(text: str) -> list[list[int]]:
    """A line-by-line port of the TensorRT-LLM Triton backend's parser of medusa_choices.

    triton_backend/inflight_batcher_llm/src/utils.cc (csvStrToVecVecInt and
    csvStrToVecInt, commit c8c6df0): read up to each '}', drop one leading '{', split
    the rest on ',' and stoi each piece; skip whitespace, anything up to the next ','
    and whitespace again; stop at the end or at a group without its '}'.
    """
    def ints(piece: str) -> list[int]:
        values = []
        for item in piece.split(","):
            if not item.strip():
                break
            values.append(int(item))  # std::stoi: leading whitespace, then digits
        return values

    out, pos = [], 0
    while pos < len(text):
        end = text.find("}", pos)
        if end == -1:  # getline hit the end without '}': eof, the group is dropped
            break
        group, pos = text[pos:end], end + 1
        if not group:
            break
        out.append(ints(group[1:] if group[0] == "{" else group))
        while pos < len(text) and text[pos].isspace():
            pos += 1
        comma = text.find(",", pos)
        pos = len(text) if comma == -1 else comma + 1
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def test_triton_brace_form_is_what_the_triton_backend_reads():
    mc = load_tree("mc_sim_7b_63")
    text = export_text(mc, "trtllm-triton")
    assert text.startswith("{0}, {1}, {2}") and "{0, 0}" in text and "[" not in text
    assert triton_parse(text) == mc.as_lists()
    assert export_text(Tree.from_paths([[0], [0, 1]]), "trtllm-triton") == "{0}, {0, 1}"
    # and back, bare or inside the config.pbtxt parameter block
    assert import_text(text, "trtllm-triton", num_heads=mc.num_heads) == mc
    pbtxt = ('parameters: {\n  key: "medusa_choices"\n  value: {\n    string_value: "'
             + text + '"\n  }\n}\n')
    assert import_text(pbtxt, "trtllm-triton", num_heads=mc.num_heads) == mc
    with pytest.raises(TreeoptError, match="trtllm-triton holds one tree"):
        import_text(text, "trtllm-triton", name="mc_sim_7b_63")
    with pytest.raises(TreeoptError, match="not a Triton medusa_choices value"):
        import_text("[[0], [1]]", "trtllm-triton")
    with pytest.raises(TreeoptError, match="ranks below 16"):
        export_text(Tree.from_paths([[r] for r in range(17)]), "trtllm-triton")


# A faithful copy of the *structure* of FasterDecoding/Medusa medusa/model/medusa_choices.py:
# one `name = [...]` per line, the first as lists, the others as tuples.
MEDUSA_CHOICES_PY = """\
mc_sim_7b_3 = [[0], [0, 0], [1]]
vicuna_7b_stage2 = [(0,), (0, 0), (1,), (0, 1)]
vicuna_7b_stage1_ablation = [(0,), (1,), (0, 0), (0, 0, 0)]
zephyr_stage2 = [(0,), (0, 0), (1,),
                 (0, 0, 0)]
"""


def test_import_picks_one_list_from_a_file_of_named_lists(tmp_path):
    assert parse_paths(MEDUSA_CHOICES_PY, name="vicuna_7b_stage2") == [[0], [0, 0], [1], [0, 1]]
    assert parse_paths(MEDUSA_CHOICES_PY, name="zephyr_stage2")[-1] == [0, 0, 0]
    with pytest.raises(TreeoptError) as info:
        parse_paths(MEDUSA_CHOICES_PY)
    assert str(info.value) == ("holds 4 lists: mc_sim_7b_3, vicuna_7b_stage2, "
                               "vicuna_7b_stage1_ablation, zephyr_stage2; choose one with --name")
    with pytest.raises(TreeoptError, match=r"no list named 'mc' \(has: mc_sim_7b_3, "):
        parse_paths(MEDUSA_CHOICES_PY, name="mc")
    source = tmp_path / "medusa_choices.py"
    source.write_text(MEDUSA_CHOICES_PY)
    out = tmp_path / "t.json"
    result = runner.invoke(app, ["import", str(source), "--from", "medusa", "-o", str(out)])
    assert result.exit_code == 2 and not out.exists()
    assert result.output.strip().endswith("choose one with --name")
    assert "\n" not in result.output.strip()
    result = runner.invoke(app, ["import", str(source), "--from", "medusa", "--name",
                                 "vicuna_7b_stage2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert load_tree(out) == Tree.from_paths([[0], [0, 0], [1], [0, 1]])
    assert json.loads(out.read_text())["provenance"]["name"] == "vicuna_7b_stage2"


@pytest.mark.parametrize("target", FORMATS)
def test_export_warns_in_one_line_when_the_engine_takes_no_static_tree(tmp_path, target):
    chain = tmp_path / "chain.json"
    result = runner.invoke(app, ["build", "-b", "4", "--engine", "vllm-medusa", "-o", str(chain)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", str(chain), "--to", target])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    outdated = not ENGINE_STATUS[target].takes_static_tree
    assert len(warnings) == (1 if outdated else 0)
    assert (static_tree_warning(target) is not None) == outdated
    if target == "vllm":
        assert "PR #42121" in warnings[0] and "vllm-medusa" in warnings[0]
    assert {name for name, status in ENGINE_STATUS.items() if not status.takes_static_tree} == {
        "vllm", "eagle"}
    assert all(status.checked_against for status in ENGINE_STATUS.values())


def test_vllm_medusa_takes_a_top1_chain_and_a_chain_length_per_batch():
    chain = Tree.from_paths([[0], [0, 0], [0, 0, 0]])
    assert json.loads(export_text(chain, "vllm-medusa")) == {
        "method": "medusa", "num_speculative_tokens": 3}
    assert import_text('{"method": "medusa", "num_speculative_tokens": 3}', "vllm-medusa") == chain
    with pytest.raises(TreeoptError, match=r"top-1 chain .* this tree has \[1\]"):
        export_text(Tree.from_paths([[0], [1]]), "vllm-medusa")
    # measured batches 1, 4, 16, 64 with best chains 4, 4, 2, 0: vLLM's inclusive ranges
    schedule = vllm_batch_schedule([(16, 2), (1, 4), (4, 4), (64, 0)])
    assert schedule == [[1, 15, 4], [16, 63, 2], [64, 64, 0]]
    assert vllm_batch_schedule([(2, 3)], max_batch=256) == [[1, 256, 3]]
    assert vllm_speculative_config([(1, 4), (16, 2), (64, 0)], model="heads") == {
        "method": "medusa", "model": "heads", "num_speculative_tokens": 4,
        "num_speculative_tokens_per_batch_size": [[1, 15, 4], [16, 63, 2], [64, 64, 0]]}
    assert vllm_speculative_config([(1, 0), (8, 0)])["num_speculative_tokens"] == 1
    with pytest.raises(TreeoptError, match="distinct"):
        vllm_batch_schedule([(1, 2), (1, 3)])


def test_import_reads_a_vllm_config_holding_a_tree():
    config = '{"method": "eagle", "speculative_token_tree": "[(0,), (1,), (0, 0)]"}'
    assert import_text(config, "vllm") == Tree.from_paths([[0], [1], [0, 0]])


# ------------------------------------------------------- building under an engine
def test_build_says_when_the_engine_cannot_take_the_budget_exactly(tmp_path):
    result = runner.invoke(app, ["build", "--budget", "64", "--engine", "vllm", "-o",
                                 str(tmp_path / "v.json")])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert notes == ["note: the best tree with uniform levels (the shape vLLM's "
                     "speculative_token_tree took) within the budget of 64 has 56 tokens/step; "
                     "that engine cannot take exactly 64"]
    assert load_tree(tmp_path / "v.json").num_tokens == 56
    result = runner.invoke(app, ["build", "--budget", "64", "--engine", "trtllm", "-o",
                                 str(tmp_path / "t.json")])
    assert result.exit_code == 0 and "note:" not in result.stderr
    assert load_tree(tmp_path / "t.json").num_tokens == 64
    result = runner.invoke(app, ["build", "--budget", "64", "--engine", "vllm-medusa", "-o",
                                 str(tmp_path / "c.json")])
    assert result.exit_code == 0, result.output
    assert "top-1 chain" in result.stderr and "has 6 tokens/step" in result.stderr
    assert load_tree(tmp_path / "c.json").paths == tuple((0,) * d for d in range(1, 6))


@pytest.fixture
def tune_inputs(tmp_path):
    """vicuna-7b-like 5-head profile; latency flat to 80 tokens at batch 1, 2 at batch 8."""
    from treeopt.core.latency import LatencyTable
    from treeopt.files.latency_file import write_latency

    rows = {}
    for n in range(1, 97):
        rows[(1, 512, n)] = 0.01 * (1 + max(0, n - 80) / 8)
        rows[(8, 512, n)] = 0.01 * (1 + max(0, n - 2))  # compute-bound: a 1-token chain
    latency = tmp_path / "lat.json"
    write_latency(latency, LatencyTable(rows, source="measured", device="cpu",
                                        dtype="float32", arch="synthetic"))
    return latency


@pytest.mark.parametrize(("engine", "tokens"), [(None, 80), ("trtllm", 64), ("vllm", 66),
                                                  ("vllm-medusa", 6)])
def test_tune_engine_tunes_only_trees_the_engine_takes(tmp_path, tune_inputs, engine, tokens):
    out = tmp_path / "tuned.json"
    args = ["tune", "--latency", str(tune_inputs), "--batch", "1", "-o", str(out)]
    result = runner.invoke(app, args + ([] if engine is None else ["--engine", engine]))
    assert result.exit_code == 0, result.output
    tree = load_tree(out)
    assert tree.num_tokens == tokens
    assert f"best: n* = {tokens} tokens/step" in result.stdout.replace("\n", " ")
    if engine == "vllm":
        assert nonuniform_levels(tree) == []
    if engine is not None:
        assert json.loads(out.read_text())["provenance"]["engine"] == engine
        export_text(tree, engine)  # the engine's own export takes the tuned tree as is
    if engine == "vllm-medusa":
        line = next(line for line in result.stdout.splitlines()
                    if line.startswith("vLLM --speculative-config"))
        assert json.loads(line.split(": ", 1)[1]) == {"method": "medusa",
                                                      "num_speculative_tokens": 5}
        note = next(line for line in result.stderr.splitlines() if line.startswith("note:"))
        assert "num_speculative_tokens_per_batch_size: [[1, 7, 5], [8, 8, 1]];" in note
        assert "medusa.py@055e47c" in note


def test_tune_engine_refuses_measure():
    result = runner.invoke(app, ["tune", "--measure", "--engine", "vllm"])
    assert result.exit_code == 2 and "tune --measure is now its own verb" in result.output
