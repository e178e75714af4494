"""The top-level Python API mirrors the CLI's main job."""

import pytest

import treeopt


def test_build_eval_export_from_the_package(tmp_path):
    profile = treeopt.load_profile("vicuna-7b")
    result = treeopt.build_tree(profile, budget=64)
    assert len(result.tree) == 63 and result.tree.num_tokens == 64
    assert result.expected_accept_length == pytest.approx(2.3843966, abs=1e-6)
    published = treeopt.expected_accept_length(treeopt.load_tree("mc_sim_7b_63"), profile)
    assert published == pytest.approx(2.3399460, abs=1e-6)
    path = tmp_path / "tree.json"
    treeopt.write_tree(path, result.tree, result.expected_accept_length)
    assert treeopt.load_tree_document(path).expected_accept_length == pytest.approx(2.384397)
    assert treeopt.import_text(treeopt.export_text(result.tree, "trtllm"), "trtllm",
                               num_heads=5) == result.tree
