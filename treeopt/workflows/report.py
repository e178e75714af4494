"""The autotune report: ``report.md`` and its pictures, from the stages' summaries and files.

The report leads with one figure: the measured speedup on the held-out prompts
when the run decoded them here, else the predicted speedup, labelled
"predicted". Every figure that comes from a model of acceptance or latency rather
than a measurement says "predicted" in the table, the text and the picture.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from treeopt.core.atomic import atomic_write_text
from treeopt.core.latency import TIMING_STATISTIC_TEXT

REPORT_FILE = "report.md"
TREE_PICTURE = "tree.svg"
CURVE_PICTURE = "curve.png"
HELD_OUT_PICTURE = "held-out.png"
# Nodes drawn in the tree picture; larger trees fold the rest (readable on a page).
MAX_DRAWN_NODES = 64
# Every file the report may write (the tree picture falls back to .dot without graphviz).
REPORT_FILES = (REPORT_FILE, TREE_PICTURE, "tree.dot", CURVE_PICTURE, HELD_OUT_PICTURE)


def headline(stages: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The one figure the report leads with: the measured speedup (with its 95%
    interval) when the run decoded, else the predicted one; the word says which, once."""
    verify = stages.get("verify")
    first = stages["tune"]["buckets"][0]
    if verify:
        runs = verify["runs"]
        tuned = next((name for name in runs if name.startswith("tuned")), None)
        if tuned is None:
            return ("Measured: no tree beats plain decoding at batch "
                    f"{first['batches'][0]} here (n* = 1); keep plain decoding.")
        others = ", ".join(f"{name} {run['measured_speedup']:.2f}x" for name, run in runs.items()
                           if name not in ("plain", tuned))
        return (f"Measured speedup on {verify['prompts']} held-out prompts: "
                f"**{runs[tuned]['measured_speedup']:.2f}x**{_interval(runs[tuned])} with the "
                f"tuned tree ({runs[tuned]['num_tokens']} tokens/step) over plain decoding on "
                f"{verify['device']}" + (f" (vs {others})" if others else "") + ".")
    row = rows[0]
    latency = stages["latency"]
    if latency["source"] == "measured":
        source = (f"step latencies timed on {latency['describe'].removeprefix('measured on ')}"
                  "; no decoding was run to check it")
    else:
        source = f"the {latency['describe']}"
    if row["num_tokens"] == 1:
        return (f"Predicted: no tree beats plain decoding at batch {row['batch']} "
                f"(calibration acceptance x {source}).")
    return (f"Predicted speedup at batch {row['batch']}: **{row['predicted_speedup']:.2f}x** "
            f"with a {row['num_tokens']}-token tree (calibration acceptance x {source}).")


def _interval(run: dict[str, Any]) -> str:
    """`` (95% interval 1.10-1.35)`` when the run has one, else empty."""
    interval = run.get("speedup_interval")
    if not interval:
        return ""
    return f" (95% interval {interval[0]:.2f}-{interval[1]:.2f})"


def write_report(directory: Path, settings: dict[str, Any],
                 stages: dict[str, Any]) -> dict[str, Any]:
    """Write ``report.md`` and its pictures into ``directory``; return the report's summary.

    Reads ``tune.json`` and the tree files the earlier stages wrote there.
    """
    from treeopt.files.jsondoc import read_json
    from treeopt.files.latency_file import load_latency

    directory = Path(directory)
    tune = read_json(directory / "tune.json", "autotune tune results")
    measured_latency = stages["latency"]["source"] == "measured"
    pictures = _pictures(directory, tune, stages, measured_latency)
    lines = [f"# treeopt autotune: {settings['model']}", "", headline(stages, tune["rows"]), ""]
    lines += _settings_section(settings, stages)
    lines += _held_out_section(stages["build"], pictures)
    lines += _latency_section(stages["latency"], load_latency(directory / "latency.json"))
    lines += _tune_section(tune["rows"], stages["tune"]["buckets"], measured_latency, pictures)
    if stages.get("verify"):
        lines += _verify_section(stages["verify"])
    lines += _export_section(stages["export"])
    atomic_write_text(directory / REPORT_FILE, "\n".join(lines) + "\n")
    return {"file": REPORT_FILE, "headline": headline(stages, tune["rows"]), "pictures": pictures}


