"""Hostile input through every verb that reads a file: one line, non-zero exit, nothing written.

The corpus is generated here (no files kept): generic garbage for every reader,
truncations of valid documents, and targeted mutations of every field of every
document kind (tree, profile, rank vectors, latency, curve JSON and CSV, device
profile, model config, accuracy CSV, the engines' tree formats). Each case runs
through the CLI in-process (typer's CliRunner) and must exit 2 with exactly one
``error:`` line on stderr, no traceback, and leave its folder exactly as it was.
Hypothesis adds generated garbage on top.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import typer
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from treeopt.cli import app
from treeopt.core.profile import Profile
from treeopt.core.tree import Tree
from treeopt.errors import TreeoptError
from treeopt.files import tree_file
from treeopt.files.engines import FORMATS
from treeopt.files.profile_file import write_profile

runner = CliRunner()
# typer's runner rebuilds the click command on every call (~40 ms); built once, a refused
# input costs well under a millisecond, so the corpus can be wide and still fast.
COMMAND = typer.main.get_command(app)

# ------------------------------------------------------------------ valid documents
TREE = {"format": "treeopt.tree/1", "num_heads": 2, "paths": [[0], [1], [0, 0]],
        "expected_accept_length": 1.8, "provenance": {"budget": 4}}
PROFILE = {"format": "treeopt.profile/1", "num_heads": 2, "top_k": 2, "num_positions": 4,
           "marginal": [[0.5, 0.25], [0.5, 0.25]],
           "joint": [[[], 1], [[0], 1], [[0, 1], 1], [[1, 0], 1]],
           "groups": [{"num_positions": 2, "marginal_counts": [[2, 0], [0, 1]],
                       "joint": [[[0], 1], [[0, 1], 1]]},
                      {"num_positions": 2, "marginal_counts": [[0, 1], [2, 0]],
                       "joint": [[[], 1], [[1, 0], 1]]}],
           "provenance": {"model": "m"}}
LATENCY = {"format": "treeopt.latency/1", "source": "measured", "device": "cpu",
           "dtype": "float32", "arch": "tiny", "created": "2025-01-01T00:00:00Z",
           "measurements": [{"batch": 1, "context": 128, "num_tokens": n, "latency_s": 0.01 * n}
                            for n in (1, 2, 4)]}
CURVE = {"format": "treeopt.curve/1", "provenance": {"profile": "p"},
         "rows": [{"num_tokens": 1, "expected_accept_length": 1.0},
                  {"num_tokens": 2, "expected_accept_length": 1.5, "speedup": 1.2}]}
DEVICE = {"format": "treeopt.device/1", "device": "cpu", "peak_tflops": 1.0,
          "bandwidth_gbs": 20.0, "kernel_overhead_us": 5.0}
GPU = {"name": "g", "peak_tflops": 100.0, "bandwidth_gbs": 500.0, "memory_gb": 16.0,
       "fp8_peak_tflops": 200.0}
CONFIG = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100}
CURVE_CSV = "# treeopt.curve/1 {}\nnum_tokens,expected_accept_length\n1,1.0\n2,1.5\n"
ACCURACY_CSV = "model,head,top1,top2\nm,1,0.5,0.6\nm,2,0.3,0.4\n"

# JSON text stand-ins for values json.dumps cannot write.
RAW = {"__NAN__": "NaN", "__INF__": "Infinity", "__NINF__": "-Infinity", "__BIG__": "1e999",
       "__HUGE_INT__": "9" * 30, "__DEEP__": "[" * 3000 + "]" * 3000}
MISSING = object()


def as_text(document: dict) -> str:
    text = json.dumps(document)
    for token, raw in RAW.items():
        text = text.replace(json.dumps(token), raw)
    return text


# ------------------------------------------------------------------ the corpus
GARBAGE: list[bytes] = [
    b"", b" \n\t", b"null", b"[]", b"{}", b"42", b'"a string"', b"true", b"{", b"[[[",
    b"\x00\x01\x02\xff\xfe", "\u00e9t\u00e9".encode("latin-1") * 4, "{}".encode("utf-16"),
    b"\xef\xbb\xbf", b"NaN", b"Infinity", b"-Infinity", b"1e999", b"9" * 5000,
    b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b'{"format": 1}', b'{"format": null}', b"{'format': 'python'}", b"\n".join([b"{}"] * 3),
]

TREE_MUTATIONS: dict[str, list[object]] = {
    "format": [MISSING, "treeopt.tree/2", "treeopt.profile/1", 1, None, ["treeopt.tree/1"]],
    "num_heads": [MISSING, 0, -1, 1.5, "2", True, None, 1, "__NAN__", "__BIG__", "__HUGE_INT__",
                  [2], {"n": 2}],
    "paths": [MISSING, [], None, "[[0]]", [[]], [[-1]], [[0.0]], [[True]], [["0"]],
              [[0], [0]], [[0, 0]], [[0], [0, 0], [0, 0, 0]], [0], [[0], 1], [[2**21]],
              [[0], [None]], {"0": [0]}, [[0], [1, 0, 0]], "__DEEP__", [["__NAN__"]],
              [["__HUGE_INT__"]], [[1.5]], [[0], [[0]]]],
    "expected_accept_length": ["__NAN__", "__INF__", "__NINF__", "__BIG__", 0.5, "2", None,
                               100, True, -1, [1.5]],
    "provenance": [[], "x", 1, True, "__NAN__"],
}
PROFILE_MUTATIONS: dict[str, list[object]] = {
    "format": [MISSING, "treeopt.profile/2", "treeopt.tree/1", None],
    "num_heads": [MISSING, 0, -1, 1.5, "2", 3, True, None, "__INF__"],
    "top_k": [MISSING, 0, -2, 3, 1.5, "2", None, "__NAN__", "__HUGE_INT__"],
    "num_positions": [MISSING, -1, 1.5, "4", 5, None, "__NAN__"],
    "marginal": [MISSING, [], [[]], [[0.5, "x"], [0.5, 0.25]], [["__NAN__", 0.1], [0.5, 0.2]],
                 [[0.9, 0.9], [0.5, 0.25]], [[-0.1, 0.0], [0.5, 0.25]], [[0.5], [0.5, 0.25]],
                 [["__BIG__", 0.1], [0.1, 0.1]], [[0.5, 0.25]], [0.5, 0.25], None, "x",
                 [[0.5, 0.25, 0.0], [0.5, 0.25, 0.0]], [["__INF__", 0], [0, 0]]],
    "joint": [[[[0], -1]], [[[0, 0, 0], 4]], [[[5], 4]], [[[0], 2], [[0], 2]], [[[0]]],
              "x", [[["a"], 4]], [[[0], 1.5]], [[[], 3]], [[[-1], 4]], [[[0], "__NAN__"]],
              [[[0], 4, 5]], 5, [[[0], True]]],
    "groups": [[], [{}], [{"num_positions": 4}], "x", [None],
               [{"num_positions": 4, "marginal_counts": [[2, 0], [0, 1]], "joint": [[[0], 4]]}],
               [{"num_positions": 2, "marginal_counts": [[2, 0]], "joint": [[[0], 2]]}] * 2,
               # ragged group counts (numpy's "inhomogeneous shape" ValueError)
               [{"num_positions": 2, "marginal_counts": [[2, 0], [0]],
                 "joint": [[[0], 1], [[0, 1], 1]]},
                {"num_positions": 2, "marginal_counts": [[0, 1], [2, 0]],
                 "joint": [[[], 1], [[1, 0], 1]]}],
               [{"num_positions": 2, "marginal_counts": [[2, 0], [0, 1], [1]],
                 "joint": [[[0], 1], [[0, 1], 1]]}]],
    "provenance": [[], "x", 3],
    "rank_vectors_sha256": ["abc", 5, "Z" * 64],
}
LATENCY_MUTATIONS: dict[str, list[object]] = {
    "format": [MISSING, "treeopt.latency/2", None],
    "source": [MISSING, "guessed", None, 1],
    "device": [MISSING, "", None, 3],
    "dtype": [MISSING, "", None],
    "arch": [MISSING, "", 5],
    "created": [MISSING, ""],
    "versions": ["x", [1], {"torch": 5}],
    "gpu": ["h100", 5],
    "method": ["x", []],
    "measurements": [MISSING, [], None, "x", [{}], [1],
                     [{"batch": 0, "context": 128, "num_tokens": 1, "latency_s": 0.01}],
                     [{"batch": 1, "context": 128, "num_tokens": 1, "latency_s": -1}],
                     [{"batch": 1, "context": 128, "num_tokens": 1, "latency_s": 0}],
                     [{"batch": 1, "context": 128, "num_tokens": 1, "latency_s": "__NAN__"}],
                     [{"batch": 1, "context": 128, "num_tokens": 1, "latency_s": "__INF__"}],
                     [{"batch": 1, "context": 128, "num_tokens": 1, "latency_s": "__BIG__"}],
                     [{"batch": 1, "context": 128, "num_tokens": 1, "latency_s": 0.01}] * 2,
                     [{"batch": 1, "context": 128, "num_tokens": 2, "latency_s": 0.01}],
                     [{"batch": 1, "context": 128, "num_tokens": 1, "latency_s": None}],
                     [{"batch": 1.5, "context": 128, "num_tokens": 1, "latency_s": 0.01}],
                     [{"batch": 1, "context": 128, "num_tokens": 1, "latency_s": 0.01, "x": 1}],
                     [{"batch": 1, "context": "__HUGE_INT__", "num_tokens": 1,
                       "latency_s": 0.01}]],
}
CURVE_MUTATIONS: dict[str, list[object]] = {
    "format": [MISSING, "treeopt.curve/2", None],
    "provenance": [[1, 2], "x", 3],
    "rows": [MISSING, [], None, "x", [1], [{}], [{"num_tokens": 0, "expected_accept_length": 1}],
             [{"num_tokens": 1, "expected_accept_length": 0.5}],
             [{"num_tokens": 1, "expected_accept_length": "__NAN__"}],
             [{"num_tokens": 1, "expected_accept_length": "__INF__"}],
             [{"num_tokens": 1, "expected_accept_length": "x"}],
             [{"num_tokens": 1.5, "expected_accept_length": 1}],
             [{"num_tokens": True, "expected_accept_length": 1}],
             [{"num_tokens": 2, "expected_accept_length": 1.5},
              {"num_tokens": 1, "expected_accept_length": 1}],
             [{"num_tokens": 1, "expected_accept_length": 1}] * 2,
             [{"num_tokens": 1, "expected_accept_length": 1, "speedup": -1}],
             [{"num_tokens": 1, "expected_accept_length": 1, "overhead": "__BIG__"}],
             [{"num_tokens": 1, "expected_accept_length": 1, "latency_s": 0}],
             [{"num_tokens": "__HUGE_INT__", "expected_accept_length": 1}]],
}
DEVICE_MUTATIONS: dict[str, list[object]] = {
    "format": [MISSING, "treeopt.device/2", None],
    "device": [MISSING, None, 5],
    "peak_tflops": [MISSING, 0, -1, "__NAN__", "__INF__", "__BIG__", "x", True, None],
    "bandwidth_gbs": [MISSING, 0, "__INF__", "__NAN__", "1", [1]],
    "kernel_overhead_us": [-1, "__NAN__", "__INF__", "x", True],
    "compute_fraction": [-0.5, "x", "__INF__"],
    "fit": ["x", 5],
    "spec": ["x"],
}
GPU_MUTATIONS: dict[str, list[object]] = {
    "peak_tflops": [MISSING, 0, -1, "__NAN__", "__INF__", "__BIG__", "x", True, None, [1]],
    "bandwidth_gbs": [MISSING, 0, -5, "__INF__", "__NAN__", "500", {}],
    "memory_gb": [-1, "big", "__NAN__", "__INF__", True],
    "fp8_peak_tflops": [-1, "x", "__INF__"],
}
CONFIG_MUTATIONS: dict[str, list[object]] = {
    "hidden_size": [MISSING, 0, -64, 64.5, "64", None, "__NAN__", True],
    "intermediate_size": [MISSING, 0, "x"],
    "num_hidden_layers": [MISSING, 0, 2.5],
    "num_attention_heads": [MISSING, 0, 3, -4, "4"],
    "num_key_value_heads": [0, 3, -2, "2", 2.0],
    "vocab_size": [MISSING, 0, "__INF__", "__HUGE_INT__"],
    "head_dim": [0, -1, "x"],
}
CSV_CASES: list[str] = [
    "", "model,head\nm,1\n", "model,head,top1,top3\nm,1,0.5,0.6\n",
    "model,head,top1,top2\nm,1,x,0.6\n", "model,head,top1,top2\nm,1,0.6,0.5\n",
    "model,head,top1,top2\nm,1,0.5,1.5\n", "model,head,top1,top2\nm,1,nan,0.6\n",
    "model,head,top1,top2\nm,1,0.5,inf\n", "model,head,top1,top2\nm,1,-0.1,0.6\n",
    "model,head,top1,top2\nm,2,0.5,0.6\n", "model,head,top1,top2\nm,1,0.5,0.6,0.7\n",
    "model,head,top1,top2\nm,1,0.5\n", "model,head,top1,top2\nm,x,0.5,0.6\n",
    "model,head,top1,top2\nother,1,0.5,0.6\n", "model,head,top1,top2\n",
    "head,top1\n1,0.5\n", "model,head,top1,top2\nm,1,0.5,0.6\nm,1,0.5,0.6\n",
    "model,head,top1,top2\nm,1.5,0.5,0.6\n", "model,head,top1,top2\nm,1,1e999,0.6\n",
    'model,head,top1,top2\n"m,1,0.5,0.6\n', "\x00\x00\x00",
    "model,head,top1,top2\nm,,0.5,0.6\n", "model,head,top0,top1\nm,1,0.5,0.6\n",
    "head,model,top1\n1\n",
    # one giant line: a field over the csv module's limit, a header of 50,000 columns,
    # a whole table on one line
    "model,head,top1,top2\nm,1,0.5," + "9" * 200_000 + "\n",
    "model,head,top1,top2," + ",".join(["x"] * 50_000) + "\nm,1,0.5,0.6\n",
    "model,head,top1,top2," + "m,1,0.5,0.6," * 20_000,
    "model,head,top1,top2\n" + "m,1,0.5,0.6," * 20_000,
]
CURVE_CSV_CASES: list[str] = [
    "", "num_tokens\n1\n", "num_tokens,expected_accept_length\n",
    "num_tokens,expected_accept_length\n0,1.0\n", "num_tokens,expected_accept_length\n1,nan\n",
    "num_tokens,expected_accept_length\n1,inf\n", "num_tokens,expected_accept_length\n1,x\n",
    "num_tokens,expected_accept_length\n2,1.5\n1,1.0\n",
    "num_tokens,expected_accept_length\n1.5,1.0\n", "num_tokens,expected_accept_length\n1,0.5\n",
    "# treeopt.curve/1 {oops\nnum_tokens,expected_accept_length\n1,1.0\n",
    "# treeopt.curve/1 [1]\nnum_tokens,expected_accept_length\n1,1.0\n",
    "# treeopt.curve/1 " + "[" * 3000 + "\nnum_tokens,expected_accept_length\n1,1.0\n",
    "num_tokens,expected_accept_length,speedup\n1,1.0,-2\n",
    "num_tokens,expected_accept_length\n1,1e999\n", 'num_tokens,expected_accept_length\n"1,1\n',
    "num_tokens,expected_accept_length\n" + "9" * 5000 + ",1.0\n",
    "num_tokens,expected_accept_length\n1," + "9" * 200_000 + "\n",
    "num_tokens,expected_accept_length," + ",".join(["x"] * 50_000) + "\n1,1.0\n",
    "# treeopt.curve/1 {}\nnum_tokens,expected_accept_length\n" + "1,1.0," * 20_000,
]
IMPORT_CASES: dict[str, list[str]] = {
    "any": ["", "[", "[[0],[0]]", "[[0,0]]", "[[-1]]", "[1,2]", "{1: 2}", "'x'", "[[0.5]]",
            "[[True]]", "x = ", "import os", "[" * 2000 + "]" * 2000, "[[0], 'a']", "[[]]",
            "[[" + "9" * 5000 + "]]", "[[2097152]]", "__import__('os')", "[[0]] + [[1]]",
            "\x00", "{(0,)}", "[(0,), (0, 0), (1, 1)]", "None", "medusa_choices = ", "[[0]],"],
    "vllm": [repr(repr("[(0,), (1,)]")), repr(repr(repr("[(0,)]"))), "'[(0,), (0,)]'"],
    "trtllm-triton": ["{0}, {0, 0", "{0}, {-1}", "{0}, {0}", "{0, 0}", "{a}", "{}" * 3,
                      'key: "medusa_choices" value { string_value: "{1, 0}" }'],
    "vllm-medusa": ["[[0], [1]]", "[[0], [0, 0], [0, 1]]", '{"num_speculative_tokens": 100000}',
                    '{"num_speculative_tokens": 0}', '{"num_speculative_tokens": NaN}'],
    "trtllm": ["[[16]]", json.dumps([[0] * 17]), json.dumps([[i] for i in range(20)]
                                                           + [[0, i] for i in range(16)]
                                                           + [[0, 0, i] for i in range(16)]
                                                           + [[0, 0, 0, i] for i in range(16)])],
}


@dataclass
class Case:
    """One bad input: files to write (name -> bytes) and the command that reads them."""

    name: str
    files: dict[str, bytes]
    args: list[str]

    def __str__(self) -> str:
        return self.name


def _mutations(document: dict, mutations: dict[str, list[object]]) -> Iterator[tuple[str, str]]:
    for key, values in mutations.items():
        for index, value in enumerate(values):
            mutated = dict(document)
            if value is MISSING:
                del mutated[key]
            else:
                mutated[key] = value
            yield f"{key}-{index}", as_text(mutated)


def _truncations(text: str) -> Iterator[tuple[str, str]]:
    for tenth in range(1, 10):
        yield f"truncated-{tenth}", text[: len(text) * tenth // 10]


def _rotate(verbs: list[list[str]], index: int) -> list[str]:
    return verbs[index % len(verbs)]


# Verbs per file kind; {f} is the bad file, {o} an output name in the case's folder.
TREE_VERBS = [["validate", "{f}"], ["info", "{f}", "--json"],
              ["export", "{f}", "--to", "trtllm", "-o", "{o}.txt"],
              ["eval", "{f}", "mc_sim_7b_63"], ["render", "{f}", "-o", "{o}.dot"],
              ["render", "mc_sim_7b_63", "--compare", "{f}", "-o", "{o}.svg"]]
PROFILE_VERBS = [["build", "-b", "4", "-p", "{f}", "-o", "{o}.json", "--curve", "{o}.csv"],
                 ["eval", "mc_sim_7b_63", "-p", "{f}"],
                 ["render", "mc_sim_7b_63", "-p", "{f}", "-o", "{o}.dot"],
                 ["simulate", "-p", "{f}", "--batch", "1", "--context", "128",
                  "--candidates", "1,2"],
                 ["tune", "--latency", "lat.json", "-p", "{f}", "-o", "{o}.json"]]
LATENCY_VERBS = [["tune", "--latency", "{f}", "-o", "{o}.json", "--curve", "{o}.csv"]]
CURVE_VERBS = [["render", "--curve", "{f}", "-o", "{o}.png"]]
DEVICE_VERBS = [["roofline", "--arch", "llama-7b", "--device-profile", "{f}", "--json"],
                ["simulate", "--device-profile", "{f}", "--batch", "1", "--context", "128",
                 "--candidates", "1,2", "--json"]]
CONFIG_VERBS = [["roofline", "--arch", "{f}", "--json"],
                ["overhead", "--predict", "--arch", "{f}", "--gpu", "h100-sxm", "-o", "{o}.json",
                 "--batch", "1", "--context", "128", "--sizes", "1,2"],
                ["simulate", "--arch", "{f}", "--batch", "1", "--context", "128",
                 "--candidates", "1,2"]]
GPU_VERBS = [["roofline", "--arch", "llama-7b", "--gpu", "{f}", "--json"],
             ["overhead", "--predict", "--arch", "llama-7b", "--gpu", "{f}", "-o", "{o}.json",
              "--batch", "1", "--context", "128", "--sizes", "1,2"],
             ["simulate", "--gpu", "{f}", "--batch", "1", "--context", "128",
              "--candidates", "1,2"]]
CSV_VERBS = [["import-profile", "{f}", "--model", "m", "-o", "{o}.json"]]
RANKS_VERBS = [["build", "-b", "4", "-p", "measured.json", "-o", "{o}.json"],
               ["eval", "mc_sim_7b_63", "-p", "measured.json"]]


def _json_cases(kind: str, document: dict, mutations: dict[str, list[object]],
                verbs: list[list[str]], filename: str) -> list[Case]:
    texts = [(f"garbage-{i}", data) for i, data in enumerate(GARBAGE)]
    texts += [(name, text.encode()) for name, text in _truncations(as_text(document))]
    texts += [(name, text.encode()) for name, text in _mutations(document, mutations)]
    return [Case(f"{kind}-{name}", {filename: data}, _rotate(verbs, index))
            for index, (name, data) in enumerate(texts)]


def _measured_profile(folder: Path) -> None:
    """A measured profile with its rank vectors (measured.json + measured.json.ranks.npz)."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(4), 6)
    ranks = rng.integers(-1, 3, size=(len(groups), 2))
    write_profile(folder / "measured.json",
                  Profile.from_rank_vectors(ranks, 3, groups, first_decode_index=np.zeros(4)))


