"""The GPU session's dry run: same code path on the CPU, every result file written and sound.

Runs ``bash benchmarks/gpu_session.sh --dry-run`` with jsonschema, optuna and graphviz
made unimportable, as on the GPU image (which lacks the first two): the measurement
path must not need them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_session.py"
HIDDEN = ("jsonschema", "optuna", "graphviz")
# A shared 2-core CI machine runs each part a few times slower than a quiet one.
CAP_SCALE = "4"
# CI's second environment (the GPU image's transformers) sets this to rehearse the
# compiled steps as the GPU runs them; the main suite skips compiling (minutes on a CPU).
COMPILE = os.environ.get("TREEOPT_DRY_RUN_COMPILE") == "1"


def load_session_module():
    spec = importlib.util.spec_from_file_location("gpu_session", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_session", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> Path:
    stubs = tmp_path_factory.mktemp("stubs")
    for name in HIDDEN:
        (stubs / f"{name}.py").write_text(f"raise ImportError('{name} is not on the GPU image')\n")
    out = tmp_path_factory.mktemp("gpu") / "results"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(stubs), str(ROOT)])}
    env.pop("OUT", None)
    compile_flag = [] if COMPILE else ["--no-compile"]
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), "--dry-run", *compile_flag,
         "--cap-scale", CAP_SCALE, "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    import transformers

    assert lines[0].startswith("== treeopt gpu session: torch ")
    assert f"transformers {transformers.__version__}" in lines[0] and "device cpu" in lines[0]
    assert lines[-1].startswith("== ok: every part measured")
    return out


def measurement_failures(document: dict) -> list[dict]:
    """Failures other than compiled sizes a busy CPU ran out of cap for (compile on)."""
    return [item for item in document["failures"]
            if not (COMPILE and item["error"] == "time cap"
                    and item["what"].startswith("compiled"))]


def test_every_result_file_is_written_and_names_its_provenance(dry_run):
    session = load_session_module()
    expected = {*session.FILES.values(), session.LOG_FILE,
                "latency_llama-7b.json", "latency_llama-13b.json", "latency_llama-33b.json"}
    assert {path.name for path in dry_run.iterdir()} == expected
    assert len(expected) <= 8  # the device tool brings back at most 8 files
    for part, name in session.FILES.items():
        document = json.loads((dry_run / name).read_text())
        assert document["measured"] > 0, part
        assert measurement_failures(document) == [], part
        if not COMPILE:
            assert document["status"] == "complete", (part, document["failures"])
        assert document["benchmark"] == f"gpu_session/{part}"
        assert document["device"] == "cpu" and document["dry_run"] is True
        assert document["versions"]["torch"] and document["versions"]["transformers"]
        assert "--dry-run" in document["command"]
        assert set(document["execution"]) == {"captured", "compiled"}
    log = (dry_run / session.LOG_FILE).read_text()
    assert "== session:" in log and "rc -9" not in log


def test_runtime_part_times_every_tree_size_and_plain_decode(dry_run):
    document = json.loads((dry_run / "gpu_runtime.json").read_text())
    captured = document["latency"]["captured"]
    assert sorted(map(int, captured)) == [1, 4, 16, 32, 64, 128]
    assert all(entry["median_s"] > 0 and entry["cuda_graph"] is False
               for entry in captured.values())
    ratio = document["latency_ratio_64_over_1"]["captured"]
    assert ratio == pytest.approx(captured["64"]["median_s"] / captured["1"]["median_s"])
    plain = document["plain_decode"]
    assert plain["decode_tokens_per_s"] > 0 and plain["new_tokens"] > 0
    assert plain["copy_bandwidth_gbs"] > 0 and plain["fraction_of_copy_roofline"] > 0
    assert plain["datasheet_bandwidth_gbs"] is None  # a CPU has no HBM datasheet
    if COMPILE:  # the two ends of the ratio compile first
        compiled = document["latency"]["compiled"]
        assert compiled["1"]["median_s"] > 0 and compiled["64"]["median_s"] > 0
    else:
        assert document["compiled_note"] == "skipped: --no-compile"
    assert document["arch"]["name"] == "tiny-7b" and document["context"] == 64


def test_roofline_part_compares_prediction_with_measurement(dry_run):
    document = json.loads((dry_run / "gpu_roofline_vs_measured.json").read_text())
    grid = document["grid"]
    assert len(document["rows"]) == len(grid["batch"]) * len(grid["context"]) * \
        len(grid["num_tokens"])
    assert all(row["measured_s"] > 0 and row["fitted_s"] > 0 for row in document["rows"])
    fitted = document["summary"]["fitted"]
    assert 0 <= fitted["median_abs_rel_error"] <= fitted["max_abs_rel_error"]
    assert document["device_profile"]["format"] == "treeopt.device/1"
    # The cost side of engine knobs: draft-model steps, measured and predicted.
    drafts = document["draft_steps"]
    assert drafts["draft"]["name"] == "tiny-68m" and drafts["target"]["name"] == "tiny-7b"
    assert [(row["batch"], row["gamma"]) for row in drafts["rows"]] == [
        (batch, gamma) for batch in (1, 4, 16) for gamma in (0, 1, 2, 4, 8)]
    assert all(row["measured_s"] > 0 and row["fitted_s"] > 0 for row in drafts["rows"])
    assert drafts["summary"]["fitted"]["settings"] == 15


def test_latency_tables_load_as_treeopt_latency_files(dry_run):
    from treeopt.files.latency_file import load_latency

    summary = json.loads((dry_run / "gpu_latency_tables.json").read_text())
    assert [entry["status"] for entry in summary["tables"]] == ["complete"] * 4
    for size in ("7b", "13b", "33b"):
        table = load_latency(dry_run / f"latency_llama-{size}.json")  # schema-checked here
        assert table.source == "measured" and table.device == "cpu"
        assert table.arch == f"tiny-{size}" and table.method["dry_run"] is True
        assert table.overhead_curve(1, 64)[1] == 1.0
    assert load_latency(dry_run / "latency_llama-7b.json").batches == [1, 2, 4, 8]


def test_profile_part_compares_profiling_with_prefill(dry_run):
    document = json.loads((dry_run / "gpu_profile_speed.json").read_text())
    assert document["profiling_tokens_per_s"] > 0 and document["prefill_tokens_per_s"] > 0
    assert document["profiling_over_prefill"] == pytest.approx(
        document["profiling_tokens_per_s"] / document["prefill_tokens_per_s"], rel=0.01)


def test_caps_fit_the_device_call():
    session = load_session_module()
    assert sum(session.GPU_CAPS_S.values()) + session.STARTUP_S <= 7 * 60
    assert sum(session.DRY_CAPS_S.values()) + session.STARTUP_S / 3 < 2 * 60
    assert tuple(session.GPU_CAPS_S) == session.PARTS == ("runtime", "roofline", "latency",
                                                          "profile")


def test_a_part_past_its_cap_is_killed_and_its_file_says_so(tmp_path, monkeypatch):
    session = load_session_module()
    plan = session.make_plan(dry_run=True)
    monkeypatch.setattr(session, "preload", lambda: None)
    monkeypatch.setattr(session, "DRY_CAPS_S", {part: 1 for part in session.PARTS})
    monkeypatch.setattr(session, "SOFT_MARGIN_S", 0)

    def stuck_part(part, plan, out, deadline, command, compile_steps):
        os.setsid()
        (out / session.FILES[part]).write_text(json.dumps({"status": "running", "rows": [1]}))
        time.sleep(60)

    monkeypatch.setattr(session, "part_process", stuck_part)
    begin = time.time()
    session.run_session(plan, tmp_path, ("profile",), False, "test")
    assert time.time() - begin < 30
    document = json.loads((tmp_path / session.FILES["profile"]).read_text())
    assert document["status"] == "stopped: stopped by its 1 s cap"
    assert document["rows"] == [1]  # what the part wrote before its cap stays
    # What a killed part measured before its cap still counts.
    (tmp_path / session.FILES["runtime"]).write_text(json.dumps(
        {"status": "stopped", "failures": [{}],
         "latency": {"captured": {"1": {"median_s": 1e-3}}, "compiled": {}}}))
    rc, verdict = session.session_verdict(tmp_path, ("runtime", "profile"))
    assert rc == 1 and verdict.startswith("== FAILED: profile measured nothing")


def test_a_part_that_measures_nothing_fails_the_session(tmp_path):
    """Every measurement of a part failing (as under an incompatible transformers) is rc 1."""
    script = f"""
import sys
sys.path.insert(0, {str(ROOT / 'benchmarks')!r})
import gpu_session
gpu_session.preload = lambda: None
def broken(plan, result, clock):
    result.fail("step q=1", ValueError("zip() argument 2 is shorter than argument 1"))
gpu_session.part_profile = broken
sys.exit(gpu_session.main(["--dry-run", "--parts", "profile", "--out", {str(tmp_path)!r}]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith("== FAILED: profile measured nothing")
    document = json.loads((tmp_path / "gpu_profile_speed.json").read_text())
    assert document["measured"] == 0 and document["status"] == "complete"


def test_measured_counts_only_figures():
    session = load_session_module()
    runtime = {"latency": {"captured": {"1": {"median_s": 1e-3}, "4": {"error": "x"}},
                           "compiled": {"1": {"status": "compiling"}}},
               "plain_decode": {"decode_tokens_per_s": 10.0}}
    assert session.measured_count("runtime", runtime) == 2
    assert session.measured_count("roofline", {"rows": []}) == 0
    assert session.measured_count("latency", {"tables": [{"status": "failed"},
                                                         {"status": "complete"}]}) == 1
    assert session.measured_count("profile", {"failures": [{}]}) == 0