def _pictures(directory: Path, tune: dict[str, Any], stages: dict[str, Any],
              measured_latency: bool) -> dict[str, str]:
    from treeopt.core.tree import Tree
    from treeopt.pictures.plots import plot_curve
    from treeopt.pictures.render import render_dot, tree_to_dot

    pictures: dict[str, str] = {}
    first = stages["tune"]["buckets"][0]
    if first["file"] is not None:
        tree = Tree.from_paths([tuple(p) for p in tune["buckets"][0]["paths"]])
        picture = tree_to_dot(tree, title=f"tuned tree, batch {first['batches'][0]} "
                                          f"({tree.num_tokens} tokens/step)",
                              max_nodes=MAX_DRAWN_NODES)
        pictures["tree"] = render_dot(picture.source, directory / TREE_PICTURE).written.name
    row = tune["rows"][0]
    latency = "measured latency" if measured_latency else "predicted latency (roofline model)"
    plot_curve(row["curve"], directory / CURVE_PICTURE,
               f"predicted speedup vs tree size, batch {row['batch']}, context {row['context']}: "
               f"calibration acceptance x {latency}")
    pictures["curve"] = CURVE_PICTURE
    held = stages["build"]["held_out_tokens_per_step"]
    plot_curve([{"num_tokens": n, "expected_accept_length": value}
                for n, value in enumerate(held, start=1)], directory / HELD_OUT_PICTURE,
               "tokens per step on the held-out prompts (replayed from their profile)")
    pictures["held_out"] = HELD_OUT_PICTURE
    return pictures


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def _settings_section(settings: dict[str, Any], stages: dict[str, Any]) -> list[str]:
    profile = stages["profile"]
    shown = {key: settings[key] for key in ("model", "heads", "data", "holdout_data", "engine",
                                            "gpu", "device", "batches", "max_new_tokens",
                                            "top_k", "acceptance_model", "seed")}
    return ["## Settings", "", "```json", json.dumps(shown, indent=1), "```", "",
            f"{profile['calibration_prompts']} calibration prompts, "
            f"{profile['held_out_prompts']} held-out prompts "
            f"({profile['dropped_prompts']} dropped: too long for the context), "
            f"{profile['num_heads']} heads.", ""]


def _held_out_section(build: dict[str, Any], pictures: dict[str, str]) -> list[str]:
    held = build["held_out_tokens_per_step"]
    budget = build["budget"]
    rows = [[f"built here, {budget} tokens", f"{held[budget - 1]:.3f}",
             f"{build['calibration_tokens_per_step'][budget - 1]:.3f}"],
            [f"built on the held-out prompts themselves (in-sample), {budget} tokens",
             f"{build['in_sample_tokens_per_step']:.3f}", "-"]]
    rows += [[f"{_shipped_kind(p)} {p['name']}, {p['num_tokens']} tokens",
              f"{p['held_out_tokens_per_step']:.3f}", "-"] for p in build["published"]]
    lines = ["## Held-out check", "",
             "Tokens per verification step (root included) that greedy decoding gets on the "
             "held-out prompts, replayed from their measured profile (what the runtime "
             "measures there). The in-sample row is the builder run on the held-out prompts "
             "themselves: a reference for overfitting, not a bound on every tree.", ""]
    lines += _table(["tree", "held-out tokens/step", "calibration tokens/step"], rows)
    lines += [f"![held-out tokens per step]({pictures['held_out']})", ""]
    return lines


def _shipped_kind(tree: dict[str, Any]) -> str:
    """"published" for FasterDecoding's trees, "treeopt's shipped tuned" for treeopt's own."""
    return "published" if tree.get("published", True) else "treeopt's shipped tuned tree"


