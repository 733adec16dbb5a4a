"""Bytes per symbol: in Redis (MEMORY USAGE of a symbol's keys), in the daemon's process (its
SymbolState ring), and in the incremental mode's warm-session cache (per model shape).

    PYTHONPATH=$PWD .venv/bin/python scripts/bench_memory.py [--redis-url URL] [--cluster-url URL]

Writes results/memory.json and results/memory.md. Redis figures are taken on the server given (a
unique key prefix, deleted afterwards). Every number is measured in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
import tracemalloc
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from daemon.io.messages import Bar
from daemon.state.base import StateUpdate, SymbolState, bars_key, forecast_key, meta_key, tokens_key
from daemon.state.redis import RedisStateStore
from kronos_core.stream_types import TokenState

ROOT = Path(__file__).resolve().parents[1]
MINUTE = 60 * 10**9


def _bar(symbol: str, i: int) -> Bar:
    p = 10.0 + (i * 7 % 13) / 3
    return Bar(symbol, 1_718_000_000 * 10**9 + i * MINUTE, (p, p + 0.5, p - 0.5, p + 0.1, 100.0 + i, 1e3 * p))


def _tokens(n: int, last_ts: int) -> TokenState:
    ids = np.arange(n, dtype=np.int64) % 1024
    return TokenState(ids, ids[::-1].copy(), np.full(6, 1.5), np.full(6, 0.25), last_ts - (n - 1) * MINUTE, last_ts, 0)


def _forecast_json(symbol: str, horizon: int = 12) -> bytes:
    """A forecast message of the daemon's size: horizon x 6 mean path and 3 quantile bands."""
    path = [[10.123456] * 6 for _ in range(horizon)]
    return json.dumps(
        {"id": str(uuid.uuid4()), "symbol": symbol, "mean": path, "quantiles": {"0.1": path, "0.5": path, "0.9": path}}
    ).encode()


async def redis_bytes(url: str, cluster: bool, symbols: int, bars: int, incremental: bool) -> dict[str, Any]:
    prefix = f"bench-mem:{uuid.uuid4().hex[:8]}"
    store = RedisStateStore.from_url(url, prefix, max_context=bars, cluster=cluster)
    names = [f"M{k:04d}" for k in range(symbols)]
    try:
        for i in range(bars):
            updates = []
            for s in names:
                b = _bar(s, i)
                tokens = _tokens(min(i + 1, bars), b.ts_ns) if incremental and i == bars - 1 else None
                updates.append(StateUpdate(b, tokens, _forecast_json(s) if i == bars - 1 else b"{}", "v1", "in/0/1"))
            await store.apply(updates)
        client = store._client  # noqa: SLF001 - a measurement script
        per_key: dict[str, list[int]] = {"bars": [], "tokens": [], "meta": [], "forecast": []}
        for s in names:
            for kind, key in (("bars", bars_key), ("tokens", tokens_key), ("meta", meta_key), ("forecast", forecast_key)):
                used = await client.memory_usage(key(prefix, s))
                per_key[kind].append(int(used or 0))
        means = {k: float(np.mean(v)) for k, v in per_key.items()}
        return {"bars_per_symbol": bars, "incremental": incremental, "symbols": symbols, "bytes": means,
                "total_per_symbol": sum(means.values())}  # fmt: skip
    finally:
        keys = [k for s in names for k in (bars_key(prefix, s), tokens_key(prefix, s), meta_key(prefix, s), forecast_key(prefix, s))]
        for k in keys:
            await store._client.delete(k)  # noqa: SLF001
        await store.close()


def process_bytes(bars: int, symbols: int = 50) -> dict[str, float]:
    def measure(build: Any) -> float:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        kept = [build(k) for k in range(symbols)]
        used = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert len(kept) == symbols
        return used / symbols

    def ring(k: int) -> SymbolState:
        s = SymbolState(f"S{k}", bars)
        for i in range(bars):
            s.append(_bar(f"S{k}", i + k), None, "v")
        return s

    def former(k: int) -> Any:  # the layout before this change: deques of ints and of float tuples
        ts: deque[int] = deque(maxlen=bars)
        rows: deque[tuple[float, ...]] = deque(maxlen=bars)
        for i in range(bars):
            b = _bar(f"S{k}", i + k)
            ts.append(b.ts_ns)
            rows.append(tuple(float(v) + 0.0 for v in b.values))
        return ts, rows

    return {"ring_numpy": measure(ring), "deque_of_tuples": measure(former)}


