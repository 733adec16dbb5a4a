"""The load benchmark's command line (``scripts/bench_load.py``): arguments, services, the run of a scenario."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .bursts import bench_bursts
from .drain import bench_mode
from .process import LOOPBACK, MODELS, REPO
from .report import (
    burst_table,
    machine_facts,
    steady_table,
    table,
    write_burst_markdown,
    write_markdown,
    write_steady_markdown,
)
from .steady import bench_steady

DESCRIPTION = 'Load benchmark of the daemon through the real Kafka broker and Redis server (issue #5).'



def parse_env_pairs(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings (``--daemon-env``) as a dict; a later pair wins."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or key != key.strip():
            raise ValueError(f"--daemon-env takes KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--symbols", type=int, default=20, help="number of symbols (default 20)")
    p.add_argument("--rate", type=float, default=20.0, help="bars/s, all symbols together (default 20)")
    p.add_argument("--duration", type=float, default=30.0, help="measured phase, seconds (default 30)")
    p.add_argument("--modes", default="exact,incremental", help="comma list of exact, incremental")
    p.add_argument(
        "--model", choices=sorted(MODELS), default="demo",
        help="demo model, tiny test checkpoint, or the stub forecaster of tests/daemon\n"
        "(stub: ~0 model time, so a burst measures the daemon's own overhead)",
    )
    p.add_argument("--max-context", type=int, default=128)
    p.add_argument("--horizon", type=int, default=12)
    p.add_argument("--sample-count", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of the daemon (default 1)")
    p.add_argument("--partitions", type=int, default=4, help="partitions of the input and output topics")
    p.add_argument(
        "--warm-bars", type=int, default=None, help="warm-up bars per symbol (default max_context)"
    )
    p.add_argument("--drain-seconds", type=float, default=12.0, help="target size of the backlog, in seconds")
    p.add_argument("--max-backlog-rounds", type=int, default=200, help="cap on backlog bars per symbol")
    p.add_argument("--grace", type=float, default=10.0, help="extra wait for the measured phase's forecasts")
    p.add_argument("--ready-timeout", type=float, default=60.0)
    p.add_argument("--warm-timeout", type=float, default=90.0)
    p.add_argument("--drain-timeout", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="default results/bench_load.json (bench_burst.json)")
    p.add_argument("--burst", default=None, metavar="N,N,...",
                   help="instead of the load phases: bursts of N symbols (e.g. 128,512,1000)")
    p.add_argument("--burst-repeats", type=int, default=2, help="bursts per size")
    p.add_argument("--max-batch", type=int, default=None, help="KRONOS_BATCH__MAX_BATCH_SIZE (burst default: max N)")
    p.add_argument("--profile", type=Path, default=None, help="run the daemon under cProfile, dump here")
    p.add_argument("--max-wait-ms", type=int, default=None, help="KRONOS_BATCH__MAX_WAIT_MS (default: the daemon's)")
    p.add_argument("--max-sessions", type=int, default=None,
                   help="KRONOS_MODEL__MAX_SESSIONS in incremental mode (default: every symbol gets a warm session)")
    p.add_argument("--daemon-env", action="append", default=[], metavar="KEY=VALUE",
                   help="an environment variable of the daemon, applied last (repeatable), e.g.\n"
                   "--daemon-env KRONOS_BATCH__PIPELINE=false --daemon-env KRONOS_BATCH__LINGER_IDLE_MS=0")
    p.add_argument("--refresh-every", type=int, default=None,
                   help="KRONOS_REFRESH_EVERY_BARS in incremental mode (default: the daemon's, 64); a refresh\n"
                   "keeps max_context - horizon - this many bars of tokens")
    p.add_argument("--registry", type=Path, default=None,
                   help="serve a model registry's champion (and score its challengers) instead of --model's\n"
                   "folders: KRONOS_MODEL__REGISTRY (exact mode; scripts/bench_challenger.py uses it)")
    p.add_argument("--steady", type=int, nargs="?", const=1000, default=None, metavar="N",
                   help="instead of the load phases: N symbols (default 1000), one bar each per --interval")
    p.add_argument("--interval", type=float, default=10.0, help="steady: seconds between bar closes (default 10)")
    p.add_argument("--spread", type=float, default=1.0,
                   help="steady: each symbol's bar lands within this many seconds after the close (default 1)")
    p.add_argument("--steady-warmup", type=int, default=1, help="steady: intervals before measuring (default 1)")
    p.add_argument("--intervals", type=int, default=5, help="steady: measured intervals (default 5)")
    args = p.parse_args(argv)
    try:
        args.daemon_env = parse_env_pairs(args.daemon_env)
    except ValueError as exc:
        p.error(str(exc))
    args.burst_sizes = sorted({int(n) for n in args.burst.split(",")}) if args.burst else []
    if args.burst_sizes and min(args.burst_sizes) < 1:
        p.error("--burst sizes must be positive")
    if args.burst_sizes and args.max_batch is None:
        args.max_batch = max(args.burst_sizes)
    if args.burst_sizes and args.steady is not None:
        p.error("--burst and --steady are two different benchmarks: pick one")
    if args.steady is not None and (args.steady < 1 or args.interval <= 0 or args.spread < 0
                                    or args.spread >= args.interval or args.intervals < 1 or args.steady_warmup < 0):
        p.error("--steady N needs N >= 1, --interval > --spread >= 0, --intervals >= 1, --steady-warmup >= 0")
    args.kind = "burst" if args.burst_sizes else "steady" if args.steady is not None else "load"
    if args.max_sessions is None:
        args.max_sessions = max(args.burst_sizes) if args.burst_sizes else args.steady or args.symbols
    args.out = args.out or Path(f"results/bench_{args.kind}.json")
    args.warm_bars = args.warm_bars or args.max_context
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("exact", "incremental") for m in modes):
        p.error(f"--modes takes exact and/or incremental, got {args.modes!r}")
    args.mode_list = modes
    if args.registry is not None and (modes != ["exact"] or args.model == "stub"):
        p.error("--registry serves a registry's versions in exact mode: pass --modes exact and a real --model")
    if args.symbols < 1 or args.rate <= 0 or args.duration <= 0 or args.partitions < 1:
        p.error("--symbols, --rate, --duration and --partitions must be positive")
    args.env_overrides = {}  # main(env_overrides=...) fills it
    return args


def service_addresses() -> tuple[str, str]:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP", "")
    redis_url = os.environ.get("REDIS_URL", "")
    if not bootstrap or not redis_url:
        raise SystemExit('set KAFKA_BOOTSTRAP and REDIS_URL: eval "$(scripts/services env)"')
    hosts = [urlsplit(f"//{b}").hostname for b in bootstrap.split(",")] + [urlsplit(redis_url).hostname]
    if any(h not in LOOPBACK for h in hosts):
        raise SystemExit(f"only loopback services are benchmarked, got {bootstrap} and {redis_url}")
    return bootstrap, redis_url


async def main_async(args: argparse.Namespace, command: str) -> dict[str, Any]:
    bootstrap, redis_url = service_addresses()
    uid = uuid.uuid4().hex[:10]
    model_dir = MODELS[args.model]
    report: dict[str, Any] = {
        "command": command,
        "machine": machine_facts(args),
        "settings": {
            "symbols": args.symbols,
            "rate": args.rate,
            "duration": args.duration,
            "modes": args.mode_list,
            "model": args.model,
            "model_dir": str(model_dir.relative_to(REPO)),
            "max_context": args.max_context,
            "horizon": args.horizon,
            "sample_count": args.sample_count,
            "partitions": args.partitions,
            "warm_bars": args.warm_bars,
            "drain_seconds": args.drain_seconds,
            "grace": args.grace,
            "run_id": uid,
        },
        "modes": {},
    }
    report["settings"].update(max_sessions=args.max_sessions, refresh_every=args.refresh_every or "default",
                              daemon_env=args.daemon_env)
    if args.burst_sizes:
        report["settings"].update(burst_sizes=args.burst_sizes, burst_repeats=args.burst_repeats)
    if args.steady is not None:
        report["settings"].update(steady=args.steady, interval=args.interval, spread=args.spread,
                                  steady_warmup=args.steady_warmup, intervals=args.intervals)
    if args.kind != "load":
        report["settings"].update(max_batch=args.max_batch or "default", max_wait_ms=args.max_wait_ms or "default")
    began = time.monotonic()
    for mode in args.mode_list:
        try:
            bench = {"burst": bench_bursts, "steady": bench_steady, "load": bench_mode}[args.kind]
            report["modes"][mode] = await bench(args, mode, bootstrap, redis_url, uid)
        except Exception as exc:  # report what ran; the next mode still runs
            print(f"[{mode}] failed: {exc}", file=sys.stderr, flush=True)
            report["modes"][mode] = {"mode": mode, "error": f"{type(exc).__name__}: {exc}"}
    report["wall_s"] = round(time.monotonic() - began, 1)
    report["machine"]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    return report


def main(argv: list[str] | None = None, env_overrides: Mapping[str, str] | None = None) -> int:
    """Run the benchmark of ``argv``. ``env_overrides`` amend the daemon's environment after everything
    else (an empty value removes the variable), e.g. the GPU run's settings (scripts/gpu_daemon_bench.py)."""
    args = parse_args(argv)
    args.env_overrides.update(env_overrides or {})
    command = "python scripts/bench_load.py" + (
        "" if not (argv or sys.argv[1:]) else " " + " ".join(argv or sys.argv[1:])
    )
    report = asyncio.run(main_async(args, command))
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    writer = {"burst": write_burst_markdown, "steady": write_steady_markdown, "load": write_markdown}[args.kind]
    writer(out.with_suffix(".md"), report)
    print()
    print("\n".join({"burst": burst_table, "steady": steady_table, "load": table}[args.kind](report["modes"])))
    print(f"\nwrote {out} and {out.with_suffix('.md')} ({report['wall_s']} s)")
    return 0 if all("error" not in r for r in report["modes"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