def _npz(**arrays: object) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _ranks_cases() -> list[Case]:
    """Broken .ranks.npz sidecars beside a valid measured profile."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(4), 6)
    good = {"ranks": rng.integers(-1, 3, size=(24, 2)), "groups": groups,
            "first_decode_index": np.zeros(4, dtype=np.int64), "top_k": np.array(3)}

    def with_(**changes: object) -> bytes:
        return _npz(**{**good, **changes})

    def without(name: str) -> bytes:
        return _npz(**{key: value for key, value in good.items() if key != name})

    shuffled = good["ranks"].copy()
    rng.shuffle(shuffled)
    buffer_npy = __import__("io").BytesIO()
    np.save(buffer_npy, good["ranks"])
    valid = with_()
    sidecars = {
        "empty": b"", "text": b"not an npz", "truncated-half": valid[: len(valid) // 2],
        "truncated-tail": valid[:-20], "plain-array": buffer_npy.getvalue(),
        "no-ranks": without("ranks"), "no-groups": without("groups"),
        "no-first": without("first_decode_index"),
        "float-ranks": with_(ranks=good["ranks"].astype(float)),
        "negative-ranks": with_(ranks=good["ranks"] - 5),
        "one-d-ranks": with_(ranks=good["ranks"][:, 0]),
        "three-heads": with_(ranks=np.zeros((24, 3), dtype=int)),
        "short-groups": with_(groups=groups[:-1]),
        "float-groups": with_(groups=groups.astype(float)),
        "negative-groups": with_(groups=groups - 1),
        "scattered-groups": with_(groups=np.tile(np.arange(4), 6)),
        "first-out-of-range": with_(first_decode_index=np.full(4, 99)),
        "first-negative": with_(first_decode_index=np.full(4, -1)),
        "first-too-few": with_(first_decode_index=np.zeros(2, dtype=int)),
        "first-2d": with_(first_decode_index=np.zeros((4, 1), dtype=int)),
        "top-k-other": with_(top_k=np.array(5)),
        "top-k-vector": with_(top_k=np.array([3, 3])),
        "top-k-float": with_(top_k=np.array(3.0)),
        "shuffled": with_(ranks=shuffled),
        "fewer-rows": with_(ranks=good["ranks"][:12], groups=groups[:12]),
        "probs-nan": with_(probs=np.full((24, 2, 3), np.nan, dtype=np.float16)),
        "probs-above-one": with_(probs=np.full((24, 2, 3), 2.0, dtype=np.float16)),
        "probs-wrong-shape": with_(probs=np.zeros((24, 2), dtype=np.float16)),
        "probs-integers": with_(probs=np.zeros((24, 2, 3), dtype=np.int64)),
        "object-array": b"",  # replaced below
        "zip-of-text": b"",
    }
    import io

    objects = io.BytesIO()
    with zipfile.ZipFile(objects, "w") as archive:
        archive.writestr("ranks.npy", b"\x93NUMPY garbage")
    sidecars["object-array"] = objects.getvalue()
    text_zip = io.BytesIO()
    with zipfile.ZipFile(text_zip, "w") as archive:
        archive.writestr("readme.txt", "hello")
    sidecars["zip-of-text"] = text_zip.getvalue()
    return [Case(f"ranks-{name}", {"measured.json.ranks.npz": data}, _rotate(RANKS_VERBS, i))
            for i, (name, data) in enumerate(sidecars.items())]


# The model verbs (profile, train-heads) refuse these before any model loads: "./model"
# and "./heads" never need to exist, so the cases cost what the file verbs' do.
PROMPTS = b"Once upon a time\nThe cat sat\n"
PROMPT_VERBS = [["profile", "-m", "./model", "--heads", "./heads", "-d", "{f}", "-o", "{o}.json"],
                ["train-heads", "-m", "./model", "-d", "{f}", "-o", "{o}"]]
RERUN = ["profile", "-m", "./model", "--heads", "./heads", "-d", "prompts.txt", "-o", "out.json"]


def _nested_objects(depth: int) -> str:
    return '{"prompt": ' * depth + '"x"' + "}" * depth


def _prompt_cases() -> list[Case]:
    """Calibration prompt files (``-d``): deep nesting in every layout, and garbage."""
    files = {
        "deep-list.json": "[" * 5000 + "]" * 5000,
        "deep-objects.json": "[" + _nested_objects(3000) + "]",
        "deep-line.jsonl": '{"prompt": "a"}\n' + _nested_objects(3000) + "\n",
        "deep-turns.jsonl": '{"turns": ' + "[" * 4000 + "]" * 4000 + "}\n",
        "deep-guessed.data": "[" * 5000 + "]" * 5000,
        "not-utf8.jsonl": "{\"prompt\": \"\u00e9t\u00e9\"}\n",
        "truncated.json": '[{"prompt": "a"}, {"prompt": ',
        "huge.jsonl": '{"prompt": "a"}\n' + "[" * 70 + "]" * 70 + "\n",
    }
    cases = []
    for index, (name, text) in enumerate(files.items()):
        data = text.encode("latin-1" if name.startswith("not-utf8") else "utf-8")
        cases.append(Case(f"prompts-{name}", {name: data}, _rotate(PROMPT_VERBS, index)))
    return cases


PARTIAL_FORMAT = "treeopt.partial-profile/1"


def _partial_cases() -> list[Case]:
    """``profile --resume`` checkpoints (OUTPUT.partial.npz): cut short, the wrong type, shapes."""
    good = {"format": np.array(PARTIAL_FORMAT), "fingerprint": np.array("f" * 40),
            "ranks": np.zeros((6, 2), dtype=np.int16),
            "groups": np.repeat(np.arange(2), 3).astype(np.int32), "done": np.array(2),
            "mismatches": np.array(0)}

    def with_(**changes: object) -> bytes:
        return _npz(**{key: value for key, value in {**good, **changes}.items()
                       if value is not None})

    buffer_npy = __import__("io").BytesIO()
    np.save(buffer_npy, good["ranks"])
    valid = with_()
    checkpoints = {
        "empty": b"", "text": b"not a checkpoint", "zip-magic": b"PK\x03\x04 garbage",
        "truncated-quarter": valid[: len(valid) // 4], "truncated-half": valid[: len(valid) // 2],
        "truncated-tail": valid[:-20], "plain-npy": buffer_npy.getvalue(),
        "no-ranks": with_(ranks=None), "no-format": with_(format=None),
        "other-format": with_(format=np.array("treeopt.other/1")),
        "format-number": with_(format=np.array(5)), "fingerprint-vector": with_(
            fingerprint=np.array(["a", "b"])),
        "float-ranks": with_(ranks=np.zeros((6, 2))), "one-d-ranks": with_(ranks=np.zeros(6)),
        "groups-too-long": with_(groups=np.zeros(7, dtype=np.int32)),
        "groups-past-done": with_(groups=np.full(6, 5, dtype=np.int32)),
        "done-negative": with_(done=np.array(-1)), "done-float": with_(done=np.array(1.5)),
        "probs-wrong-shape": with_(probs=np.zeros((6, 3), dtype=np.float16)),
        "probs-integers": with_(probs=np.zeros((6, 2, 4), dtype=np.int64)),
    }
    cases = [Case(f"partial-{name}", {"out.json.partial.npz": data, "prompts.txt": PROMPTS},
                  [*RERUN, "--resume"]) for name, data in checkpoints.items()]
    # Without --resume a checkpoint (even a good one) is refused: it would be thrown away.
    cases.append(Case("partial-without-resume", {"out.json.partial.npz": valid,
                                                 "prompts.txt": PROMPTS}, RERUN))
    return cases


def _targets_cases() -> list[Case]:
    """The greedy-targets cache beside a profile (OUTPUT.targets.json): garbage, wrong shapes."""
    tag = '"format": "treeopt.targets/1"'
    caches = [*GARBAGE, b"[[1, 2]]", b'["treeopt.targets/1"]',
              f'{{{tag}, "continuations": []}}'.encode(),
              f'{{{tag}, "continuations": [[1, 2]]}}'.encode(),
              f'{{{tag}, "continuations": {{"k": "abc"}}}}'.encode(),
              f'{{{tag}, "continuations": {{"k": 5}}}}'.encode(),
              f'{{{tag}, "continuations": {{"k": [1.5]}}}}'.encode(),
              f'{{{tag}, "continuations": {{"k": [-1]}}}}'.encode(),
              f'{{{tag}, "continuations": {{"k": [true]}}}}'.encode(),
              f'{{{tag}, "continuations": {{"k": [[1]]}}}}'.encode(),
              f'{{{tag}, "continuations": {{"k": [{"9" * 25}]}}}}'.encode(),
              f'{{{tag}, "continuations": null}}'.encode(),
              b'{"format": "treeopt.targets/2", "continuations": {}}']
    return [Case(f"targets-{index}", {"out.json.targets.json": data, "prompts.txt": PROMPTS},
                 RERUN) for index, data in enumerate(caches)]


# Usage errors: click's own messages, one line each (a missing choice option used to list
# its choices one per line).
USAGE_CASES = [
    ["import", "choices.txt", "-o", "out.json"],  # no --from
    ["export", "mc_sim_7b_63"],  # no --to
    ["export", "mc_sim_7b_63", "--to", "nope"], ["import", "x.txt", "--from", "nope"],
    ["build", "--no-such-option"], ["validate"], ["validate", "a.json", "b.json"],
    ["build", "-b", "many"], ["generate", "-m", "./model"], ["profile"], ["nope"],
    ["train-heads", "-m", "./model", "-d", "p.txt", "-o", "out", "--resume", "--overwrite"],
]


def build_corpus() -> list[Case]:
    """Every bad input, named by kind and mutation."""
    cases = _json_cases("tree", TREE, TREE_MUTATIONS, TREE_VERBS, "bad.json")
    cases += _json_cases("profile", PROFILE, PROFILE_MUTATIONS, PROFILE_VERBS, "bad.json")
    cases += _json_cases("latency", LATENCY, LATENCY_MUTATIONS, LATENCY_VERBS, "bad.json")
    cases += _json_cases("curve", CURVE, CURVE_MUTATIONS, CURVE_VERBS, "bad.json")
    cases += _json_cases("device", DEVICE, DEVICE_MUTATIONS, DEVICE_VERBS, "bad.json")
    cases += _json_cases("config", CONFIG, CONFIG_MUTATIONS, CONFIG_VERBS, "config.json")
    cases += _json_cases("gpu", GPU, GPU_MUTATIONS, GPU_VERBS, "gpu.json")
    cases += [Case(f"accuracy-csv-{i}", {"bad.csv": text.encode()}, CSV_VERBS[0])
              for i, text in enumerate(CSV_CASES)]
    cases += [Case(f"curve-csv-{i}", {"bad.csv": text.encode()}, CURVE_VERBS[0])
              for i, text in enumerate(CURVE_CSV_CASES)]
    for fmt in FORMATS:
        texts = IMPORT_CASES["any"] + IMPORT_CASES.get(fmt, [])
        cases += [Case(f"import-{fmt}-{i}", {"bad.txt": text.encode()},
                       ["import", "{f}", "--from", fmt, "-o", "{o}.json"])
                  for i, text in enumerate(texts)]
    cases += _ranks_cases()
    cases += _prompt_cases() + _partial_cases() + _targets_cases()
    cases += [Case(f"usage-{i}", {}, args) for i, args in enumerate(USAGE_CASES)]
    cases += [Case("import-latin1", {"bad.txt": "[[0]] # \u00e9".encode("latin-1")},
                   ["import", "{f}", "--from", "medusa", "-o", "{o}.json"]),
              Case("folder-as-tree", {}, ["validate", "."]),
              Case("missing-profile", {}, ["build", "-b", "4", "-p", "nope.json"]),
              Case("missing-latency", {}, ["tune", "--latency", "nope.json"]),
              Case("missing-curve", {}, ["render", "--curve", "nope.json", "-o", "x.png"])]
    return cases


CORPUS = build_corpus()


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every entry under ``folder`` (hidden ones too): its mode and bytes."""
    state = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        state[str(path.relative_to(folder))] = (
            info.st_mode, path.read_bytes() if path.is_file() and not path.is_symlink() else b"")
    return state


