"""The steady-state scenario: N symbols, one bar each per interval, spread after each close."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer

from daemon.io.feeds import FeedBar, synthetic_bars

from .bursts import warm_up
from .collector import Key
from .harness import Session, daemon_session
from .housekeeping import group_lag
from .measures import count_delta, metric_delta, percentiles, phase_ms_per_forecast, served_counts
from .process import REPO, Run, daemon_env, free_port
from .publishing import BAR_INTERVAL_S, BAR_START, encode_bars, key_of, round_robin

# -- steady state -----------------------------------------------------------------------------------


def spread_schedule(symbols: int, spread_s: float, rng: np.random.Generator) -> list[tuple[float, int]]:
    """One interval's sends: (seconds after the bar close, symbol index) for every symbol, in send
    order; each symbol's bar lands at a uniform random moment within ``spread_s`` of the close (a
    real feed's bars of one close arrive spread over about a second, not at one instant)."""
    offsets = rng.uniform(0.0, spread_s, size=symbols) if spread_s > 0 else np.zeros(symbols)
    order = np.argsort(offsets, kind="stable")
    return [(float(offsets[i]), int(i)) for i in order]


def kept_up(completions_s: list[float | None], interval_s: float, lag_at_end: int, missing: int) -> bool:
    """The daemon kept up when every measured interval's forecasts were all out (None: some never
    came) before the next bar close, nothing was left in its input at the end, and none was missing."""
    done = [c for c in completions_s if c is not None]
    return bool(done) and len(done) == len(completions_s) and max(done) < interval_s and lag_at_end == 0 and missing == 0


async def send_interval(
    producer: AIOKafkaProducer, topic: str, bars: list[FeedBar], schedule: list[tuple[float, int]], close: float,
    sent: dict[Key, float],
) -> list[Any]:
    """Sends bar ``i`` at ``close + offset`` (wall clock; bars already due go together), noting each
    bar's send time in ``sent``; returns the acknowledgement futures. Encoded before the close."""
    records, keys = encode_bars(bars), [key_of(symbol, ts) for symbol, ts, _ in bars]
    acks = []
    for offset, i in schedule:
        delay = close + offset - time.time()
        if delay > 0.001:
            await asyncio.sleep(delay)
        sent[keys[i]] = time.time()
        acks.append(await producer.send(topic, key=records[i][0], value=records[i][1]))
    return acks


During = Callable[["Session", dict[Key, float], float], Awaitable[dict[str, Any]]]


