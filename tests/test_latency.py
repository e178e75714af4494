"""The treeopt.latency/1 format and the overhead-curve rule."""

from __future__ import annotations

import json

import pytest

from treeopt.core.latency import LatencyTable
from treeopt.errors import TreeoptError
from treeopt.files.latency_file import load_latency, prefer_measured, table_to_json, write_latency


def make_table(source: str = "measured") -> LatencyTable:
    """batch 1: 10 ms at n=1, 12 ms at n=5, 20 ms at n=9, OOM at n=16; batch 4: only n=1, 2."""
    return LatencyTable(
        measurements={
            (1, 128, 1): 0.010, (1, 128, 5): 0.012, (1, 128, 9): 0.020, (1, 128, 16): None,
            (4, 128, 1): 0.020, (4, 128, 2): 0.030,
        },
        notes={(1, 128, 16): "out of memory"},
        source=source, device="cpu", dtype="float32", arch="tiny",
        created="2025-01-01T00:00:00Z",
    )


def test_overhead_curve_interpolates_linearly_and_stops_before_oom():
    curve = make_table().overhead_curve(1, 128)
    assert sorted(curve) == list(range(1, 10))  # 16 ran out of memory; nothing past 9
    assert curve[1] == 1.0
    assert curve[3] == pytest.approx(1.1)  # halfway between 10 ms and 12 ms
    assert curve[5] == pytest.approx(1.2)
    assert curve[7] == pytest.approx(1.6)  # halfway between 12 ms and 20 ms
    assert curve[9] == pytest.approx(2.0)


def test_oom_limit_and_max_size():
    table = make_table()
    assert table.oom_limit(1, 128) == 16
    assert table.max_num_tokens(1, 128) == 9
    assert table.oom_limit(4, 128) is None
    assert table.max_num_tokens(4, 128) == 2


def test_sizes_above_an_oom_are_not_used():
    table = make_table()
    table.measurements[(1, 128, 32)] = 0.05  # a later size that "fit" is still past the limit
    assert table.max_num_tokens(1, 128) == 9


def test_unknown_setting_lists_what_is_covered():
    with pytest.raises(TreeoptError, match=r"no batch 2 at context 128 \(it covers batches 1"):
        make_table().overhead_curve(2, 128)


def test_missing_plain_decoding_is_an_error():
    table = make_table()
    del table.measurements[(4, 128, 1)]
    with pytest.raises(TreeoptError, match="num_tokens 1 is not in the table"):
        table.overhead_curve(4, 128)


def test_round_trip(tmp_path):
    path = tmp_path / "lat.json"
    write_latency(path, make_table())
    loaded = load_latency(path)
    assert loaded.measurements == make_table().measurements
    assert loaded.notes == {(1, 128, 16): "out of memory"}
    assert table_to_json(loaded) == table_to_json(make_table())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format="treeopt.tree/1"), "is not 'treeopt.latency/1'"),
        (lambda d: d.pop("format"), "missing \"format\""),
        (lambda d: d.update(source="guess"), "invalid at source"),
        (lambda d: d["measurements"][0].update(latency_s=-1.0), "invalid at measurements/0"),
        (lambda d: d["measurements"][0].update(batch=0), "invalid at measurements/0/batch"),
        (lambda d: d["measurements"].append(dict(d["measurements"][0])), "appears twice"),
    ],
)
def test_malformed_files_get_one_line_errors(tmp_path, mutate, message):
    data = table_to_json(make_table())
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TreeoptError, match=message) as info:
        load_latency(path)
    assert "\n" not in str(info.value)


def test_not_json_and_missing(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{")
    with pytest.raises(TreeoptError, match="not valid JSON"):
        load_latency(path)
    with pytest.raises(TreeoptError, match="does not exist"):
        load_latency(tmp_path / "absent.json")


def test_measured_is_preferred():
    predicted, measured = make_table("roofline-model"), make_table("measured")
    assert prefer_measured([("p", predicted), ("m", measured)])[0] == "m"
    assert prefer_measured([("p", predicted)])[0] == "p"