def assert_refused(result, what: str) -> None:
    """Exit 2, exactly one ``error:`` line on stderr, no traceback."""
    assert isinstance(result.exception, SystemExit) or result.exception is None, (
        f"{what}: {type(result.exception).__name__}: {result.exception}")
    assert result.exit_code == 2, f"{what}: exit {result.exit_code}: {result.output}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{what}: {result.stderr!r}"
    assert "Traceback" not in result.output


def run_in(folder: Path, args: list[str], bad: str = "bad.json"):
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        filled = [arg.replace("{f}", bad).replace("{o}", "out") for arg in args]
        return runner.invoke(COMMAND, filled)
    finally:
        os.chdir(cwd)


def check_case(case: Case, folder: Path, good_files: dict[str, bytes]) -> str | None:
    """Run one case in a fresh ``folder``; what went wrong, or None."""
    for stale in folder.iterdir():
        stale.unlink()
    for name, data in {**good_files, **case.files}.items():
        (folder / name).write_bytes(data)
    bad = next(iter(case.files), "bad.json")
    before = snapshot(folder)
    result = run_in(folder, case.args, bad)
    try:
        assert_refused(result, case.name)
    except AssertionError as exc:
        return str(exc).splitlines()[0]
    if case.files and bad not in result.stderr:
        return f"{case.name}: the error does not name {bad}: {result.stderr.strip()}"
    if snapshot(folder) != before:
        return f"{case.name}: files created or changed"
    return None


