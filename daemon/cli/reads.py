"""``kronos-stream forecast`` and ``kronos-stream scores``: what the daemon wrote to Redis."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from typing import Any

from daemon.cli.common import cli_settings
from daemon.errors import ConfigError, StateError


def add_forecast_parser(sub: Any) -> None:
    forecast = sub.add_parser("forecast", help="print the latest forecast of a symbol from Redis")
    forecast.add_argument("symbol")
    forecast.add_argument("--redis-url", help="default: KRONOS_REDIS__URL")
    forecast.add_argument("--prefix", help="key prefix (default: KRONOS_REDIS__KEY_PREFIX)")
    forecast.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for a forecast to appear (default 0: answer at once)",
    )


def add_scores_parser(sub: Any) -> None:
    scores = sub.add_parser(
        "scores",
        help="the online scores of the forecasts (per model version, from Redis)",
        description=(
            "Close MAE, persistence MAE and skill, CRPS, pinball loss and p10-p90 coverage of the forecasts "
            "the daemon scored in the last --hours hours, per model version (VERSION@model: the model's own "
            "bands when the published ones are the guarded distribution)."
        ),
    )
    scores.add_argument("--version", dest="model_version", help="one model version (default: all)")
    scores.add_argument("--hours", type=int, default=24, help="window of the rolling aggregate (default 24)")
    scores.add_argument("--json", action="store_true", help="print JSON instead of a table")
    scores.add_argument("--redis-url", help="default: KRONOS_REDIS__URL")
    scores.add_argument("--prefix", help="key prefix (default: KRONOS_REDIS__KEY_PREFIX)")


def forecast(args: argparse.Namespace) -> int:
    return asyncio.run(_forecast(args))


def scores(args: argparse.Namespace) -> int:
    return asyncio.run(_scores(args))


async def _forecast(args: argparse.Namespace) -> int:
    from daemon.state.redis import RedisStateStore

    settings = cli_settings(args)
    r = settings.redis
    store = RedisStateStore.from_settings(r, settings.model.max_context)
    try:
        record = await _latest_forecast(store, args.symbol, args.wait)
    finally:
        await store.close()
    if record is None:
        waited = f" after waiting {args.wait:g} s" if args.wait > 0 else " (--wait SECONDS waits for one)"
        print(
            f"no forecast for {args.symbol!r} under prefix {r.key_prefix!r}{waited} (expired, or never made)",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(record, indent=2))
    return 0


async def _latest_forecast(store: Any, symbol: str, wait_s: float) -> dict[str, Any] | None:
    """The latest forecast; with ``wait_s`` > 0, polls until one appears or the time is up."""
    import time

    deadline = time.monotonic() + max(0.0, wait_s)
    while True:
        record: dict[str, Any] | None = await store.latest_forecast(symbol)
        if record is not None or time.monotonic() >= deadline:
            return record
        await asyncio.sleep(min(0.25, max(0.0, deadline - time.monotonic())))


async def _scores(args: argparse.Namespace) -> int:
    import time

    from daemon.scoring.report import format_report, report_dict
    from daemon.scoring.store_redis import RedisScoreStore

    settings = cli_settings(args)
    r = settings.redis
    if args.hours < 1:
        raise ConfigError(f"--hours must be at least 1, got {args.hours}")
    store = RedisScoreStore.from_settings(settings)
    try:
        versions = None
        if args.model_version:
            versions = [args.model_version, args.model_version + "@model"]
        sums = await store.read(versions, args.hours, time.time())
    except Exception as exc:
        raise StateError(f"reading the scores from Redis failed: {exc}; check KRONOS_REDIS__URL") from exc
    finally:
        with contextlib.suppress(Exception):
            await store.close()
    if not sums:
        print(f"no scores under prefix {r.key_prefix!r} in the last {args.hours} h", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({v: report_dict(acc) for v, acc in sums.items()}, indent=2))
    else:
        print("\n\n".join(format_report(v, acc, args.hours) for v, acc in sums.items()))
    return 0
