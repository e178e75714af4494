"""treeopt render: DOT text of hand-made trees, pictures when `dot` exists, the CLI."""

from __future__ import annotations

import re
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from treeopt.cli import app
from treeopt.cli import render as cli_render
from treeopt.core.tree import Tree
from treeopt.errors import TreeoptError
from treeopt.files.tree_file import write_tree
from treeopt.pictures import render
from treeopt.pictures.render import (
    BOTH_FILL,
    FIRST_ONLY_FILL,
    SECOND_ONLY_FILL,
    comparison_to_dot,
    hidden_counts,
    probability_colour,
    render_dot,
    tree_to_dot,
    visible_paths,
)
from treeopt.workflows import pictures as workflow

HAS_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="graphviz's dot binary is not installed")

# root -> [0] -> [0,0], [0,1]; root -> [1] -> [1,0]; [0,0] -> [0,0,0]
SMALL = Tree.from_paths([[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0]])
SMALL_P = {(0,): 0.6, (1,): 0.2, (0, 0): 0.3, (0, 1): 0.1, (1, 0): 0.05, (0, 0, 0): 0.15}

NODE_LINE = re.compile(r"^  (\w+) \[(.*)\];$", re.MULTILINE)
EDGE_LINE = re.compile(r"^  (\w+) -> (\w+)", re.MULTILINE)


def nodes(source: str) -> dict[str, str]:
    """DOT node id -> its attribute text (the graph/node/edge defaults left out)."""
    defaults = {"graph", "node", "edge"}
    return {name: attrs for name, attrs in NODE_LINE.findall(source) if name not in defaults}


def edges(source: str) -> list[tuple[str, str]]:
    return EDGE_LINE.findall(source)


def label(attributes: str) -> str:
    return re.search(r'label="([^"]*)"', attributes).group(1)


def fill(attributes: str) -> str:
    return re.search(r'fillcolor="([^"]*)"', attributes).group(1)


# ---------------------------------------------------------------- plain trees
def test_every_node_and_edge_of_a_small_tree():
    source = tree_to_dot(SMALL).source
    drawn = nodes(source)
    assert len(drawn) == len(SMALL) + 1  # the root too
    assert label(drawn["root"]) == "root"
    assert label(drawn["n0"]) == "h1 r0"
    assert label(drawn["n0_1"]) == "h2 r1"
    assert label(drawn["n1_0"]) == "h2 r0"
    assert label(drawn["n0_0_0"]) == "h3 r0"
    assert set(edges(source)) == {
        ("root", "n0"), ("root", "n1"), ("n0", "n0_0"), ("n0", "n0_1"),
        ("n1", "n1_0"), ("n0_0", "n0_0_0"),
    }
    assert "rankdir=\"LR\"" in source and "ordering=\"out\"" in source


def test_children_are_emitted_in_rank_order():
    tree = Tree.from_paths([[2], [0], [1], [0, 3], [0, 1]])
    order = [child for parent, child in edges(tree_to_dot(tree).source)]
    assert order.index("n0") < order.index("n1") < order.index("n2")
    assert order.index("n0_1") < order.index("n0_3")


def test_title_goes_into_the_graph_label():
    source = tree_to_dot(SMALL, title="my <tree> & co").source
    assert "my &lt;tree&gt; &amp; co" in source
    assert "label=" not in tree_to_dot(SMALL).source.split("\n")[1]


# ---------------------------------------------------------------- probabilities
def test_probabilities_show_in_label_colour_and_legend():
    source = tree_to_dot(SMALL, SMALL_P).source
    drawn = nodes(source)
    assert label(drawn["n0"]) == "h1 r0\\n60.0%"
    assert label(drawn["n1_0"]) == "h2 r0\\n5.0%"
    assert fill(drawn["n0"]) == probability_colour(0.6)
    assert fill(drawn["n0"]) != fill(drawn["n1_0"])
    assert "P(node accepted)" in source
    widths = {name: float(re.search(r'width="([^"]*)"', drawn[name]).group(1))
              for name in ("n0", "n1_0")}
    assert widths["n0"] > widths["n1_0"]


def test_probability_text_tells_zero_from_tiny():
    assert render.format_probability(0.0) == "0%"
    assert render.format_probability(0.0004) == "<0.1%"
    assert render.format_probability(0.1234) == "12.3%"


def test_colour_ramp_is_log_scaled_and_clamps():
    assert probability_colour(render.LOG_SCALE_FLOOR) == render.PROBABILITY_RAMP[0]
    # Half-way in log10 between the floor (0.1%) and 1 is the ramp's middle colour.
    assert probability_colour(10**-1.5) == render.PROBABILITY_RAMP[2]
    assert probability_colour(0.0) == render.PROBABILITY_RAMP[0]
    assert probability_colour(1.0) == render.PROBABILITY_RAMP[-1]
    assert probability_colour(-1) == probability_colour(0.0)
    assert probability_colour(2) == probability_colour(1.0)


def test_missing_probability_is_a_one_line_error():
    with pytest.raises(TreeoptError, match=r"path \[0, 1\]"):
        tree_to_dot(SMALL, {k: v for k, v in SMALL_P.items() if k != (0, 1)})