@pytest.fixture(scope="module")
def good_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The good files the bad ones are read beside: a latency table, a measured profile."""
    folder = tmp_path_factory.mktemp("fuzz-base")
    _measured_profile(folder)
    files = {path.name: path.read_bytes() for path in folder.iterdir()}
    files["lat.json"] = json.dumps(LATENCY).encode()
    return files


def test_the_corpus_is_wide() -> None:
    kinds = {case.name.split("-")[0] for case in CORPUS}
    assert len(CORPUS) >= 300
    assert kinds >= {"tree", "profile", "latency", "curve", "device", "config", "gpu",
                     "accuracy", "import", "ranks", "prompts", "partial", "targets", "usage"}
    verbs = {case.args[0] for case in CORPUS}
    assert verbs >= {"validate", "info", "export", "eval", "render", "build", "simulate",
                     "tune", "roofline", "overhead", "import-profile", "import"}


KINDS = sorted({case.name.split("-")[0] for case in CORPUS})


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_is_one_line_and_changes_nothing(kind: str, good_files: dict[str, bytes],
                                                   tmp_path: Path) -> None:
    """Every case of a kind (one test per kind: hundreds of tmp folders cost more than the runs)."""
    cases = [case for case in CORPUS if case.name.split("-")[0] == kind]
    problems = [problem for case in cases
                if (problem := check_case(case, tmp_path, good_files)) is not None]
    assert not problems, f"{len(problems)} of {len(cases)} cases:\n" + "\n".join(problems)


# ------------------------------------------------------------- good inputs stay good
def test_the_valid_documents_are_accepted(tmp_path: Path) -> None:
    """The corpus mutates documents that are themselves fine (so each case tests its change)."""
    files = {"tree.json": as_text(TREE), "profile.json": as_text(PROFILE),
             "lat.json": as_text(LATENCY), "curve.json": as_text(CURVE),
             "device.json": as_text(DEVICE), "config.json": as_text(CONFIG),
             "gpu.json": as_text(GPU),
             "curve.csv": CURVE_CSV, "acc.csv": "\ufeff" + ACCURACY_CSV}
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    _measured_profile(tmp_path)
    for args in (["validate", "tree.json"], ["eval", "tree.json", "-p", "profile.json"],
                 ["build", "-b", "4", "-p", "measured.json"],
                 ["tune", "--latency", "lat.json", "-p", "profile.json"],
                 ["render", "--curve", "curve.json", "-o", "c.png"],
                 ["render", "--curve", "curve.csv", "-o", "c2.png"],
                 ["roofline", "--arch", "config.json", "--device-profile", "device.json",
                  "--json"],
                 ["import-profile", "acc.csv", "--model", "m", "-o", "imported.json"],
                 ["roofline", "--arch", "llama-7b", "--gpu", "gpu.json", "--json"],
                 ["import", "tree.txt", "--from", "vllm", "-o", "imported-tree.json"]):
        (tmp_path / "tree.txt").write_text(repr("[(0,), (1,), (0, 0)]"))
        result = run_in(tmp_path, args)
        assert result.exit_code == 0, (args, result.output)


def test_a_2000_deep_chain_validates(tmp_path: Path) -> None:
    depth = 2000
    chain = {"format": "treeopt.tree/1", "num_heads": depth,
             "paths": [[0] * length for length in range(1, depth + 1)]}
    (tmp_path / "chain.json").write_text(json.dumps(chain))
    result = run_in(tmp_path, ["validate", "chain.json"])
    assert result.exit_code == 0 and f"{depth} nodes" in result.output


# ------------------------------------------------------------------ hypothesis
READERS = [
    ("tree", ["validate", "{f}"], "bad.json"),
    ("tree-render", ["render", "{f}", "-o", "{o}.dot"], "bad.json"),
    ("profile", ["build", "-b", "4", "-p", "{f}", "-o", "{o}.json"], "bad.json"),
    ("latency", ["tune", "--latency", "{f}", "-o", "{o}.json"], "bad.json"),
    ("curve-json", ["render", "--curve", "{f}", "-o", "{o}.png"], "bad.json"),
    ("curve-csv", ["render", "--curve", "{f}", "-o", "{o}.png"], "bad.csv"),
    ("device", ["roofline", "--arch", "llama-7b", "--device-profile", "{f}"], "bad.json"),
    ("config", ["roofline", "--arch", "{f}"], "config.json"),
    ("accuracy-csv", ["import-profile", "{f}", "--model", "m", "-o", "{o}.json"], "bad.csv"),
    *[(f"import-{fmt}", ["import", "{f}", "--from", fmt, "-o", "{o}.json"], "bad.txt")
      for fmt in FORMATS],
    ("gpu", ["roofline", "--arch", "llama-7b", "--gpu", "{f}"], "gpu.json"),
    ("ranks", ["build", "-b", "4", "-p", "measured.json", "-o", "{o}.json"],
     "measured.json.ranks.npz"),
]
FUZZ_SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                         suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                HealthCheck.too_slow])


@pytest.mark.parametrize(("kind", "args", "name"), READERS, ids=[r[0] for r in READERS])
@FUZZ_SETTINGS
@given(data=st.binary(max_size=400))
def test_generated_garbage_is_refused(kind: str, args: list[str], name: str, data: bytes,
                                      tmp_path: Path) -> None:
    folder = tmp_path / "garbage"
    folder.mkdir(exist_ok=True)
    for stale in folder.iterdir():
        stale.unlink()
    (folder / "lat.json").write_text(json.dumps(LATENCY))
    if kind == "ranks":
        _measured_profile(folder)
    (folder / name).write_bytes(data)
    before = snapshot(folder)
    result = run_in(folder, args, name)
    assert_refused(result, f"{kind}: {data!r}")
    assert snapshot(folder) == before


JSON_LEAVES = (st.none() | st.booleans() | st.integers(-3, 2**70) | st.text(max_size=5)
               | st.floats(allow_nan=False, allow_infinity=False))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=4),
                           max_leaves=12)
DOCUMENT_KINDS = [("tree", TREE, ["validate", "{f}"]),
                  ("profile", PROFILE, ["eval", "mc_sim_7b_63", "-p", "{f}"]),
                  ("latency", LATENCY, ["tune", "--latency", "{f}"]),
                  ("curve", CURVE, ["render", "--curve", "{f}", "-o", "{o}.png"]),
                  ("device", DEVICE, ["roofline", "--arch", "llama-7b", "--device-profile",
                                      "{f}", "--json"])]


@pytest.mark.parametrize(("kind", "document", "args"), DOCUMENT_KINDS,
                         ids=[k[0] for k in DOCUMENT_KINDS])
@FUZZ_SETTINGS
@given(key_choice=st.integers(0, 100), value=JSON_VALUES)
def test_any_field_value_is_accepted_or_one_line(kind: str, document: dict, args: list[str],
                                                 key_choice: int, value: object,
                                                 tmp_path: Path) -> None:
    """A field replaced by any JSON value: a good document or one line, never a traceback."""
    keys = sorted(document)
    mutated = {**document, keys[key_choice % len(keys)]: value}
    folder = tmp_path / "field"
    folder.mkdir(exist_ok=True)
    (folder / "bad.json").write_text(json.dumps(mutated))
    result = run_in(folder, args)
    if result.exit_code != 0:
        assert_refused(result, f"{kind}: {mutated}")


RANKS = st.integers(-2, 4) | st.booleans() | st.floats(0, 3) | st.text(max_size=1)
PATHS = st.lists(st.lists(RANKS, max_size=3) | st.integers(0, 3), max_size=6)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(paths=PATHS)
def test_python_path_checks_are_at_least_as_strict_as_the_schema(paths: list) -> None:
    """``check_schema(..., checked=("paths",))`` relies on Tree.from_paths covering the schema."""
    document = {"format": "treeopt.tree/1", "num_heads": 3, "paths": paths}
    try:
        Tree.from_paths(paths, num_heads=3)
    except TreeoptError:
        return
    jsonschema.validate(document, tree_file.schema())  # raises if the schema disagrees


COUNTS = st.integers(-1, 3) | st.booleans() | st.floats(0, 2) | st.none()
JOINT = st.lists(st.lists(st.lists(COUNTS, max_size=2) | COUNTS, max_size=3), max_size=3)
MARGINAL = st.lists(st.lists(st.floats(-0.5, 1.5) | st.integers(0, 1) | st.booleans()
                             | st.text(max_size=1), max_size=2), max_size=2)
GROUPS = st.none() | st.lists(st.fixed_dictionaries(
    {"num_positions": COUNTS, "marginal_counts": st.lists(st.lists(COUNTS, max_size=2),
                                                          max_size=2), "joint": JOINT}),
    max_size=2)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(marginal=MARGINAL, joint=st.none() | JOINT, groups=GROUPS)
def test_python_profile_checks_are_at_least_as_strict_as_the_schema(
        marginal: list, joint: list | None, groups: list | None) -> None:
    """``check_schema(..., checked=(marginal, joint, groups))`` relies on these checks."""
    from treeopt.files import profile_file

    document = {"format": "treeopt.profile/1", "num_heads": 1, "top_k": 1,
                "num_positions": 0, "marginal": marginal, "joint": joint}
    if groups is not None:
        document["groups"] = groups
    try:
        profile_file._check_arrays(document)
    except TreeoptError:
        return
    jsonschema.validate(document, profile_file.schema())


# ------------------------------------------------------------------ runs that write
STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"
STORY_PROMPTS = Path(__file__).parent / "data" / "story_prompts.txt"
needs_stories = pytest.mark.skipif(not STORIES.is_dir(),
                                   reason="needs ../shared/models/stories260K")
TINY_TRAINING = ["--max-prompts", "4", "--max-new-tokens", "8", "--epochs", "1",
                 "--num-heads", "1", "-q"]
EARLIER_RUN = {"training_state.json": b'{"format": "treeopt.training-state/1"}',
               "config.json": b'{"medusa_num_heads": 1}',
               "medusa_lm_head.safetensors": b"earlier heads"}


@pytest.mark.parametrize("contents", [
    EARLIER_RUN,
    {"config.json": b'{"medusa_num_heads": 5}', "medusa_lm_head.safetensors": b"published"},
    {"notes.txt": b"mine"},
    {".hidden": b""},
], ids=["earlier-run", "heads-without-state", "unrelated-file", "hidden-file"])
def test_train_heads_refuses_a_folder_that_is_not_its_own(contents: dict[str, bytes],
                                                          tmp_path: Path) -> None:
    """Before the model loads (./no-model never does): one line naming --resume and
    --overwrite, and the folder byte-identical."""
    folder = tmp_path / "out"
    folder.mkdir()
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    before = snapshot(folder)
    result = run_in(tmp_path, ["train-heads", "-m", "./no-model", "-d", str(STORY_PROMPTS),
                               "-o", "out"])
    assert_refused(result, str(contents))
    assert "--resume" in result.stderr and "--overwrite" in result.stderr, result.stderr
    assert snapshot(folder) == before


@needs_stories
def test_train_heads_into_an_earlier_run_refuses_and_keeps_its_heads(tmp_path: Path) -> None:
    """A real earlier run: refused without --resume (heads byte-identical); --overwrite
    replaces it; every output, safetensors included, is 0644 under umask 022."""
    common = ["train-heads", "-m", str(STORIES), "-d", str(STORY_PROMPTS), *TINY_TRAINING,
              "--targets-cache", "cache", "-o", "heads"]
    umask = os.umask(0o022)
    try:
        first = run_in(tmp_path, common)
        assert first.exit_code == 0, first.output
        heads = tmp_path / "heads"
        modes = {path.name: oct(path.stat().st_mode & 0o777) for path in heads.iterdir()}
        assert set(modes.values()) == {"0o644"}, modes
        assert {"medusa_lm_head.safetensors", "trainable.safetensors",
                "optimizer.safetensors"} <= set(modes)
        before = snapshot(heads)
        again = run_in(tmp_path, common)
        assert_refused(again, "train-heads into an earlier run")
        assert "--resume" in again.stderr and "--overwrite" in again.stderr
        assert snapshot(heads) == before
        replaced = run_in(tmp_path, [*common, "--overwrite", "--seed", "1"])
        assert replaced.exit_code == 0, replaced.output
        assert snapshot(heads) != before
    finally:
        os.umask(umask)


def _disk_full(*args: object, **kwargs: object) -> None:
    from safetensors import SafetensorError

    raise SafetensorError("Error while serializing: I/O error: No space left on device "
                          "(os error 28)")


def test_the_training_checkpoint_on_a_full_disk_is_one_line_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """safetensors' disk-full is a SafetensorError, not an OSError: still one line, no file."""
    import safetensors.torch
    import torch

    from treeopt.model.train_heads import TrainSettings, save_state

    weight = torch.nn.Parameter(torch.ones(4, 3))
    optimizer = torch.optim.AdamW([weight])
    weight.sum().backward()
    optimizer.step()
    monkeypatch.setattr(safetensors.torch, "save_file", _disk_full)
    with pytest.raises(TreeoptError) as info:
        save_state(tmp_path, {"w": weight}, optimizer, 1, TrainSettings())
    assert str(info.value) == (f"cannot write {tmp_path / 'trainable.safetensors'}: "
                               "No space left on device")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    umask = os.umask(0o022)
    try:
        save_state(tmp_path, {"w": weight}, optimizer, 1, TrainSettings())
    finally:
        os.umask(umask)
    assert sorted((path.name, oct(path.stat().st_mode & 0o777)) for path in tmp_path.iterdir()) \
        == [("optimizer.safetensors", "0o644"), ("trainable.safetensors", "0o644"),
            ("training_state.json", "0o644")]