def _latency_section(latency: dict[str, Any], table: Any) -> list[str]:
    """Where the step latencies come from, one row per size (ms, spread), and warnings."""
    predicted = latency["source"] != "measured"
    lines = ["## Step latency", "", f"{latency['describe']} (`latency.json`)."
             + (" These latencies are predicted." if predicted else ""), ""]
    method = table.method or {}
    if not predicted:
        target = method.get("max_spread")
        reached = all(spread <= target for spread in table.spreads.values()) if target else None
        lines += [f"{TIMING_STATISTIC_TEXT.capitalize()}, over {method.get('rounds', 1)} "
                  f"round(s) of {method.get('repeats')} timed steps; spread = (q3 - q1) / "
                  "median of the samples"
                  + ("" if target is None else
                     f", target <= {target:.0%}: {'reached' if reached else '**not reached**'}")
                  + ".", ""]
    rows = []
    for (batch, context, size), seconds in sorted(table.measurements.items()):
        spread = table.spreads.get((batch, context, size))
        rows.append([batch, context, size, "out of memory" if seconds is None
                     else f"{seconds * 1e3:.4g}", "-" if spread is None else f"{spread:.1%}"])
    lines += _table(["batch", "context", "tokens/step", f"{'predicted ' if predicted else ''}"
                     "step latency (ms)", "spread"], rows)
    if latency["warnings"]:
        lines += ["**Warnings** (the table may not be trustworthy):", ""]
        lines += [f"- {line}" for line in latency["warnings"]] + [""]
    return lines


def _tune_section(rows: list[dict[str, Any]], buckets: list[dict[str, Any]],
                  measured_latency: bool, pictures: dict[str, str]) -> list[str]:
    note = ("predicted from calibration acceptance and measured latency" if measured_latency
            else "predicted from calibration acceptance and the roofline model")
    lines = ["## Tuned tree per batch size", "", f"Speedups here are {note}.", ""]
    lines += _table(["batch", "context", "n* (tokens/step)", "tokens/step", "overhead",
                     "predicted speedup"],
                    [[r["batch"], r["context"], r["num_tokens"], f"{r['tokens_per_step']:.3f}",
                      f"{r['overhead']:.3f}", f"{r['predicted_speedup']:.3f}x"] for r in rows])
    lines += _table(["batch sizes", "tree file", "tokens/step"],
                    [[", ".join(map(str, b["batches"])), b["file"] or "plain decoding",
                      b["num_tokens"]] for b in buckets])
    for row in rows:
        choice = row.get("measured_choice")
        if choice:
            rates = ", ".join(f"{n}: {rate:.0f}" for n, rate in choice["tokens_per_s"].items())
            lines += [f"Batch {row['batch']}: the sizes up to the predicted best were decoded on "
                      f"{choice['prompts']} calibration prompts (tokens/s per size: {rates}); "
                      f"the fastest, {choice['chosen']} tokens/step, is kept.", ""]
    if "tree" in pictures:
        lines += [f"![tuned tree]({pictures['tree']})", ""]
    lines += [f"![predicted speedup curve]({pictures['curve']})", ""]
    return lines


def _verify_section(verify: dict[str, Any]) -> list[str]:
    lines = ["## Measured on the held-out prompts", "",
             f"{verify['prompts']} held-out prompts, up to {verify['max_new_tokens']} new "
             f"tokens each, decoded with medusa_runtime on {verify['device']}; the fastest of "
             f"{verify['rounds']} rounds (trees interleaved), prefill excluded.", ""]
    intervals = [run.get("interval") for run in verify["runs"].values() if run.get("interval")]
    if intervals:
        lines += [f"Speedup intervals: {intervals[0]}; they cover which prompts were "
                  "decoded, not the machine's load.", ""]
    return lines + _table(
        ["tree", "tokens verified/step", "tokens/step", "tokens/s", "measured speedup",
         "95% interval", "same tokens as plain"],
        [[name, run["num_tokens"], f"{run['tokens_per_step']:.3f}", f"{run['tokens_per_s']:.0f}",
          f"{run['measured_speedup']:.3f}x",
          "-" if name == "plain" or "speedup_interval" not in run else
          f"{run['speedup_interval'][0]:.3f}-{run['speedup_interval'][1]:.3f}",
          "yes" if run["same_tokens_as_plain"] else "no"]
         for name, run in verify["runs"].items()])


def _export_section(export: dict[str, Any]) -> list[str]:
    if not export["files"]:
        return ["## Export", "", "Nothing to export: no tree beats plain decoding.", ""]
    warning = [f"**Warning:** {export['warning']}", ""] if export.get("warning") else []
    return ["## Export", "", f"For {export['engine']}:", "",
            *[f"- `{name}`" for name in export["files"]], "", *warning]


__all__ = ["REPORT_FILE", "REPORT_FILES", "headline", "write_report"]