async def bench_steady(
    args: argparse.Namespace, mode: str, bootstrap: str, redis_url: str, uid: str, during: During | None = None
) -> dict[str, Any]:
    """One daemon, N symbols warmed up, then one bar per symbol per ``--interval``, spread over
    ``--spread`` seconds after each close: ``--steady-warmup`` intervals, then ``--intervals`` measured.

    ``during(session, sent, first_close)``: other load on the same daemon (scripts/bench_api.py), run
    from the warm-up's end until it returns (``sent``: each bar's send time, as bars go); its result is
    ``result["during"]``."""
    n, interval = args.steady, args.interval
    run = Run(mode, f"{uid}-steady", args.partitions)
    env = daemon_env(args, run, bootstrap, redis_url, free_port())
    log_path = REPO / "results" / "tmp" / f"bench_steady-{mode}.log"
    feed = synthetic_bars(n, None, interval_s=BAR_INTERVAL_S, seed=args.seed, start=BAR_START)
    rng = np.random.default_rng(args.seed)
    history: dict[str, list[FeedBar]] = {}
    result: dict[str, Any] = {"mode": mode, "intervals": []}
    async with daemon_session(args, run, env, bootstrap, redis_url, log_path, result, producer_linger_ms=5) as s:
        daemon, collector = s.daemon, s.collector
        result["warmup"] = await warm_up(args, s, run, feed, n, history, f"steady {mode}")
        first_close = time.time() + 1.0
        phase_start = first_close + args.steady_warmup * interval
        phase_end = phase_start + args.intervals * interval
        sent: dict[Key, float] = {}
        other = asyncio.create_task(during(s, sent, first_close)) if during is not None else None
        per_interval: list[tuple[float, list[Key]]] = []
        acks: list[Any] = []
        before: dict[str, float] = {}
        served_before: dict[str, int] | None = None
        for k in range(args.steady_warmup + args.intervals):
            close = first_close + k * interval
            if k == args.steady_warmup:
                await asyncio.sleep(max(0.0, close - 0.3 - time.time()))
                before, served_before = await daemon.metrics(), served_counts(run)
            bars = round_robin(feed, n)
            acks += await send_interval(s.producer, run.input, bars, spread_schedule(n, args.spread, rng), close, sent)
            if k >= args.steady_warmup:
                per_interval.append((close, [key_of(sym, ts) for sym, ts, _ in bars]))
            await asyncio.sleep(max(0.0, close + interval - 0.4 - time.time()))
            await asyncio.gather(*acks)
            acks = []
            print(f"[steady {mode}] close {k + 1}/{args.steady_warmup + args.intervals}: {len(collector.first)} "
                  "forecasts read so far", flush=True)
        await asyncio.sleep(max(0.0, phase_end - time.time()))
        if other is not None:
            result["during"] = await other
        lag_end = await group_lag(s.admin, s.probe, run)
        after, served_after = await daemon.metrics(), served_counts(run)  # the measured intervals only
        in_phase = collector.count_between(phase_start, phase_end)
        measured = [k for _, keys in per_interval for k in keys]
        missing_at_end = sum(1 for k in measured if k not in collector.first)
        await collector.wait_for(measured, args.grace)

        arrived = {k: collector.first[k] for k in measured if k in collector.first}
        e2e = [(a.at - sent[k]) * 1e3 for k, a in arrived.items()]
        own = [float(a.latency_ms["end_to_end"]) for a in arrived.values() if "end_to_end" in a.latency_ms]
        completions: list[float | None] = []
        for close, keys in per_interval:
            got = [collector.first[k].at for k in keys if k in collector.first]
            last_sent = max(sent[k] for k in keys)
            done = round(max(got) - close, 3) if len(got) == len(keys) else None
            completions.append(done)
            result["intervals"].append({
                "forecasts": len(got), "bars": len(keys),
                "latency_ms": percentiles([(collector.first[k].at - sent[k]) * 1e3 for k in keys if k in collector.first]),
                "last_forecast_after_close_s": done,
                "last_forecast_after_last_bar_s": round(max(got) - last_sent, 3) if got else None,
            })  # fmt: skip
        calls = metric_delta(after, before, "kronos_batch_size_count")
        series = metric_delta(after, before, "kronos_batch_size_sum")
        model_s = metric_delta(after, before, "kronos_model_step_seconds_sum")
        missing = len(measured) - len(arrived)
        finished = [c for c in completions if c is not None]  # closes whose forecasts all came
        result["measured"] = {
            "symbols": n, "interval_s": interval, "spread_s": args.spread, "intervals": args.intervals,
            "bars_sent": len(measured),
            "forecasts_per_s": round(in_phase / (phase_end - phase_start), 2),
            "bars_per_s": round(len(measured) / (phase_end - phase_start), 2),
            "latency_ms": percentiles(e2e),
            "daemon_end_to_end_ms": percentiles(own),
            "model_calls": int(calls),
            "mean_batch": round(series / calls, 1) if calls else None,
            "model_busy_share": round(model_s / (phase_end - phase_start), 3),
            # of the model time, what shadow challengers took (0 without any; daemon/model/challengers.py)
            "challenger_model_s": round(metric_delta(after, before, "kronos_challenger_model_seconds_total"), 3),
            "challenger_forecasts": int(metric_delta(after, before, "kronos_challenger_forecasts_total")),
            "challenger_shared_contexts": int(metric_delta(after, before, "kronos_challenger_shared_contexts_total")),
            "model_s": round(model_s, 3),
            "phase_ms_per_forecast": phase_ms_per_forecast(after, before, len(measured)),
            "mean_model_call_ms": round(model_s / calls * 1e3, 1) if calls else None,
            "lag_at_end": lag_end,
            "forecasts_missing_at_end": missing_at_end,
            "forecasts_missing_after_grace": missing,
            "worst_interval_s": max(finished) if len(finished) == len(completions) else None,
            "median_interval_s": round(float(np.median(finished)), 3) if len(finished) == len(completions) else None,
            "kept_up": kept_up(completions, interval, lag_end, missing),
        }  # fmt: skip
        if served_before is not None and served_after is not None:
            result["measured"]["served"] = count_delta(served_after, served_before)
        result["duplicates_read"] = collector.duplicates
        m = result["measured"]
        print(f"[steady {mode}] {m['forecasts_per_s']} forecasts/s, latency p50 {m['latency_ms']['p50']} ms "
              f"p99 {m['latency_ms']['p99']} ms, mean batch {m['mean_batch']}, lag at end {lag_end}, "
              f"kept up: {m['kept_up']}", flush=True)
    return result
