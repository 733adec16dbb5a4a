"""The cost of one shadow challenger: the steady state of scripts/bench_load.py with none, then with one.

One invocation, two daemons one after the other on the same machine, the same bars and settings:
a temporary model registry holds the demo model as the champion (v1) and its weights slightly
perturbed as v2; the first run serves v1 alone, the second with v2 listed as a challenger
(``kronos-stream models challenge v2``), so the daemon forecasts every bar with both (v2 between
the stream's rounds, on the same model thread: daemon/model/shadow_work.py) and scores v2 beside v1.
With ``--repeat N`` the pair of runs (none, one) is made N times, alternating, so that the shared
machine's drift in load falls on both alike; every run is reported, with the ratio of each pair and the
median of the pairs' ratios. With ``--also-fraction F`` a last run gives v2 that sample fraction of the
symbols. Every run is ``bench_load.py --steady`` with ``--registry`` (the same code path, by parameters).

Reported per run: the model time (``kronos_model_step_seconds`` plus
``kronos_challenger_model_seconds_total`` over the measured intervals; per forecast and as a share of
the time), the end-to-end latency percentiles (bar sent until its forecast is read from the output
topic), the ratios to the run without a challenger, the commit and the load average before each run.
Goals: model time <= 2x, p99 latency <= 1.2x.

    eval "$(scripts/services env)"
    PYTHONPATH=. .venv/bin/python scripts/bench_challenger.py [--repeat 3] [--also-fraction 0.25] [--steady 200 --interval 5 --intervals 4]

Writes results/bench_challenger.json and .md (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from kronos_contract import challengers as listing
from kronos_contract.registry import Registry
from scripts.benchload import cli as bl_cli
from scripts.benchload import process as bl_process
from scripts.benchload import report as bl_report
from tests.support.hotswap import perturbed_copy, publish

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steady", type=int, default=200, help="symbols (default 200)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between closes (default 5)")
    p.add_argument("--intervals", type=int, default=4, help="measured intervals (default 4)")
    p.add_argument("--warm-bars", type=int, default=16)
    p.add_argument("--steady-warmup", type=int, default=16,
                   help="intervals not measured (default 16: the challenger's forecasts of the warm-up bars, made "
                   "in the gaps between the stream's bursts, are done before the measured ones)")
    p.add_argument("--max-context", type=int, default=64)
    p.add_argument("--horizon", type=int, default=12)
    p.add_argument("--sample-count", type=int, default=4)
    p.add_argument("--sample-fraction", type=float, default=1.0,
                   help="KRONOS_CHALLENGERS__SAMPLE_FRACTION of the second run (default 1: every symbol)")
    p.add_argument("--also-fraction", type=float, default=None,
                   help="a third run: the challenger on this sample fraction of the symbols (e.g. 0.25)")
    p.add_argument("--repeat", type=int, default=1,
                   help="make the pair of runs (none, one) this many times, alternating (default 1)")
    p.add_argument("--daemon-env", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting for every run's daemon (repeatable)")
    p.add_argument("--tokenizer-tuned", action="store_true",
                   help="perturb the challenger's tokenizer too (default: its predictor only, the tokenizer "
                   "frozen as the retrain job leaves it, so the challenger takes the champion's context ids)")
    p.add_argument("--out", type=Path, default=REPO / "results" / "bench_challenger.json")
    return p.parse_args(argv)


def steady_args(args: argparse.Namespace, registry: Path, label: str, fraction: float) -> argparse.Namespace:
    return bl_cli.parse_args([
        "--steady", str(args.steady), "--interval", str(args.interval), "--intervals", str(args.intervals),
        "--steady-warmup", str(args.steady_warmup), "--warm-bars", str(args.warm_bars), "--max-context", str(args.max_context), "--horizon", str(args.horizon),
        "--sample-count", str(args.sample_count), "--modes", "exact", "--model", "demo", "--registry", str(registry),
        "--warm-timeout", "600", "--out", str(REPO / "results" / "tmp" / f"bench_challenger_{label}.json"),
        "--daemon-env", f"KRONOS_CHALLENGERS__SAMPLE_FRACTION={fraction}",
        *[arg for kv in args.daemon_env for arg in ("--daemon-env", kv)],
    ])  # fmt: skip


def figures(run: dict[str, Any], measured_s: float) -> dict[str, Any]:
    m = run["measured"]
    # the model thread's time: the champion's calls (kronos_model_step_seconds, until its forecasts are
    # handed back) plus the challengers' calls of the same jobs (kronos_challenger_model_seconds_total)
    model_s = m["model_s"] + m["challenger_model_s"]
    bars, shadow = m["bars_sent"], m["challenger_forecasts"]
    champion_ms = m["model_s"] / bars * 1e3 if bars else None
    challenger_ms = m["challenger_model_s"] / shadow * 1e3 if shadow else 0.0
    return {
        "model_ms_per_forecast": round(model_s / bars * 1e3, 3) if bars else None,
        # each model's time per forecast it made, summed: what one bar costs in a steady state where the
        # challenger forecasts exactly the bars sent (the measured intervals may hold more or fewer of its)
        "model_ms_per_bar_both": None if champion_ms is None else round(champion_ms + challenger_ms, 3),
        "champion_ms_per_forecast": None if champion_ms is None else round(champion_ms, 3),
        "challenger_ms_per_forecast": round(challenger_ms, 3) if shadow else None,
        "challenger_shared_contexts": m.get("challenger_shared_contexts", 0),
        "model_busy_share": round(model_s / measured_s, 3),
        "mean_model_call_ms": m["mean_model_call_ms"],
        "mean_batch": m["mean_batch"],
        "latency_ms": m["latency_ms"],
        "forecasts_per_s": m["forecasts_per_s"],
        "kept_up": m["kept_up"],
        "forecasts_missing_after_grace": m["forecasts_missing_after_grace"],
        "model_s": round(model_s, 3),
        "champion_model_s": m["model_s"],
        "challenger_model_s": m["challenger_model_s"],
        "challenger_forecasts": m["challenger_forecasts"],
        "bars_sent": m["bars_sent"],
    }


def commit() -> str:
    """The code measured: HEAD, marked when the working tree differs from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
                           cwd=REPO, capture_output=True, text=True)  # fmt: skip (results/: this script's own)
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    runs, r, s = report["runs"], report["ratios"], report["settings"]
    lines = [
        "# One shadow challenger against none (steady state, real Kafka and Redis)",
        "",
        bl_report.machine_line(report["machine"]),
        "",
        f"Code: commit `{report['commit']}`. Load average (1, 5, 15 min) before each run: "
        + "; ".join(f"{k} {v}" for k, v in report["load_before_run"].items())
        + ".",
        "",
        f"Demo model as champion v1, its {s.get('perturbed', 'tokenizer and predictor')} weights perturbed as challenger "
        f"v2 (exact mode; challenger sample fraction "
        f"{s.get('sample_fraction', 1.0)}); {s['steady']} symbols "
        f"warmed up with {s['warm_bars']} bars each, then one bar per symbol every {s['interval']} s (landing "
        f"within 1 s of the close), {s.get('steady_warmup', 1)} interval(s) not measured, {s['intervals']} measured; max_context "
        f"{s['max_context']}, horizon {s['horizon']}, {s['sample_count']} sample paths. Runs in this order: "
        f"{', '.join(report['order'])}. Command: `{report['command']}`.",
        "",
        "| run | model ms per forecast | model busy | mean model call ms (batch) | latency p50 ms | p90 ms | p99 ms "
        "| forecasts/s | kept up | shadow forecasts (challenger model s) | ms per forecast: champion, challenger "
        "(shared contexts) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for label in report["order"]:
        f, lat = runs[label], runs[label]["latency_ms"]
        name = {"none": "no challenger", "one": "one challenger"}.get(label.split("-")[0], "")
        name = f"{name} ({label})" if name else f"one challenger on {s['also_fraction']:.0%} of the symbols"
        lines.append(
            f"| {name} | {f['model_ms_per_forecast']} | {f['model_busy_share']:.0%} | {f['mean_model_call_ms']} "
            f"({f['mean_batch']}) | {lat['p50']} | {lat['p90']} | {lat['p99']} | {f['forecasts_per_s']} | "
            f"{'yes' if f['kept_up'] else 'no'} | {f['challenger_forecasts']} ({f['challenger_model_s']}) | "
            f"{f.get('champion_ms_per_forecast')}, {f.get('challenger_ms_per_forecast')} "
            f"({f.get('challenger_shared_contexts', 0)}) |"
        )
    lines += [
        "",
        "| pair | model time one / none | per bar, each model's own rate: one / none | challenger / champion per "
        "forecast | p50 one / none | p99 one / none |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for p in report["pairs"]:
        lines.append(
            f"| {p['none']}, {p['one']} | {p['model_ms_per_forecast']}x | {p.get('model_ms_per_bar_both')}x | "
            f"{p.get('challenger_to_champion')}x | {p['latency_p50']}x | {p['latency_p99']}x |"
        )
    lines += [
        "",
        f"Median of the pairs' ratios one / none: model time per forecast **{r['model_ms_per_forecast']}x** (goal <= 2; "
        f"per bar at each model's own rate {r.get('model_ms_per_bar_both')}x, a challenger forecast "
        f"{r.get('challenger_to_champion')}x a champion forecast), "
        f"p50 latency {r['latency_p50']}x, p99 latency **{r['latency_p99']}x** (goal <= 1.2)."
        + (
            f" With the challenger on {s['also_fraction']:.0%} of the symbols, against the median of the runs without: "
            f"model time {r['sampled_model_ms_per_forecast']}x, p99 latency {r['sampled_latency_p99']}x."
            if "sampled" in runs
            else ""
        ),
        "",
        "- *model ms per forecast*: the model thread's time over the measured intervals per bar: the champion's "
        "calls (`kronos_model_step_seconds`) plus the challenger's calls (`kronos_challenger_model_seconds_total`), "
        "which the daemon makes on the same model thread in the gaps between the stream's bursts of rounds, in "
        "chunks sized to end before the next burst is due (daemon/model/shadow_work.py).",
        "- *per bar, each model's own rate*: the champion's model time per bar sent plus the challenger's per "
        "shadow forecast it made: what a bar costs when the challenger forecasts exactly the bars sent (in the "
        "measured intervals it may also forecast earlier bars, or fall behind). *shared contexts*: its forecasts that "
        "took the champion's context ids (`kronos_challenger_shared_contexts_total`: the same tokenizer).",
        "- *latency*: from just before the bar was sent until its (champion's) forecast was read from the output "
        "topic.",
        "- Challenger active: " + "; ".join(report["challenger_check"]) + ".",
    ]
    path.write_text("\n".join(lines) + "\n")


def pair_ratios(none: dict[str, Any], one: dict[str, Any]) -> dict[str, float | None]:
    return {
        "model_ms_per_forecast": ratio(one["model_ms_per_forecast"], none["model_ms_per_forecast"]),
        "model_ms_per_bar_both": ratio(one["model_ms_per_bar_both"], none["model_ms_per_bar_both"]),
        "challenger_to_champion": ratio(one["challenger_ms_per_forecast"], one["champion_ms_per_forecast"]),
        "model_busy_share": ratio(one["model_busy_share"], none["model_busy_share"]),
        "latency_p50": ratio(one["latency_ms"]["p50"], none["latency_ms"]["p50"]),
        "latency_p99": ratio(one["latency_ms"]["p99"], none["latency_ms"]["p99"]),
    }


def median_of(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


async def run_both(args: argparse.Namespace, root: Path, command: str) -> dict[str, Any]:
    registry = Registry(str(root))
    runs: dict[str, dict[str, Any]] = {}
    checks: list[str] = []
    labels = [f"{kind}-{i}" for i in range(1, args.repeat + 1) for kind in ("none", "one")]
    labels += ["sampled"] if args.also_fraction is not None else []
    for label in labels:
        listed = "v2" in listing.challengers(registry)
        if label.startswith("none") and listed:
            listing.withdraw(registry, "v2")
        elif not label.startswith("none") and not listed:
            listing.challenge(registry, "v2", by="bench")
        fraction = args.also_fraction if label == "sampled" else args.sample_fraction
        sargs = steady_args(args, root, label, fraction)
        report = await bl_cli.main_async(sargs, command)
        run = report["modes"]["exact"]
        if "error" in run:
            raise SystemExit(f"the {label} run failed: {run['error']}")
        runs[label] = {"figures": figures(run, args.intervals * args.interval), "report": report}
        log = (REPO / "results" / "tmp" / "bench_steady-exact.log").read_text(errors="replace")
        if not label.startswith("none"):
            ok = "challenger loaded" in log and log.count('"challenger refused"') == 0
            checks.append(f"{label}: " + ("yes (its log says 'challenger loaded', no refusal)" if ok else "NO"))
    figs = {k: v["figures"] for k, v in runs.items()}
    pairs: list[dict[str, Any]] = [
        {"none": f"none-{i}", "one": f"one-{i}", **pair_ratios(figs[f"none-{i}"], figs[f"one-{i}"])}
        for i in range(1, args.repeat + 1)
    ]
    medians = {key: median_of([p[key] for p in pairs]) for key in pair_ratios(figs["none-1"], figs["one-1"])}
    sampled = figs.get("sampled")
    none_p99 = median_of([figs[p["none"]]["latency_ms"]["p99"] for p in pairs])
    none_model = median_of([figs[p["none"]]["model_ms_per_forecast"] for p in pairs])
    extra = {} if sampled is None else {
        "sampled_model_ms_per_forecast": ratio(sampled["model_ms_per_forecast"], none_model),
        "sampled_latency_p99": ratio(sampled["latency_ms"]["p99"], none_p99),
    }  # fmt: skip
    return {
        "command": command,
        "machine": {**runs[labels[0]]["report"]["machine"],
                    "load_avg_after": runs[labels[-1]]["report"]["machine"]["load_avg_after"]},
        "settings": {"steady": args.steady, "interval": args.interval, "intervals": args.intervals,
                     "steady_warmup": args.steady_warmup, "warm_bars": args.warm_bars, "max_context": args.max_context, "horizon": args.horizon,
                     "sample_count": args.sample_count, "model": "demo", "mode": "exact", "repeat": args.repeat,
                     "sample_fraction": args.sample_fraction, "also_fraction": args.also_fraction,
                     "perturbed": "tokenizer and predictor" if args.tokenizer_tuned else "predictor"},  # fmt: skip
        "runs": figs,
        "order": labels,
        "pairs": pairs,
        "ratios": {**medians, **extra},
        "challenger_check": checks,
        "commit": commit(),
        "load_before_run": {k: v["report"]["machine"]["load_avg_before"] for k, v in runs.items()},
        "steady_reports": {k: v["report"] for k, v in runs.items()},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python scripts/bench_challenger.py" + ("" if not (argv or sys.argv[1:]) else " " + " ".join(argv or sys.argv[1:]))
    work = Path(tempfile.mkdtemp(prefix="bench-challenger-"))
    try:
        root = work / "registry"
        registry = Registry(str(root))
        demo = bl_process.MODELS["demo"]
        runtime = json.loads((demo / "manifest.json").read_text())["runtime"]  # max_context 128, its zone
        publish(registry, "v1", demo, promote=True, runtime=runtime)
        parts = ("tokenizer", "predictor") if args.tokenizer_tuned else ("predictor",)
        v2 = perturbed_copy(demo, work / "v2", 0.02, seed=2, parts=parts)
        publish(registry, "v2", v2, promote=False, runtime=runtime)
        report = asyncio.run(run_both(args, root, command))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(args.out.with_suffix(".md"), report)
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
