"""treeopt.profile/1: summaries of rank vectors, splits, files, malformed corpus; curves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from treeopt.core.curve import CurveRow
from treeopt.core.profile import Profile
from treeopt.errors import TreeoptError
from treeopt.files.curve_file import read_curve, write_curve
from treeopt.files.profile_file import (
    dumps,
    load_profile,
    profile_from_json,
    read_profile,
    schema,
    write_profile,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
RANKS = [[0, 0], [0, 1], [0, -1], [1, 0], [-1, 0], [0, 0], [1, 1], [-1, 7]]
GROUPS = [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.fixture
def tiny() -> Profile:
    return Profile.from_rank_vectors(np.array(RANKS), top_k=2, groups=GROUPS,
                                     provenance={"model": "tiny"})


def test_from_rank_vectors(tiny: Profile) -> None:
    assert (tiny.num_heads, tiny.top_k, tiny.num_positions) == (2, 2, 8)
    np.testing.assert_allclose(tiny.marginal, [[4 / 8, 2 / 8], [4 / 8, 2 / 8]])
    # 7 >= top_k is a miss like -1; the prefix stops at the first miss.
    assert tiny.joint == {(0, 0): 2, (0, 1): 1, (0,): 1, (1, 0): 1, (): 2, (1, 1): 1}
    assert tiny.prefix_mass[()] == 8 and tiny.prefix_mass[(0,)] == 4
    np.testing.assert_array_equal(tiny.child_counts[(1,)], [1, 1])
    assert [group.num_positions for group in tiny.groups or ()] == [2, 2, 2, 2]


def test_from_cumulative_accuracy() -> None:
    profile = Profile.from_cumulative_accuracy([[0.5, 0.7, 0.75], [0.3, 0.3, 0.4]])
    np.testing.assert_allclose(profile.marginal, [[0.5, 0.2, 0.05], [0.3, 0.0, 0.1]])
    assert profile.joint is None and profile.num_positions == 0
    with pytest.raises(TreeoptError, match="must not decrease"):
        Profile.from_cumulative_accuracy([[0.5, 0.4]])
    with pytest.raises(TreeoptError, match=r"\[0, 1\]"):
        Profile.from_cumulative_accuracy([[0.5, 1.2]])


def test_round_trip(tiny: Profile, tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    write_profile(path, tiny)
    back = read_profile(path)
    assert back.joint == tiny.joint and back.provenance == {"model": "tiny"}
    np.testing.assert_allclose(back.marginal, tiny.marginal)
    assert [g.joint for g in back.groups or ()] == [g.joint for g in tiny.groups or ()]
    assert load_profile(str(path)).num_positions == 8
    assert schema()["properties"]["format"]["const"] == "treeopt.profile/1"


def test_split_by_prompt(tiny: Profile) -> None:
    train, heldout = tiny.split(0.25, seed=3)
    assert train.num_positions == 6 and heldout.num_positions == 2
    again_train, _ = tiny.split(0.25, seed=3)
    assert again_train.joint == train.joint
    combined = {k: train.joint.get(k, 0) + heldout.joint.get(k, 0)
                for k in set(train.joint) | set(heldout.joint)}
    assert combined == tiny.joint
    assert heldout.provenance["split"]["part"] == "heldout"
    train_ids = set(train.provenance["split"]["groups"])
    assert train_ids.isdisjoint(heldout.provenance["split"]["groups"])
    with pytest.raises(TreeoptError, match="between 0 and 1"):
        tiny.split(1.0, 0)
    no_groups = Profile.from_rank_vectors(np.array(RANKS), top_k=2)
    with pytest.raises(TreeoptError, match="groups"):
        no_groups.split(0.5, 0)


def test_shipped_profiles_match_the_published_csv() -> None:
    profile = load_profile("vicuna-7b")
    assert (profile.num_heads, profile.top_k) == (5, 5)
    assert "medusa_acc.csv" in profile.provenance["source"]
    np.testing.assert_allclose(profile.marginal[0], [0.5604, 0.1113, 0.0554, 0.0328, 0.02])
    if not SHARED.is_dir():
        pytest.skip("../shared is absent")
    import csv

    with open(SHARED / "data/medusa_head_accuracy_vicuna.csv", newline="") as handle:
        records = list(csv.DictReader(handle))
    for size in ("7b", "13b", "33b"):
        rows = [r for r in records if r["model"] == f"vicuna-{size}-v1.3"]
        cumulative = np.cumsum(load_profile(f"vicuna-{size}").marginal, axis=1)
        expected = [[float(r[f"top{i}"]) for i in range(1, 6)] for r in rows]
        np.testing.assert_allclose(cumulative, expected, atol=1e-9)


def _valid() -> dict:
    profile = Profile.from_rank_vectors(np.array(RANKS), top_k=2, groups=GROUPS)
    return json.loads(dumps(profile))


def _corrupt(change) -> dict:
    data = _valid()
    change(data)
    return data


MALFORMED = {
    "format wrong": (lambda d: d.update(format="treeopt.profile/2"), "is not"),
    "format missing": (lambda d: d.pop("format"), "missing \"format\""),
    "marginal rows": (lambda d: d.update(marginal=[[0.5, 0.25]]), "2 x 2"),
    "marginal columns": (lambda d: d.update(marginal=[[0.5], [0.5]]), "2 x 2"),
    "probability above 1": (lambda d: d["marginal"][0].__setitem__(0, 1.5), "marginal/0/0"),
    "probability negative": (lambda d: d["marginal"][1].__setitem__(1, -0.1), "marginal/1/1"),
    "row above 1": (lambda d: d.update(marginal=[[0.7, 0.6], [0.5, 0.25]]), "sums to 1.3 > 1"),
    "negative count": (lambda d: d["joint"][0].__setitem__(1, -1), "joint/0/1"),
    "negative num_positions": (lambda d: d.update(num_positions=-3), "num_positions"),
    "prefix too long": (lambda d: d["joint"].append([[0, 0, 0], 1]), "longer than num_heads"),
    "rank beyond top_k": (lambda d: d["joint"].append([[2], 1]), "rank >= top_k"),
    "counts vs positions": (lambda d: d.update(num_positions=9), "not num_positions 9"),
    "groups disagree": (
        lambda d: d["groups"][0]["marginal_counts"][0].__setitem__(0, 1), "add up"
    ),
    "not an object": (lambda d: d.clear() or d.update(x=1), "format"),
    "top_k zero": (lambda d: d.update(top_k=0), "top_k"),
    "probability NaN": (lambda d: d["marginal"][0].__setitem__(0, float("nan")), "NaN"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_profiles_are_rejected(case: str, tmp_path: Path) -> None:
    change, message = MALFORMED[case]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_corrupt(change)))
    with pytest.raises(TreeoptError) as info:
        read_profile(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_profiles(tmp_path: Path) -> None:
    with pytest.raises(TreeoptError, match="does not exist"):
        read_profile(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(TreeoptError, match="not valid JSON"):
        read_profile(tmp_path / "bad.json")
    with pytest.raises(TreeoptError, match="a JSON object"):
        profile_from_json([1, 2])
    with pytest.raises(TreeoptError, match="no profile file or shipped profile"):
        load_profile("vicuna-1b")


def test_bad_rank_vectors() -> None:
    with pytest.raises(TreeoptError, match="shape"):
        Profile.from_rank_vectors(np.zeros(4, dtype=int), 2)
    with pytest.raises(TreeoptError, match="integers"):
        Profile.from_rank_vectors(np.zeros((4, 2)), 2)
    with pytest.raises(TreeoptError, match="one entry per position"):
        Profile.from_rank_vectors(np.zeros((4, 2), dtype=int), 2, groups=[0, 1])
    with pytest.raises(TreeoptError, match="top_k"):
        Profile.from_rank_vectors(np.zeros((4, 2), dtype=int), 0)


# ------------------------------------------------------------------- curves
ROWS = [
    {"num_tokens": 1, "expected_accept_length": 1.0, "latency_s": 0.02, "speedup": 1.0},
    {"num_tokens": 2, "expected_accept_length": 1.56, "latency_s": 0.021, "speedup": 1.486},
]


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_curve_round_trip(suffix: str, tmp_path: Path) -> None:
    path = tmp_path / f"curve{suffix}"
    write_curve(path, ROWS, {"profile": "vicuna-7b"})
    curve = read_curve(path)
    assert curve.provenance == {"profile": "vicuna-7b"}
    assert curve.num_tokens == [1, 2]
    assert curve.rows[1] == CurveRow(2, 1.56, latency_s=0.021, speedup=1.486)
    assert curve.rows[0].overhead is None


def test_curve_errors(tmp_path: Path) -> None:
    with pytest.raises(TreeoptError, match=r"\.json or \.csv"):
        write_curve(tmp_path / "c.txt", ROWS)
    with pytest.raises(TreeoptError, match="increasing"):
        write_curve(tmp_path / "c.json", list(reversed(ROWS)))
    with pytest.raises(TreeoptError, match="counts the base model's own token"):
        write_curve(tmp_path / "c.json", [{"num_tokens": 1, "expected_accept_length": 0.5}])
    with pytest.raises(TreeoptError, match="missing num_tokens"):
        write_curve(tmp_path / "c.csv", [{"expected_accept_length": 1.5}])
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "c.csv").write_text("num_tokens,expected_accept_length\n1,abc\n")
    with pytest.raises(TreeoptError, match="must be a number"):
        read_curve(tmp_path / "c.csv")
