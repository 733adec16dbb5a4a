"""The burst scenario: N symbols each send one bar at the same instant, against one batched engine call."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from daemon.io.feeds import FeedBar, synthetic_bars
from daemon.io.messages import to_ns

from .harness import Session, daemon_session
from .measures import count_delta, metric_delta, phase_ms_per_forecast, served_counts
from .process import PROBE_FACTORY, REPO, DaemonProcess, Run, daemon_env, free_port
from .publishing import (
    BAR_INTERVAL_S,
    BAR_START,
    encode_bars,
    key_of,
    publish_encoded,
    publish_fast,
    round_robin,
)

# -- bursts -----------------------------------------------------------------------------------------


class ReferenceModel:
    """The daemon's model, built in this process from the daemon's own ``KRONOS_*`` settings, to time
    one batched call over the windows the daemon forecast in a burst (without the counting probe)."""

    def __init__(self, env: dict[str, str]) -> None:
        from daemon.model.build import build_forecaster
        from daemon.settings import load_settings

        kronos = {k: v for k, v in env.items() if k.startswith("KRONOS_")}
        if kronos.get("KRONOS_MODEL__FACTORY") == PROBE_FACTORY:  # the model itself, uncounted
            inner = env.get("BENCH_PROBE_INNER")
            if inner:
                kronos["KRONOS_MODEL__FACTORY"] = inner
            else:
                del kronos["KRONOS_MODEL__FACTORY"]
        saved = {k: v for k, v in os.environ.items() if k.startswith("KRONOS_")}
        try:
            for k in saved:
                del os.environ[k]
            os.environ.update(kronos)
            self.settings = load_settings()
        finally:
            for k in [k for k in os.environ if k.startswith("KRONOS_")]:
                del os.environ[k]
            os.environ.update(saved)
        self.forecaster = build_forecaster(self.settings)

    def windows(self, history: dict[str, list[FeedBar]], symbols: list[str], drop_last: int = 0) -> list[Any]:
        """What the daemon hands the model for each symbol's newest bar (window capped at max_context);
        ``drop_last``: as it was that many bars earlier."""
        from daemon.io.messages import horizon_ns, infer_interval_ns
        from kronos_core.stream_types import SeriesWindow, derive_seed

        s, out = self.settings, []
        for sym in symbols:
            bars = history[sym][: len(history[sym]) - drop_last][-s.model.max_context :]
            ts = [to_ns(t) for _, t, _ in bars]
            interval = infer_interval_ns(ts, int(s.default_bar_interval_s * 1e9))
            future = horizon_ns(ts[-1], interval, s.model.horizon)
            out.append(SeriesWindow(
                sym, np.asarray([v for _, _, v in bars], dtype=np.float64), np.asarray(ts, dtype="datetime64[ns]"),
                np.asarray(future, dtype="datetime64[ns]"),
                derive_seed(sym, ts[-1], self.forecaster.model_version, s.model.base_seed),
            ))
        return out

    def time_call(self, history: dict[str, list[FeedBar]], symbols: list[str], repeats: int = 2) -> float:
        """Seconds of one batched forecast call over the symbols' newest windows (the fastest of
        ``repeats``). Incremental mode: each timed call is warm, as the daemon's should be: an untimed
        call over the windows one bar earlier builds the warm sessions and token caches first."""
        horizon = self.settings.model.horizon
        windows = self.windows(history, symbols)
        best = float("inf")
        for _ in range(repeats):
            if self.settings.mode == "incremental":
                earlier = self.forecaster.forecast(self.windows(history, symbols, drop_last=1), horizon)
                windows = [dataclasses.replace(w, token_state=f.token_state)
                           for w, f in zip(windows, earlier, strict=True)]
            t0 = time.perf_counter()
            self.forecaster.forecast(windows, horizon)
            best = min(best, time.perf_counter() - t0)
        return best


async def warm_up(
    args: argparse.Namespace, s: Session, run: Run, feed: Iterator[FeedBar], symbols: int,
    history: dict[str, list[FeedBar]], tag: str,
) -> dict[str, Any]:
    """``--warm-bars`` bars per symbol published as fast as possible; returns once every one has its
    forecast (raises after ``--warm-timeout``). ``history`` gets every bar sent."""
    warm = round_robin(feed, symbols * args.warm_bars)
    for bar in warm:
        history.setdefault(bar[0], []).append(bar)
    t0 = time.time()
    keys = await publish_fast(s.producer, run.input, warm)
    if not await s.collector.wait_for(keys, args.warm_timeout):
        raise RuntimeError(f"warm-up did not finish within {args.warm_timeout} s; lower --warm-bars")
    out: dict[str, Any] = {"bars": len(keys), "seconds": round(time.time() - t0, 2)}
    served = served_counts(run)
    if served is not None:
        out["served"] = served
    metrics = await s.daemon.metrics()
    out["symbols_cached"] = metrics.get("kronos_symbols_cached")
    print(f"[{tag}] warm-up: {len(keys)} forecasts in {out['seconds']:.1f} s"
          + (f", served {served}" if served else ""), flush=True)
    return out


async def bench_bursts(
    args: argparse.Namespace, mode: str, bootstrap: str, redis_url: str, uid: str
) -> dict[str, Any]:
    """One daemon, ``max(sizes)`` symbols warmed up, then bursts: the first N symbols each send one
    bar at the same instant; time until the last of their forecasts is read from the output topic."""
    sizes = args.burst_sizes
    run = Run(mode, f"{uid}-burst", args.partitions)
    env = daemon_env(args, run, bootstrap, redis_url, free_port())
    log_path = REPO / "results" / "tmp" / f"bench_burst-{mode}.log"
    total = max(sizes)
    feed = synthetic_bars(total, None, interval_s=BAR_INTERVAL_S, seed=args.seed, start=BAR_START)
    history: dict[str, list[FeedBar]] = {}
    result: dict[str, Any] = {"mode": mode, "bursts": []}
    reference = ReferenceModel(env)
    async with daemon_session(args, run, env, bootstrap, redis_url, log_path, result, producer_linger_ms=5) as s:
        daemon, producer, collector = s.daemon, s.producer, s.collector
        result["warmup"] = await warm_up(args, s, run, feed, total, history, f"burst {mode}")

        for size in sizes:
            for rep in range(args.burst_repeats):
                step = round_robin(feed, total)  # the next bar of every symbol; the first `size` are sent
                burst = step[:size]
                for bar in burst:
                    history[bar[0]].append(bar)
                before = await daemon.metrics()
                served_before = served_counts(run)
                records = encode_bars(burst)  # before the clock starts: the bars land at once
                keys = [key_of(sym, ts) for sym, ts, _ in burst]
                await asyncio.sleep(0.5)  # let the daemon's idle fetches settle
                b0 = time.time()
                await publish_encoded(producer, run.input, records)
                acked_s = time.time() - b0
                complete = await collector.wait_for(keys, args.drain_timeout)
                arrivals = [collector.first[k].at for k in keys if k in collector.first]
                burst_s = max(arrivals) - b0 if arrivals else float("nan")
                after = await settled_metrics(daemon, before, size)
                served_after = served_counts(run)
                model_s = metric_delta(after, before, "kronos_model_step_seconds_sum")
                calls = int(metric_delta(after, before, "kronos_batch_size_count"))
                series = metric_delta(after, before, "kronos_batch_size_sum")
                engine_s = reference.time_call(history, [b[0] for b in burst])
                entry = {
                    "symbols": size, "repeat": rep, "complete": complete, "forecasts": len(arrivals),
                    "publish_acked_s": round(acked_s, 3),
                    "time_to_last_forecast_s": round(burst_s, 3),
                    "daemon_model_calls": calls,
                    "daemon_mean_batch": round(series / calls, 1) if calls else None,
                    "daemon_model_s": round(model_s, 3),
                    "engine_one_call_s": round(engine_s, 3),
                    "efficiency": round(engine_s / burst_s, 3),
                    "model_share": round(model_s / burst_s, 3),
                    "overhead_ms_per_forecast": round((burst_s - model_s) / size * 1e3, 3),
                    "overhead_vs_engine_ms_per_forecast": round((burst_s - engine_s) / size * 1e3, 3),
                    # the daemon's own time per loop phase (kronos_loop_phase_seconds), ms per forecast
                    "phase_ms_per_forecast": phase_ms_per_forecast(after, before, size),
                }
                if served_before is not None and served_after is not None:
                    entry["served"] = count_delta(served_after, served_before)
                result["bursts"].append(entry)
                print(f"[burst {mode}] {size} symbols: last forecast after {burst_s * 1e3:.0f} ms, "
                      f"{calls} model call(s) ({model_s * 1e3:.0f} ms), one engine call {engine_s * 1e3:.0f} ms, "
                      f"efficiency {entry['efficiency']:.0%}"
                      + (f", served {entry['served']}" if "served" in entry else ""), flush=True)
    return result


async def settled_metrics(daemon: DaemonProcess, before: dict[str, float], forecasts: int) -> dict[str, float]:
    """The daemon's metrics once it has stored ``forecasts`` more forecasts and finished every fetch
    they came in: the loop's phase times are recorded after a batch's commit, a moment after its last
    forecast is out, and a burst can come in more than one batch, so the readings must also have
    stopped changing (two readings 0.1 s apart alike; at most 10 s)."""
    batches = 'kronos_loop_phase_seconds_count{phase="linger"}'  # one observation per processed batch
    deadline = time.monotonic() + 10
    last: dict[str, float] | None = None
    while True:
        after = await daemon.metrics()
        stored = metric_delta(after, before, "kronos_forecasts_out_total")
        done = stored >= forecasts and metric_delta(after, before, batches) > 0
        if (done and last is not None and last.get(batches) == after.get(batches)) or time.monotonic() > deadline:
            return after
        last = after if done else None
        await asyncio.sleep(0.1)
