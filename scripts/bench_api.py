"""Benchmark of on-demand forecasts (``POST /v1/forecast``) while a steady state runs through the same daemon.

One daemon (``python -m daemon run``, real Kafka and Redis) runs the steady scenario of
scripts/bench_load.py (``--steady N`` symbols, one bar each per ``--interval``; its parameters are
passed through), with its HTTP API on and authentication off. After the steady state's warm-up, the
intervals go (each one bar close, ``--interval`` seconds):

1. ``--baseline`` intervals without API traffic;
2. the sweep: one interval per concurrency in ``--concurrency`` (1 to 64 requests in flight, each a
   closed loop posting one ``--history``-bar history of its own symbol): requests/s, latency p50/p99,
   statuses, and the steady state's p99 in that interval;
3. the rated load: the highest concurrency whose interval kept the steady state's p99 within
   ``--goal`` x the baseline's, run for ``--rated`` intervals;
4. ``--baseline`` intervals without API traffic again.

The comparison: the steady state's p99 (bar sent until its forecast is read from the output topic)
over the rated intervals against the baseline intervals (both before and after, pooled). The load
generator runs in this process beside the steady state's producer and reader, on the same machine as
the daemon, Kafka and Redis: its CPU counts against the daemon's.

Output: ``--out`` (JSON, default results/bench_api.json) and the same path with ``.md``.
Run: ``eval "$(scripts/services env)"; PYTHONPATH=. .venv/bin/python scripts/bench_api.py`` (a few minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from daemon.io.feeds import synthetic_bars
from daemon.io.messages import bar_to_json
from scripts.benchload import cli as bl_cli
from scripts.benchload import process as bl_process
from scripts.benchload import publishing as bl_publishing
from scripts.benchload import report as bl_report
from scripts.benchload import steady as bl_steady

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steady", type=int, default=1000, help="symbols of the steady state (default 1000)")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between bar closes (default 10)")
    p.add_argument("--concurrency", default="1,2,4,8,16,32,64", help="the sweep's requests in flight")
    p.add_argument("--baseline", type=int, default=2, help="intervals without API traffic, before and after")
    p.add_argument("--rated", type=int, default=2, help="intervals at the rated load")
    p.add_argument("--goal", type=float, default=1.1, help="the steady p99 may grow at most this factor")
    p.add_argument("--history", type=int, default=64, help="bars per request (default 64)")
    p.add_argument("--ondemand-batch", type=int, default=16, help="KRONOS_API__ONDEMAND_BATCH (default 16)")
    p.add_argument("--out", type=Path, default=Path("results/bench_api.json"))
    p.add_argument("steady_args", nargs=argparse.REMAINDER, help="after --: more arguments of bench_load.py")
    args = p.parse_args(argv)
    args.levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    args.port = bl_process.free_port()
    intervals = 2 * args.baseline + len(args.levels) + args.rated
    extra = [a for a in args.steady_args if a != "--"]
    steady = bl_cli.parse_args([
        "--steady", str(args.steady), "--interval", str(args.interval), "--intervals", str(intervals),
        "--modes", "exact", "--max-context", "64", "--horizon", "12", "--sample-count", "4", "--warm-bars", "16",
        "--warm-timeout", "600",
        "--daemon-env", f"KRONOS_API__PORT={args.port}", "--daemon-env", "KRONOS_API__HOST=127.0.0.1",
        "--daemon-env", "KRONOS_API__AUTH=none", "--daemon-env", "KRONOS_API__RATE_PER_S=1000000",
        "--daemon-env", "KRONOS_API__BURST=1000000",
        "--daemon-env", f"KRONOS_API__ONDEMAND_BATCH={args.ondemand_batch}",
        *extra,
    ])  # fmt: skip
    return args, steady


def request_bodies(count: int, bars: int) -> list[bytes]:
    """One JSON request per API symbol: ``bars`` bars of its own synthetic series."""
    feed = synthetic_bars(count, None, interval_s=bl_publishing.BAR_INTERVAL_S, seed=7, start=bl_publishing.BAR_START)
    history: dict[str, list[dict[str, Any]]] = {}
    for symbol, ts, values in (next(feed) for _ in range(count * bars)):
        bar = json.loads(bar_to_json(symbol, ts, values))
        history.setdefault(f"API-{bar.pop('symbol')}", []).append(bar)
    return [json.dumps({"symbol": s, "bars": b}).encode() for s, b in history.items()]


class ApiLoad:
    """Closed-loop workers posting forecasts; every request's (start, latency s, status)."""

    def __init__(self, port: int, bodies: list[bytes]) -> None:
        self.url = f"http://127.0.0.1:{port}/v1/forecast"
        self.bodies = bodies
        self.client = httpx.AsyncClient(timeout=60.0, limits=httpx.Limits(max_connections=128))

    async def run(self, concurrency: int, until: float) -> list[tuple[float, float, int]]:
        out: list[tuple[float, float, int]] = []

        async def worker(i: int) -> None:
            body = self.bodies[i % len(self.bodies)]
            while time.time() < until:
                t0 = time.time()
                try:
                    r = await self.client.post(self.url, content=body, headers={"content-type": "application/json"})
                    status = r.status_code
                except httpx.HTTPError:
                    status = 0
                out.append((t0, time.time() - t0, status))

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return out


