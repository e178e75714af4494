"""Import/export of other runtimes' tree formats."""

import json

import pytest
from typer.testing import CliRunner

from treeopt.cli import app
from treeopt.core.tree import Tree
from treeopt.errors import TreeoptError
from treeopt.files.engines import (
    FORMATS,
    export_text,
    import_text,
    nonuniform_levels,
    parse_paths,
)
from treeopt.files.shipped import shipped_tree_names
from treeopt.files.tree_file import load_tree

runner = CliRunner()
UNIFORM = Tree.from_paths([[0], [1], [0, 0], [0, 1], [1, 0], [1, 1], [0, 0, 0], [0, 1, 0],
                           [1, 0, 0], [1, 1, 0]])


@pytest.mark.parametrize("name", shipped_tree_names())
@pytest.mark.parametrize("target", FORMATS)
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