# ---------------------------------------------------------------- max nodes
def test_max_nodes_keeps_the_most_probable_and_collapses_the_rest():
    picture = tree_to_dot(SMALL, SMALL_P, max_nodes=3)
    drawn = nodes(picture.source)
    assert {"n0", "n0_0", "n1"} <= set(drawn)  # 0.6, 0.3, 0.2
    assert not {"n0_1", "n1_0", "n0_0_0"} & set(drawn)
    assert (picture.shown, picture.hidden) == (3, 3)
    placeholders = {name: label(attrs) for name, attrs in drawn.items()
                    if name.startswith("hidden_")}
    assert placeholders == {
        "hidden_n0": "+1 hidden", "hidden_n1": "+1 hidden", "hidden_n0_0": "+1 hidden",
    }
    assert ("n0", "hidden_n0") in edges(picture.source)
    assert "hid 3 of 6 nodes" in picture.hidden_note()


def test_max_nodes_without_probabilities_keeps_canonical_prefix():
    picture = tree_to_dot(SMALL, max_nodes=2)
    drawn = nodes(picture.source)
    assert {"n0", "n1"} <= set(drawn)
    # [0,0], [0,1] and [0,0,0] fold under [0]; [1,0] under [1].
    assert label(drawn["hidden_n0"]) == "+3 hidden"
    assert label(drawn["hidden_n1"]) == "+1 hidden"
    assert tree_to_dot(SMALL).hidden_note() is None


def test_max_nodes_zero_draws_the_root_and_one_placeholder():
    picture = tree_to_dot(SMALL, max_nodes=0)
    assert set(nodes(picture.source)) == {"root", "hidden_root"}
    assert label(nodes(picture.source)["hidden_root"]) == f"+{len(SMALL)} hidden"


@st.composite
def trees_and_probabilities(draw):
    paths: set[tuple[int, ...]] = set()
    for _ in range(draw(st.integers(1, 25))):
        parent = draw(st.sampled_from([(), *sorted(paths)])) if paths else ()
        if len(parent) < 4:
            paths.add((*parent, draw(st.integers(0, 5))))
    probs = {p: draw(st.floats(0, 1)) for p in paths}
    return Tree.from_paths(sorted(paths)), probs, draw(st.integers(0, 30))


@settings(max_examples=60, deadline=None)
@given(trees_and_probabilities(), st.booleans())
def test_visible_nodes_form_a_tree_and_hidden_counts_add_up(case, use_probabilities):
    tree, probs, limit = case
    chosen = probs if use_probabilities else None
    kept = visible_paths(tree.paths, limit, chosen)
    assert len(kept) == min(limit, len(tree))
    assert all(path[:-1] in kept for path in kept if len(path) > 1)
    assert sum(hidden_counts(tree.paths, kept).values()) == len(tree) - len(kept)
    picture = tree_to_dot(tree, chosen, max_nodes=limit)
    drawn = nodes(picture.source)
    assert sum(not name.startswith("hidden_") for name in drawn) == len(kept) + 1
    # Every drawn non-root node has exactly one incoming edge.
    targets = [child for _, child in edges(picture.source)]
    assert sorted(targets) == sorted(name for name in drawn if name != "root")


# ---------------------------------------------------------------- comparison
def test_comparison_colours_and_counts_membership():
    first = Tree.from_paths([[0], [1], [0, 0]])
    second = Tree.from_paths([[0], [2], [0, 0], [0, 1]])
    picture = comparison_to_dot(first, second, ("a", "b"))
    drawn = nodes(picture.source)
    assert len(drawn) == 1 + 5  # root + union of {0},{1},{2},{0,0},{0,1}
    assert fill(drawn["n0"]) == fill(drawn["n0_0"]) == BOTH_FILL
    assert fill(drawn["n1"]) == FIRST_ONLY_FILL
    assert fill(drawn["n2"]) == fill(drawn["n0_1"]) == SECOND_ONLY_FILL
    assert "in both: 2" in picture.source
    assert "only a: 1" in picture.source
    assert "only b: 2" in picture.source
    assert len(edges(picture.source)) == 5


# ---------------------------------------------------------------- rendering
def test_dot_output_is_the_source_text(tmp_path):
    source = tree_to_dot(SMALL).source
    outcome = render_dot(source, tmp_path / "t.dot")
    assert not outcome.fell_back
    assert (tmp_path / "t.dot").read_text() == source


def test_unknown_extension_is_refused(tmp_path):
    with pytest.raises(TreeoptError, match=r"\.svg, \.png, \.pdf, \.dot"):
        render_dot("digraph {}", tmp_path / "t.jpeg")


@needs_dot
@pytest.mark.parametrize(("suffix", "magic"), [(".svg", b"<svg"), (".png", b"\x89PNG")])
def test_pictures_are_produced(tmp_path, suffix, magic):
    outcome = render_dot(tree_to_dot(SMALL, SMALL_P, title="t").source, tmp_path / f"t{suffix}")
    data = outcome.written.read_bytes()
    assert not outcome.fell_back and magic in data[:500]
    if suffix == ".svg":
        assert data.count(b'class="node"') == len(SMALL) + 1
        assert b"h3 r0" in data