def stream_latencies(s: Any, sent: dict[Any, float], t0: float, t1: float) -> tuple[list[float], int]:
    """(ms from send to forecast read of the bars sent in [t0, t1) whose forecast arrived, how many
    of those bars have no forecast yet)."""
    first = s.collector.first
    bars = [(k, at) for k, at in list(sent.items()) if t0 <= at < t1]
    return [(first[k].at - at) * 1e3 for k, at in bars if k in first], sum(k not in first for k, _ in bars)


def p(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def api_figures(done: list[tuple[float, float, int]], seconds: float) -> dict[str, Any]:
    ok = [lat * 1e3 for _, lat, status in done if status == 200]
    statuses: dict[str, int] = {}
    for _, _, status in done:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {"requests": len(done), "answered_200": len(ok), "requests_per_s": round(len(ok) / seconds, 2),
            "latency_ms": {"p50": p(ok, 50), "p99": p(ok, 99)}, "statuses": statuses}  # fmt: skip


async def wait_arrived(s: Any, sent: dict[Any, float], t1: float, timeout_s: float = 20.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline and any(k not in s.collector.first for k, at in list(sent.items()) if at < t1):
        await asyncio.sleep(0.2)


def make_during(args: argparse.Namespace, steady: argparse.Namespace, report: dict[str, Any]) -> bl_steady.During:
    async def during(s: Any, sent: dict[Any, float], first_close: float) -> dict[str, Any]:
        load = ApiLoad(args.port, request_bodies(max(args.levels), args.history))
        interval = args.interval
        k = steady.steady_warmup
        close = lambda i: first_close + i * interval  # noqa: E731

        async def idle(n: int) -> tuple[float, float]:
            nonlocal k
            t0 = close(k)
            k += n
            await asyncio.sleep(max(0.0, close(k) - time.time()))
            return t0, close(k)

        async def loaded(c: int, n: int) -> tuple[float, float, list[tuple[float, float, int]]]:
            nonlocal k
            t0 = close(k)
            k += n
            await asyncio.sleep(max(0.0, t0 - time.time()))
            return t0, close(k), await load.run(c, close(k))

        try:
            probe = await load.client.post(load.url, content=load.bodies[0], headers={"content-type": "application/json"})
            if probe.status_code != 200:
                raise RuntimeError(f"POST /v1/forecast answered {probe.status_code}: {probe.text}")
            base1 = await idle(args.baseline)
            await wait_arrived(s, sent, base1[1], timeout_s=interval)
            baseline_first, _ = stream_latencies(s, sent, *base1)
            goal_ms = args.goal * (p(baseline_first, 99) or 0.0)
            sweep = []
            for c in args.levels:
                t0, t1, done = await loaded(c, 1)
                sweep.append((c, t0, t1, done))
                print(f"[api] concurrency {c}: {api_figures(done, t1 - t0)}", flush=True)
            await wait_arrived(s, sent, close(k), timeout_s=interval)
            rows, rated_c = [], None
            for c, t0, t1, done in sweep:
                lat, missing = stream_latencies(s, sent, t0, t1)
                row = {"concurrency": c, **api_figures(done, t1 - t0), "steady_p99_ms": p(lat, 99),
                       "steady_p50_ms": p(lat, 50), "steady_missing": missing}  # fmt: skip
                row["steady_p99_within_goal"] = (
                    missing == 0 and row["steady_p99_ms"] is not None and row["steady_p99_ms"] <= goal_ms
                )
                rows.append(row)
                if row["steady_p99_within_goal"]:
                    rated_c = c
            report["sweep"] = rows
            chosen = rated_c or min(args.levels)
            print(f"[api] rated concurrency from the sweep: {rated_c} (running {chosen})", flush=True)
            r0, r1, rated_done = await loaded(chosen, args.rated)
            base2 = await idle(args.baseline)
            await wait_arrived(s, sent, base2[1], timeout_s=steady.grace + 20)
            before_lat, before_missing = stream_latencies(s, sent, *base1)
            after_lat, after_missing = stream_latencies(s, sent, *base2)
            baseline, baseline_missing = before_lat + after_lat, before_missing + after_missing
            rated, rated_missing = stream_latencies(s, sent, r0, r1)
            b99, r99 = p(baseline, 99), p(rated, 99)
            ratio = round(r99 / b99, 3) if b99 and r99 else None
            report["comparison"] = {
                "baseline_intervals": 2 * args.baseline, "baseline_bars": len(baseline),
                "baseline_missing": baseline_missing, "baseline_p50_ms": p(baseline, 50), "baseline_p99_ms": b99,
                "baseline_first_p99_ms": p(before_lat, 99), "baseline_last_p99_ms": p(after_lat, 99),
                "rated_concurrency": chosen, "rated_from_sweep": rated_c is not None,
                "rated_intervals": args.rated, "rated_bars": len(rated),
                "rated_missing": rated_missing, "rated_p50_ms": p(rated, 50), "rated_p99_ms": r99,
                "p99_ratio": ratio, "goal": args.goal,
                "meets_goal": ratio is not None and ratio <= args.goal and rated_missing == 0 and baseline_missing == 0,
                "api_at_rated": api_figures(rated_done, r1 - r0),
            }  # fmt: skip
            print(f"[api] {json.dumps(report['comparison'])}", flush=True)
        finally:
            await load.client.aclose()
        return {}

    return during


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True)  # fmt: skip
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    c, m = report.get("comparison", {}), report["steady"].get("measured", {})
    lines = [
        "# On-demand forecasts beside a steady state (`POST /v1/forecast`)", "",
        f"Command: `{report['command']}`  ", f"Commit: `{report['commit']}`  ", f"Machine: {report['machine']}", "",
        f"One daemon (exact mode, demo model on CPU, 1 torch thread, max_context 64, horizon 12, 4 paths) ran a "
        f"{report['settings']['steady']}-symbol steady state (one bar per symbol every "
        f"{report['settings']['interval']} s, spread over 1 s) through real Kafka and Redis; on-demand requests "
        f"({report['settings']['history']} bars each, the model's horizon and paths, "
        f"KRONOS_API__ONDEMAND_BATCH={report['settings']['ondemand_batch']}) came from closed-loop clients on "
        "the same machine. Steady latency: bar sent until its forecast is read from the output topic.", "",
        "## Sweep (one interval per concurrency)", "",
        "| requests in flight | requests/s | latency p50 ms | latency p99 ms | statuses | steady p50 ms | steady p99 ms | steady bars without forecast | within goal |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]  # fmt: skip
    for r in report.get("sweep", []):
        lines.append(
            f"| {r['concurrency']} | {r['requests_per_s']} | {r['latency_ms']['p50']} | {r['latency_ms']['p99']} | "
            f"{r['statuses']} | {r['steady_p50_ms']} | {r['steady_p99_ms']} | {r['steady_missing']} | "
            f"{'yes' if r['steady_p99_within_goal'] else 'no'} |"
        )
    if c:
        a = c["api_at_rated"]
        lines += [
            "", "## Rated load against no API traffic (the same run)", "",
            f"- baseline (no API traffic, {c['baseline_intervals']} intervals, {c['baseline_bars']} forecasts, "
            f"{c['baseline_missing']} bars without one): steady p50 {c['baseline_p50_ms']} ms, p99 "
            f"**{c['baseline_p99_ms']} ms** (before the sweep {c['baseline_first_p99_ms']} ms, after "
            f"{c['baseline_last_p99_ms']} ms)",
            f"- rated load ({c['rated_concurrency']} requests in flight"
            + ("" if c["rated_from_sweep"] else ", the lowest tried: none in the sweep met the goal")
            + f", {c['rated_intervals']} intervals, {c['rated_bars']} forecasts, {c['rated_missing']} bars without "
            f"one): {a['requests_per_s']} requests/s, "
            f"latency p50 {a['latency_ms']['p50']} ms p99 {a['latency_ms']['p99']} ms; steady p50 {c['rated_p50_ms']} "
            f"ms, p99 **{c['rated_p99_ms']} ms**",
            f"- p99 ratio **{c['p99_ratio']}** (goal at most {c['goal']}): "
            + ("met" if c["meets_goal"] else "**not met**"),
        ]  # fmt: skip
    if m:
        lines += ["", f"Whole steady run: {m.get('forecasts_per_s')} forecasts/s, kept up: {m.get('kept_up')}, "
                      f"lag at end {m.get('lag_at_end')}, missing {m.get('forecasts_missing_after_grace')}."]  # fmt: skip
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


async def main_async(args: argparse.Namespace, steady: argparse.Namespace, report: dict[str, Any]) -> None:
    bootstrap, redis_url = bl_cli.service_addresses()
    uid = uuid.uuid4().hex[:10]
    report["steady"] = await bl_steady.bench_steady(steady, "exact", bootstrap, redis_url, f"api-{uid}",
                                             during=make_during(args, steady, report))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args, steady = parse_args(argv)
    report: dict[str, Any] = {
        "command": "python scripts/bench_api.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "commit": commit(),
        "settings": {"steady": args.steady, "interval": args.interval, "concurrency": args.levels,
                     "baseline": args.baseline, "rated": args.rated, "goal": args.goal, "history": args.history,
                     "ondemand_batch": args.ondemand_batch},  # fmt: skip
    }
    facts = bl_report.machine_facts(steady)
    asyncio.run(main_async(args, steady, report))
    facts["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    report["machine"] = bl_report.machine_line(facts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(args.out, report)
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