def _mount_tmpfs(folder: Path, size: int) -> bool:
    import subprocess

    folder.mkdir()
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


@needs_stories
def test_train_heads_on_a_full_disk_is_one_line_and_leaves_no_file(tmp_path: Path) -> None:
    """A real 64 KiB tmpfs (root only, else skipped): the heads do not fit."""
    import subprocess

    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, 64 * 1024):
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    try:
        result = run_in(tmp_path, ["train-heads", "-m", str(STORIES), "-d", str(STORY_PROMPTS),
                                   *TINY_TRAINING, "--targets-cache", "cache", "-o", "disk/h"])
        assert_refused(result, "train-heads on a full disk")
        assert "No space left on device" in result.stderr
        assert [path for path in disk.rglob("*") if path.is_file()] == []
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# ------------------------------------------------------------------ library noise
def test_greedy_batches_never_run_past_the_context() -> None:
    """A prompt the context clips is never batched with shorter ones: its row would run
    past the model's positions (transformers' "exceeded the model's predefined maximum
    length" reminder; an index error for learned positions)."""
    from types import SimpleNamespace

    from treeopt.model.profiling import _batches_by_limit

    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=64))
    prompts = [[1] * length for length in (3, 5, 40, 41, 50, 60, 63, 64, 70)]
    batches = _batches_by_limit(model, prompts, list(range(len(prompts))), 20, 2)
    assert [(batch, limit) for batch, limit in batches] == [
        ([0, 1], 20), ([2, 3], 20), ([4], 14), ([5], 4), ([6], 1), ([7, 8], 0)]
    for batch, limit in batches:
        assert max(len(prompts[i]) for i in batch) + limit <= 64 or limit == 0


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@needs_stories
def test_model_verbs_are_quiet_in_a_pipe_and_generate_takes_q(tmp_path: Path) -> None:
    """No "Loading weights" bar when stderr is not a terminal, no length reminder from a
    prompt the context clips (480 of 512 positions, batched with short ones); generate -q
    prints the text and its one-line summary only."""
    from transformers.utils import logging as hf_logging

    long_prompt = " ".join(["Once upon a time there was a cat."] * 48)  # ~480 tokens
    (tmp_path / "prompts.txt").write_text(f"Hi\nThe dog ran\n{long_prompt}\nA frog\n")
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_warning()  # as a fresh process has them (-q elsewhere set them)
    hf_logging.enable_progress_bar()
    records = _Records()
    hf_logging.get_logger("transformers").addHandler(records)
    try:
        result = run_in(tmp_path, ["train-heads", "-m", str(STORIES), "-d", "prompts.txt",
                                   "--max-new-tokens", "40", "--epochs", "1",
                                   "--num-heads", "1", "--targets-cache", "cache", "-o", "heads"])
    finally:
        hf_logging.get_logger("transformers").removeHandler(records)
        hf_logging.set_verbosity(verbosity)
        if not bars:
            hf_logging.disable_progress_bar()
    assert result.exit_code == 0, result.output
    assert not [m for m in records.messages if "predefined maximum length" in m], records.messages
    assert "Loading weights" not in result.output and "Traceback" not in result.output
    generated = run_in(tmp_path, ["generate", "-m", str(STORIES), "--prompt", "Once upon a time",
                                  "--max-new-tokens", "8", "-q"])
    assert generated.exit_code == 0, generated.output
    assert generated.stdout.startswith("Once upon a time, there was a little girl")
    lines = [line for line in generated.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "tokens/step" in lines[0], lines