def _warm_bytes(fc: Any) -> int:
    """Bytes of one series' warm caches: a slot of the session pool where there is one, else the
    tensors of the (single) session in the LRU."""
    pool = getattr(fc, "_pool", None)
    if pool is not None and hasattr(pool, "slot_bytes"):
        return int(pool.slot_bytes)
    (session,) = fc._sessions.values()  # noqa: SLF001 - a measurement script
    caches = [*session.enc, *session.pred, *session.dec]
    tensors = [c.k for c in caches] + [c.v for c in caches]
    tensors += [session.dep_k, session.dep_v, session.last_logits, session.h_last]
    arrays = (session.state.s1, session.state.s2, session.state.mean, session.state.std)
    return sum(t.element_size() * t.nelement() for t in tensors) + sum(int(a.nbytes) for a in arrays)


def session_bytes(preset: str, max_context: int) -> dict[str, Any]:
    """One warm incremental session of a model shape (random weights), measured after one forecast."""
    import torch

    from kronos_core.engine import KronosEngine, SamplingParams
    from kronos_core.presets import build_pair
    from kronos_core.stream_types import SeriesWindow
    from kronos_core.streaming import StreamConfig, StreamingForecaster

    torch.set_num_threads(2)
    tokenizer, model = build_pair(preset)
    engine = KronosEngine(model, tokenizer, device="cpu", max_context=max_context)
    fc = StreamingForecaster(
        engine, StreamConfig(mode="incremental", sampling=SamplingParams(sample_count=1)), model_version="m"
    )
    n, horizon = max_context - 16, 4
    rng = np.random.default_rng(0)
    close = 10 * np.exp(np.cumsum(rng.normal(0, 0.002, n + horizon)))
    values = np.stack([close, close * 1.001, close * 0.999, close, np.full_like(close, 1e3), close * 1e3], axis=1)
    ts = np.datetime64("2024-06-18T01:30") + np.arange(n + horizon) * np.timedelta64(1, "m")
    window = SeriesWindow("S", values[:n], ts[:n].astype("datetime64[ns]"), ts[n:].astype("datetime64[ns]"), seed=1)
    started = time.perf_counter()
    fc.forecast([window], horizon)
    return {"preset": preset, "max_context": max_context, "bytes": _warm_bytes(fc),
            "forecast_s": round(time.perf_counter() - started, 2)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    parser.add_argument("--cluster-url", default=os.environ.get("REDIS_CLUSTER_URL"))
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--presets", default="Kronos-tiny,Kronos-small,Kronos-base")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "memory")
    args = parser.parse_args()

    report: dict[str, Any] = {"machine": platform.machine(), "python": platform.python_version(), "redis": [], "process": {}, "sessions": []}
    for bars in (64, 512):
        report["process"][str(bars)] = process_bytes(bars)
    targets = [(args.redis_url, False, "server")] if args.redis_url else []
    if args.cluster_url:
        targets.append((args.cluster_url, True, "cluster"))
    for url, cluster, label in targets:
        for incremental in (False, True):
            row = asyncio.run(redis_bytes(url, cluster, args.symbols, 512, incremental))
            row["where"] = label
            report["redis"].append(row)
    for preset in filter(None, args.presets.split(",")):
        report["sessions"].append(session_bytes(preset, 512))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Memory per symbol", "", f"`scripts/bench_memory.py`, one run ({report['machine']}, Python {report['python']}).", ""]
    lines += ["## Redis (MEMORY USAGE, 512-bar ring, mean over symbols)", "",
              "| where | mode | bars | tokens | meta | forecast | total per symbol |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in report["redis"]:
        b = r["bytes"]
        mode = "incremental" if r["incremental"] else "exact"
        lines.append(f"| {r['where']} | {mode} | {b['bars']:.0f} | {b['tokens']:.0f} | {b['meta']:.0f} | {b['forecast']:.0f} | {r['total_per_symbol']:.0f} |")
    lines += ["", "## Daemon process: one symbol's ring (tracemalloc)", "", "| bars | numpy ring (now) | deque of tuples (before) | ratio |", "|---|---|---|---|"]
    for bars, p in report["process"].items():
        lines.append(f"| {bars} | {p['ring_numpy']:.0f} | {p['deque_of_tuples']:.0f} | {p['deque_of_tuples'] / p['ring_numpy']:.1f}x |")
    lines += ["", "## Warm incremental session per symbol (KV caches, max_context 512, fp32)", "",
              "| model shape | bytes | sessions per GiB |", "|---|---|---|"]  # fmt: skip
    for s in report["sessions"]:
        lines.append(f"| {s['preset']} | {s['bytes']:,} | {(1 << 30) // max(1, s['bytes'])} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
