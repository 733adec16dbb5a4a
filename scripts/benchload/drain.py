"""The load scenario: warm-up, a paced measured phase, then a backlog drained as fast as the daemon can."""

from __future__ import annotations

import argparse
import time
from typing import Any

from daemon.io.feeds import synthetic_bars

from .harness import daemon_session
from .housekeeping import group_lag
from .measures import percentiles
from .process import REPO, Run, daemon_env, free_port
from .publishing import BAR_INTERVAL_S, BAR_START, publish_fast, publish_paced, round_robin


async def bench_mode(
    args: argparse.Namespace, mode: str, bootstrap: str, redis_url: str, uid: str
) -> dict[str, Any]:
    run = Run(mode, uid, args.partitions)
    env = daemon_env(args, run, bootstrap, redis_url, free_port())
    log_path = REPO / "results" / "tmp" / f"bench_load-{mode}.log"
    bars = synthetic_bars(args.symbols, None, interval_s=BAR_INTERVAL_S, seed=args.seed, start=BAR_START)
    result: dict[str, Any] = {"mode": mode}
    began = time.monotonic()
    async with daemon_session(args, run, env, bootstrap, redis_url, log_path, result) as s:
        daemon, admin, probe, producer, collector = s.daemon, s.admin, s.probe, s.producer, s.collector

        # 1. warm-up: full windows for every symbol
        warm = round_robin(bars, args.symbols * args.warm_bars)
        t0 = time.time()
        keys = await publish_fast(producer, run.input, warm)
        complete = await collector.wait_for(keys, args.warm_timeout)
        last = max((collector.first[k].at for k in keys if k in collector.first), default=t0)
        got = sum(1 for k in keys if k in collector.first)
        result["warmup"] = {
            "bars": len(keys),
            "forecasts": got,
            "complete": complete,
            "seconds": round(last - t0, 2),
            "rate": round(got / max(last - t0, 1e-9), 1),
        }
        print(f"[{mode}] warm-up: {got}/{len(keys)} forecasts in {last - t0:.1f} s", flush=True)
        if not complete:
            raise RuntimeError(f"warm-up did not finish within {args.warm_timeout} s; lower --warm-bars")

        # 2. measured phase at the target rate
        before = await daemon.metrics()
        t_start = time.time()
        sent = await publish_paced(producer, run.input, bars, args.rate, args.duration)
        t_end = time.time()
        lag_end = await group_lag(admin, probe, run)
        in_phase = collector.count_between(t_start, t_end)
        missing_at_end = sum(1 for k in sent if k not in collector.first)
        after_phase = await daemon.metrics()
        await collector.wait_for(list(sent), args.grace)
        arrived = {k: collector.first[k] for k in sent if k in collector.first}
        e2e = [(a.at - sent[k]) * 1e3 for k, a in arrived.items()]
        own = {
            name: percentiles([float(a.latency_ms[name]) for a in arrived.values() if name in a.latency_ms])
            for name in ("queue", "model", "end_to_end")
        }
        calls = after_phase.get("kronos_batch_size_count", 0.0) - before.get("kronos_batch_size_count", 0.0)
        series = after_phase.get("kronos_batch_size_sum", 0.0) - before.get("kronos_batch_size_sum", 0.0)
        step_s = after_phase.get("kronos_model_step_seconds_sum", 0.0) - before.get(
            "kronos_model_step_seconds_sum", 0.0
        )
        phase_s = t_end - t_start
        result["measured"] = {
            "seconds": round(phase_s, 2),
            "bars_sent": len(sent),
            "send_rate": round(len(sent) / phase_s, 2),
            "forecasts_in_phase": in_phase,
            "sustained_rate": round(in_phase / phase_s, 2),
            "forecasts_missing_at_end": missing_at_end,
            "forecasts_missing_after_grace": len(sent) - len(arrived),
            "lag_at_end": lag_end,
            "e2e_ms": percentiles(e2e),
            "daemon_latency_ms": own,
            "model_calls": int(calls),
            "mean_batch": round(series / calls, 2) if calls else None,
            "model_busy_share": round(step_s / phase_s, 3),
            "mean_model_call_ms": round(step_s / calls * 1e3, 2) if calls else None,
        }
        m = result["measured"]
        print(
            f"[{mode}] measured: {m['sustained_rate']} forecasts/s (sent {m['send_rate']}/s), e2e p50 "
            f"{m['e2e_ms']['p50']} ms p99 {m['e2e_ms']['p99']} ms, lag at end {lag_end}",
            flush=True,
        )

        # 3. max throughput: drain a backlog
        backlog_rounds = max(1, round(result["warmup"]["rate"] * args.drain_seconds / args.symbols))
        backlog_rounds = min(backlog_rounds, args.max_backlog_rounds)
        drain = round_robin(bars, args.symbols * backlog_rounds)
        d0 = time.time()
        keys = await publish_fast(producer, run.input, drain)
        published_s = time.time() - d0
        complete = await collector.wait_for(keys, args.drain_timeout)
        got_at = sorted(collector.first[k].at for k in keys if k in collector.first)
        end = got_at[-1] if got_at else d0
        lag_drain = await group_lag(admin, probe, run)
        final = await daemon.metrics()
        result["drain"] = {
            "bars": len(keys),
            "publish_s": round(published_s, 2),
            "forecasts": len(got_at),
            "complete": complete,
            "seconds": round(end - d0, 2),
            "rate": round(len(got_at) / max(end - d0, 1e-9), 2),
            "lag_at_end": lag_drain,
        }
        calls = final.get("kronos_batch_size_count", 0.0) - after_phase.get("kronos_batch_size_count", 0.0)
        series = final.get("kronos_batch_size_sum", 0.0) - after_phase.get("kronos_batch_size_sum", 0.0)
        result["drain"]["mean_batch"] = round(series / calls, 2) if calls else None
        result["daemon_totals"] = {
            k.removeprefix("kronos_"): final.get(k, 0.0)
            for k in ("kronos_forecasts_out_total", "kronos_bars_in_total", "kronos_skipped_total",
                      "kronos_invalid_messages_total", "kronos_state_conflicts_total")
        }  # fmt: skip
        result["duplicates_read"] = collector.duplicates
        result["wall_s"] = round(time.monotonic() - began, 1)
        print(
            f"[{mode}] drain: {len(got_at)}/{len(keys)} in {end - d0:.1f} s = {result['drain']['rate']}/s",
            flush=True,
        )
    return result
