"""treeopt.tree/1 files, the validate/info/export/import verbs, and a corpus of bad trees."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from treeopt.cli import app
from treeopt.core.tree import Tree
from treeopt.errors import TreeoptError
from treeopt.files.shipped import shipped_tree_names
from treeopt.files.tree_file import (
    FORMAT,
    TreeDocument,
    document_from_json,
    dumps,
    load_tree,
    load_tree_document,
    schema,
    write_tree,
)

runner = CliRunner()
PUBLISHED = ["mc_sim_7b_63", "vicuna_7b_stage1", "vicuna_7b_stage2", "vicuna_13b_stage1",
             "vicuna_13b_stage2", "vicuna_33b_stage1", "vicuna_33b_stage2", "zephyr_stage2"]
SHARED = Path(__file__).resolve().parents[2] / "shared"


def test_every_published_tree_ships():
    assert set(PUBLISHED) <= set(shipped_tree_names())
    for name in PUBLISHED:
        document = load_tree_document(name)
        assert len(document.tree) == 63
        assert "FasterDecoding/Medusa" in document.provenance["source"]


def test_shipped_trees_match_the_published_lists():
    if not SHARED.is_dir():
        pytest.skip("../shared is absent")
    published = json.loads((SHARED / "data/medusa_published_trees.json").read_text())["trees"]
    for name, paths in published.items():
        assert load_tree(name) == Tree.from_paths(paths, num_heads=5)


def test_mc_sim_7b_63_shape():
    tree = load_tree("mc_sim_7b_63")
    assert tree.num_tokens == 64
    assert tree.width_per_depth() == [10, 28, 23, 2]
    assert tree.max_rank_per_depth() == [9, 9, 9, 1]


def test_round_trip_through_json_text(tmp_path):
    tree = Tree.from_paths([[1], [0], [0, 0]], num_heads=3)
    path = tmp_path / "t.json"
    write_tree(path, tree, expected_accept_length=1.75, provenance={"budget": 4})
    data = json.loads(path.read_text())
    assert data == {"format": FORMAT, "num_heads": 3, "paths": [[0], [1], [0, 0]],
                    "expected_accept_length": 1.75, "provenance": {"budget": 4}}
    assert load_tree_document(path) == TreeDocument(tree, 1.75, {"budget": 4})
    assert list(tmp_path.iterdir()) == [path]  # no temp file left


def test_schema_accepts_what_we_write():
    import jsonschema

    text = dumps(TreeDocument(load_tree("mc_sim_7b_63"), 3.1, {"x": 1}))
    jsonschema.validate(json.loads(text), schema())


def test_write_refuses_empty_tree(tmp_path):
    with pytest.raises(TreeoptError):
        write_tree(tmp_path / "t.json", Tree.empty(5))
    assert not list(tmp_path.iterdir())


def good(**overrides):
    data = {"format": FORMAT, "num_heads": 3, "paths": [[0], [1], [0, 0]]}
    data.update(overrides)
    return json.dumps(data)


# (file text, fragment of the one-line error). At least 30 kinds of bad tree file.
MALFORMED = [
    ("", "not valid JSON"),
    ("{", "not valid JSON"),
    ("[[0], [1]]", "must hold a JSON object, not an array"),
    ('"paths"', "must hold a JSON object, not a string"),
    ("null", "must hold a JSON object, not null"),
    (json.dumps({"num_heads": 3, "paths": [[0]]}), 'missing "format"'),
    (good(format="treeopt.tree/2"), "format 'treeopt.tree/2' is not"),
    (good(format="medusa"), "format 'medusa' is not"),
    (good(format=1), "format 1 is not"),
    (good(num_heads=0), "num_heads must be a positive integer, not 0"),
    (good(num_heads=-2), "num_heads must be a positive integer, not -2"),
    (good(num_heads="3"), "num_heads must be a positive integer, not '3'"),
    (good(num_heads=2.5), "num_heads must be a positive integer, not 2.5"),
    (good(num_heads=True), "num_heads must be a positive integer, not True"),
    (json.dumps({"format": FORMAT, "paths": [[0]]}), "num_heads must be a positive integer"),
    (json.dumps({"format": FORMAT, "num_heads": 3}), '"paths" must be a list'),
    (good(paths={"0": [0]}), '"paths" must be a list'),
    (good(paths="[[0]]"), '"paths" must be a list'),
    (good(paths=[]), "tree has no paths"),
    (good(paths=[[0], [1, 0]]), "path [1, 0] has no parent [1]"),
    (good(paths=[[0], [0, 0, 0]]), "path [0, 0, 0] has no parent [0, 0]"),
    (good(paths=[[0], [0]]), "duplicate path [0]"),
    (good(paths=[[0], [0, 1], [0, 1]]), "duplicate path [0, 1]"),
    (good(paths=[[0], [-1]]), "rank -1 in path [-1] is negative"),
    (good(paths=[[0], [0, -3]]), "rank -3 in path [0, -3] is negative"),
    (good(paths=[[0], [1.5]]), "rank 1.5 in path [1.5] is not an integer"),
    (good(paths=[[0], ["1"]]), "rank '1' in path ['1'] is not an integer"),
    (good(paths=[[0], [None]]), "rank None in path [None] is not an integer"),
    (good(paths=[[True]]), "rank True in path [True] is not an integer"),
    (good(paths=[[0], [[1]]]), "rank [1] in path [[1]] is not an integer"),
    (good(paths=[[0], []]), "empty path []"),
    (good(paths=[[0], 1]), "path 1 is not a list of ranks"),
    (good(paths=[[0], "01"]), "path '01' is not a list of ranks"),
    (good(paths=[[0], {"r": 1}]), "is not a list of ranks"),
    (good(num_heads=1), "path [0, 0] has depth 2 > num_heads 1"),
    (good(expected_accept_length="high"), "expected_accept_length: 'high' is not of type"),
    (good(expected_accept_length=0.5), "expected_accept_length: 0.5 is less than the minimum"),
    (good(provenance=["a"]), "provenance: ['a'] is not of type 'object'"),
]


def test_corpus_has_at_least_thirty_kinds():
    assert len(MALFORMED) >= 30


@pytest.mark.parametrize(("text", "fragment"), MALFORMED)
def test_validate_rejects_malformed_tree_files(tmp_path, text, fragment):
    path = tmp_path / "bad.json"
    path.write_text(text)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert fragment in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("text", "fragment"), MALFORMED[5:])
def test_api_raises_treeopt_error(text, fragment):
    with pytest.raises(TreeoptError) as info:
        document_from_json(json.loads(text))
    assert fragment in str(info.value)


def test_validate_missing_file_and_unknown_name(tmp_path):
    result = runner.invoke(app, ["validate", str(tmp_path / "nope.json")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(app, ["validate", "no_such_tree"])
    assert result.exit_code == 2 and "mc_sim_7b_63" in result.output  # lists shipped names


def test_validate_and_info_on_shipped_name():
    result = runner.invoke(app, ["validate", "mc_sim_7b_63"])
    assert result.exit_code == 0
    assert "63 nodes (64 tokens/step incl. root), depth 4, 5 heads" in result.output
    result = runner.invoke(app, ["info", "mc_sim_7b_63", "--json"])
    assert result.exit_code == 0
    summary = json.loads(result.output)
    assert summary["width_per_depth"] == [10, 28, 23, 2]
    assert summary["max_rank_per_depth"] == [9, 9, 9, 1]


def test_written_files_get_umask_mode_not_mkstemp_0600(tmp_path):
    import os

    path = tmp_path / "t.json"
    write_tree(path, Tree.from_paths([[0]]))
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "mc_sim_7b_63", "--to", "bogus"],
         "error: Invalid value for '--to': Value error, 'bogus' is not one of 'medusa', "
         "'trtllm', 'trtllm-triton', 'vllm', 'vllm-medusa', 'eagle'. "
         "(see 'treeopt export --help')"),
        (["nosuch"], "error: No such command 'nosuch'. (see 'treeopt --help')"),
        (["validate"], "error: Missing argument 'tree'. (see 'treeopt validate --help')"),
        (["build", "--budget"], "error: Option '--budget' requires an argument."),
    ],
)
def test_usage_errors_are_one_line(args, message):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [message]


def test_version_and_short_help():
    from treeopt._version import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"treeopt {__version__}\n"
    result = CliRunner().invoke(app, ["validate", "-h"])
    assert result.exit_code == 0 and "treeopt validate mc_sim_7b_63" in result.stdout
