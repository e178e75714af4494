"""One integer check, one dtype table, one provenance builder; library errors name parameters."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from treeopt.cli import app
from treeopt.core.checks import check_int, is_integer
from treeopt.core.dtypes import canonical_dtype, loadable_dtype
from treeopt.errors import ParameterError, TreeoptError
from treeopt.workflows.provenance import provenance


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.int32(1)])
def test_integers_pass_as_int(value: object) -> None:
    assert is_integer(value)
    checked = check_int(value, "budget")
    assert checked == value and type(checked) is int


@pytest.mark.parametrize(("value", "minimum", "message"), [
    (True, 1, "budget must be a positive integer, not True"),
    (0, 1, "budget must be a positive integer, not 0"),
    (-1, 0, "budget must be a non-negative integer, not -1"),
    (1, 2, "budget must be an integer >= 2, not 1"),
    (2.0, 1, "budget must be a positive integer, not 2.0"),
    ("3", 1, "budget must be a positive integer, not '3'"),
])
def test_bad_integers_name_the_parameter(value: object, minimum: int, message: str) -> None:
    with pytest.raises(ParameterError) as raised:
        check_int(value, "budget", minimum)
    assert str(raised.value) == message
    assert raised.value.parameter == "budget"


def test_check_int_note_and_plain_error() -> None:
    with pytest.raises(ParameterError, match=r"^budget must be an integer >= 2 \(root\), not 1$"):
        check_int(1, "budget", 2, note="root")
    with pytest.raises(TreeoptError) as raised:
        check_int(0, "num_heads", error=TreeoptError)
    assert type(raised.value) is TreeoptError


def test_one_dtype_table() -> None:
    assert canonical_dtype("BF16") == canonical_dtype("bfloat16") == "bfloat16"
    assert loadable_dtype("fp16") == "float16"
    with pytest.raises(ParameterError, match=r"^dtype must be bf16, fp16, fp32"):
        loadable_dtype("fp8")


def test_provenance_drops_unknowns_and_stamps() -> None:
    stamped = provenance({"profile": "p", "model": None}, budget=64)
    assert list(stamped) == ["profile", "budget", "created", "treeopt_version"]
    assert stamped["created"].endswith("Z")


@pytest.mark.parametrize(("args", "message"), [
    (["build", "--budget", "10", "--max-depth", "0"],
     "error: --max-depth must be a positive integer, not 0"),
    (["build", "--budget", "10", "--max-rank=-1"],
     "error: --max-rank must be a non-negative integer, not -1"),
    (["build", "--budget", "1"], "error: --budget must be an integer >= 2"),
    (["simulate", "--acceptance", "log:x"], "error: --acceptance log:A needs a number A"),
])
def test_cli_names_its_own_flag(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr.startswith(message), result.stderr