def test_missing_dot_writes_dot_file_instead(tmp_path, monkeypatch):
    monkeypatch.setattr(render.shutil, "which", lambda _name: None)
    outcome = render_dot(tree_to_dot(SMALL).source, tmp_path / "t.svg")
    assert outcome.fell_back
    assert outcome.written == tmp_path / "t.dot"
    assert outcome.written.read_text().startswith("digraph")
    assert not (tmp_path / "t.svg").exists()


# ---------------------------------------------------------------- CLI
runner = CliRunner()


def test_cli_default_output_is_tree_name_svg_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(render.shutil, "which", lambda _name: None)  # fast, no dot needed
    result = runner.invoke(app, ["render", "mc_sim_7b_63"])
    assert result.exit_code == cli_render.EXIT_NO_GRAPHVIZ
    assert (tmp_path / "mc_sim_7b_63.dot").exists()
    message = result.stderr.strip().splitlines()
    assert len(message) == 1 and "apt-get install graphviz" in message[0]
    assert "Traceback" not in result.output


def test_cli_dot_output_and_hidden_note(tmp_path):
    tree_file = tmp_path / "small.json"
    write_tree(tree_file, SMALL)
    out = tmp_path / "small.dot"
    result = runner.invoke(app, ["render", str(tree_file), "-o", str(out), "--max-nodes", "2"])
    assert result.exit_code == 0, result.output
    assert "hid 4 of 6 nodes" in result.stderr
    assert label(nodes(out.read_text())["n0"]) == "h1 r0"
    assert "small: 6 nodes, 7 tokens/step, depth 3" in out.read_text()


def test_cli_compare(tmp_path):
    out = tmp_path / "cmp.dot"
    result = runner.invoke(
        app, ["render", "mc_sim_7b_63", "--compare", "vicuna_7b_stage2", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "only mc_sim_7b_63" in text and "only vicuna_7b_stage2" in text
    assert default_name("a.json", "b") == "a_vs_b.svg"


def default_name(tree, other):
    return str(workflow.default_output(tree, other, None))


def test_cli_profile_colours_nodes(tmp_path, monkeypatch):
    """With a profile the probabilities come from the builder; faked here to stay fast."""
    monkeypatch.setattr(workflow, "acceptance_probabilities",
                        lambda _profile, paths, _model: {p: SMALL_P[p] for p in paths})
    monkeypatch.setattr(workflow, "expected_accept_length",
                        lambda tree, _profile, _model: 1 + sum(SMALL_P[p] for p in tree.paths))
    monkeypatch.setattr("treeopt.files.profile_file.load_profile", lambda name: object())
    tree_file = tmp_path / "small.json"
    write_tree(tree_file, SMALL)
    out = tmp_path / "p.dot"
    result = runner.invoke(app, ["render", str(tree_file), "-p", "fake", "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "expected accept length 2.400 (fake, independent, as build scores it)" in text
    assert label(nodes(text)["n0"]) == "h1 r0\\n60.0%"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "nothing to draw"),
        (["mc_sim_7b_63", "-o", "x.gif"], "cannot tell the picture format"),
        (["no_such_tree"], "no tree file or shipped tree named 'no_such_tree'"),
        (["mc_sim_7b_63", "--curve", "c.json"], "--curve draws a curve file alone"),
        (["--curve", "missing.json"], "missing.json does not exist"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["render", *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_cli_profile_with_a_real_measured_profile(tmp_path):
    """End to end: probabilities and the title come from treeopt.optimize.acceptance_models."""
    from treeopt.core.profile import Profile
    from treeopt.files.profile_file import write_profile
    pytest.importorskip("treeopt.optimize.acceptance_models")
    # 4 positions, 3 heads: head 1 is right at rank 0 three times out of four.
    ranks = [[0, 0, 1], [0, 1, 0], [0, 0, 0], [1, 0, -1]]
    profile = Profile.from_rank_vectors(ranks, top_k=2)
    profile_file = tmp_path / "p.json"
    write_profile(profile_file, profile)
    tree_file = tmp_path / "small.json"
    write_tree(tree_file, SMALL)
    out = tmp_path / "p.dot"
    result = runner.invoke(
        app, ["render", str(tree_file), "-p", str(profile_file), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    drawn = nodes(out.read_text())
    assert label(drawn["n0"]) == "h1 r0\\n75.0%"  # P(r_1 = 0) = 3/4
    assert label(drawn["n1"]) == "h1 r1\\n25.0%"
    joint = runner.invoke(app, ["render", str(tree_file), "-p", str(profile_file), "-o",
                                str(out), "--model-of-acceptance", "joint"])
    assert joint.exit_code == 0, joint.output
    # joint: the share of positions whose ranks start (0, 0), 2 of 4 (independent: 56.3%).
    assert label(nodes(out.read_text())["n0_0"]) == "h2 r0\\n50.0%"
    assert "expected accept length" in out.read_text()
