"""Hot swap measured: seconds from the pointer move to the first forecast of the new version (polling
only vs with the Redis hint), and resident memory over many swaps in a row.

One daemon in this process (real Kafka and Redis: KAFKA_BOOTSTRAP and REDIS_URL, e.g. ``source
/work/services.env``), serving a temporary registry whose v1 is the tiny test checkpoint and v2 the
same weights perturbed (``--model demo``: the demo model instead). A feeder publishes bars of
``--symbols`` symbols every ``--bar-every-s`` seconds throughout; a reader follows the output topic.

1. Latency: ``--rounds`` pointer moves without a hint (the daemon finds them at its next poll, every
   ``--poll-s``) and ``--rounds`` with the hint published right after the move. Each is timed from
   just before ``Registry.promote`` to the arrival of the first forecast naming the new version.
2. Memory: ``--swaps`` swaps in a row (v1, v2, v1, ...), each waited for until a forecast of the new
   version arrived; RSS (``/proc/self/status`` VmRSS) before the first and after the last, after
   ``gc.collect()``, against the size of one model's weight files and its resident footprint (RSS
   with three more versions loaded and held, per version). Then a control: as long again
   with bars flowing and no swap, and what RSS grew by meanwhile (this process also holds the
   feeder, the reader and its list of arrivals).

Run: ``PYTHONPATH=. .venv/bin/python scripts/bench_hotswap.py [--out results/hotswap.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from daemon.app import Daemon
from daemon.logging import configure_logging
from daemon.settings import load_settings
from kronos_contract.registry import Registry, publish_hint
from tests.support.hotswap import TINY, perturbed_copy, publish

REPO = Path(__file__).resolve().parents[1]

DEMO = REPO / "daemon" / "assets" / "demo-model"


def model_footprint(reg: Registry, settings: Any, cache: Path, states: Any, copies: int = 3) -> int:
    """Resident bytes one more loaded version takes (engine, packed weights, smoke-test sessions
    dropped): RSS with ``copies`` extra versions held, minus without, divided by ``copies``."""
    from daemon.model.vetting import load_version

    gc.collect()
    before = rss_bytes()
    held = [load_version(reg, "v2", settings, cache, states).forecaster for _ in range(copies)]
    gc.collect()
    after = rss_bytes()
    del held
    return (after - before) // copies


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class Reader:
    """Follows the output topic; remembers when each version's forecasts arrived."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="latest", fetch_max_wait_ms=10
        )
        self.arrivals: list[tuple[float, str]] = []
        self.count = 0

    async def run(self) -> None:
        async for msg in self.consumer:
            self.arrivals.append((time.time(), json.loads(msg.value)["model_version"]))
            self.count += 1

    async def first(self, version: str, after: float, timeout_s: float = 120.0) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for at, v in self.arrivals:
                if v == version and at >= after:
                    return at
            await asyncio.sleep(0.01)
        raise TimeoutError(f"no forecast of {version} within {timeout_s}s")


async def feed(bootstrap: str, topic: str, symbols: int, every_s: float, stop: asyncio.Event) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    rng = random.Random(0)
    prices = [10.0 + 90 * rng.random() for _ in range(symbols)]
    t = datetime(2024, 1, 2, tzinfo=UTC)
    try:
        while not stop.is_set():
            t += timedelta(minutes=1)
            for i in range(symbols):
                prices[i] *= math.exp(rng.gauss(0, 0.002))
                p = round(prices[i], 4)
                bar = {
                    "symbol": f"S{i}", "ts": t.isoformat().replace("+00:00", "Z"),
                    "open": p, "high": round(p * 1.002, 4), "low": round(p * 0.997, 4), "close": p,
                    "volume": 1000.0, "amount": round(1000 * p, 2),
                }  # fmt: skip
                await producer.send(topic, json.dumps(bar).encode(), key=f"S{i}".encode())
            await asyncio.sleep(every_s)
    finally:
        await producer.stop()


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    bootstrap, redis_url = os.environ["KAFKA_BOOTSTRAP"], os.environ["REDIS_URL"]
    run_id = uuid.uuid4().hex[:10]
    names = [f"bench-hotswap-{run_id}-{k}" for k in ("in", "out", "dlq")]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(n, 3, 1) for n in names])
    tmp = Path(tempfile.mkdtemp(prefix="bench-hotswap-"))
    source = DEMO if args.model == "demo" else TINY
    reg = Registry(str(tmp / "registry"))
    publish(reg, "v1", source, promote=True)
    publish(reg, "v2", perturbed_copy(source, tmp / "v2", 0.05, seed=2), promote=False)
    model_bytes = sum((source / p / "model.safetensors").stat().st_size for p in ("tokenizer", "predictor"))
    max_context = 128 if args.model == "demo" else 64
    prefix = f"bench:{run_id}"
    settings = load_settings(
        kafka={
            "bootstrap_servers": bootstrap, "input_topic": names[0], "output_topic": names[1],
            "dead_letter_topic": names[2], "group_id": f"bench-{run_id}",
        },
        redis={"url": redis_url, "key_prefix": prefix},
        model={
            "registry": str(tmp / "registry"), "registry_poll_s": args.poll_s, "registry_hint": True,
            "device": "cpu", "threads": 1, "max_context": max_context, "horizon": 4, "sample_count": 4,
            "cache_dir": str(tmp / "cache"),
        },
        batch={"max_wait_ms": 20},
        mode=args.mode, http_port=None, log_level="WARNING",
    )  # fmt: skip
    configure_logging("WARNING", "json")
    daemon = Daemon(settings)
    await daemon.start()
    serving = asyncio.create_task(daemon.serve())
    reader = Reader(bootstrap, names[1])
    await reader.consumer.start()
    reading = asyncio.create_task(reader.run())
    stop = asyncio.Event()
    feeding = asyncio.create_task(feed(bootstrap, names[0], args.symbols, args.bar_every_s, stop))
    current = "v1"
    latency: dict[str, list[float]] = {"poll": [], "hint": []}
    ready: dict[str, list[float]] = {"poll": [], "hint": []}  # pointer move -> new version loaded
    rss_series: list[int] = []
    try:
        await reader.first("v1", 0.0)

        follower = daemon.models
        assert follower is not None and follower.forecaster is not None
        slot = follower.forecaster

        async def loaded(target: str, t0: float) -> float:
            while slot.target_version != target:
                await asyncio.sleep(0.005)
            return time.time() - t0

        async def swap(hint: bool) -> tuple[float, float]:
            nonlocal current
            target = "v2" if current == "v1" else "v1"
            t0 = time.time()
            ready_s = asyncio.create_task(loaded(target, t0))
            await asyncio.to_thread(reg.promote, target)
            if hint:
                await publish_hint(redis_url, prefix, target)
            arrived = await reader.first(target, t0)
            current = target
            return arrived - t0, await ready_s

        for _ in range(args.rounds):
            for how in ("poll", "hint"):
                total, load_done = await swap(how == "hint")
                latency[how].append(total)
                ready[how].append(load_done)
                await asyncio.sleep(0.5)
        gc.collect()
        rss_before = rss_bytes()
        swap_phase_started = time.monotonic()
        for _ in range(args.swaps):
            await swap(True)
            gc.collect()
            rss_series.append(rss_bytes())
        rss_after = rss_series[-1]
        swap_phase_s = time.monotonic() - swap_phase_started
        # control: as long again with bars flowing and no swap (what the process grows by anyway)
        await asyncio.sleep(swap_phase_s)
        gc.collect()
        rss_control = rss_bytes()
        footprint = await asyncio.to_thread(
            model_footprint, reg, settings, tmp / "footprint", dict(daemon.loop.states if daemon.loop else {})
        )
        swaps = daemon.metrics.registry
        load = swaps.get_sample_value("kronos_model_load_seconds_sum") or 0.0
        warm = swaps.get_sample_value("kronos_model_warmup_seconds_sum") or 0.0
        n_loads = swaps.get_sample_value("kronos_model_load_seconds_count") or 1.0
        ok = swaps.get_sample_value("kronos_model_swaps_total", {"result": "ok"})
    finally:
        stop.set()
        await feeding
        await daemon.close()
        await serving
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        await reader.consumer.stop()
        await admin.delete_topics(names)
        await admin.close()
        import redis.asyncio as aioredis

        client = aioredis.from_url(redis_url)
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()

    def summary(xs: list[float]) -> dict[str, float]:
        return {
            "n": len(xs), "mean_s": round(statistics.mean(xs), 3), "median_s": round(statistics.median(xs), 3),
            "min_s": round(min(xs), 3), "max_s": round(max(xs), 3),
        }  # fmt: skip

    return {
        "what": "seconds from the champion pointer move to the first forecast of the new version; RSS over swaps",
        "settings": {
            "model": args.model,
            "mode": args.mode,
            "poll_s": args.poll_s,
            "symbols": args.symbols,
            "bar_every_s": args.bar_every_s,
            "max_context": max_context,
            "torch_threads": 1,
        },  # fmt: skip
        "latency": {
            "polling_only": summary(latency["poll"]),
            "with_hint": summary(latency["hint"]),
            "samples_s": {k: [round(v, 3) for v in vs] for k, vs in latency.items()},
            "until_loaded_s": {k: [round(v, 3) for v in vs] for k, vs in ready.items()},
            "load_s_mean": round(load / n_loads, 3),
            "warmup_s_mean": round(warm / n_loads, 3),
        },
        "memory": {
            "swaps": args.swaps,
            "rss_before_bytes": rss_before,
            "rss_after_bytes": rss_after,
            "rss_delta_bytes": rss_after - rss_before,
            "rss_max_bytes": max(rss_series),
            "swap_phase_s": round(swap_phase_s, 1),
            "rss_delta_same_time_without_swaps_bytes": rss_control - rss_after,
            "rss_after_each_swap_bytes": rss_series,
            "model_weight_bytes": model_bytes,
            "model_footprint_bytes": footprint,
            "delta_within_weight_bytes": abs(rss_after - rss_before) <= model_bytes,
            "delta_within_model_footprint": abs(rss_after - rss_before) <= footprint,
        },
        "swaps_ok": ok,
        "forecasts_read": reader.count,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores (shared)",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["tiny", "demo"], default="tiny")
    parser.add_argument("--mode", choices=["exact", "incremental"], default="incremental")
    parser.add_argument("--poll-s", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5, help="pointer moves per way (poll, hint)")
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--symbols", type=int, default=3)
    parser.add_argument("--bar-every-s", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "hotswap.json")
    args = parser.parse_args()
    result = asyncio.run(measure(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    lat, mem = result["latency"], result["memory"]
    print(
        f"pointer move -> first new forecast: polling only {lat['polling_only']['median_s']} s median, "
        f"with hint {lat['with_hint']['median_s']} s median "
        f"(ratio {lat['polling_only']['median_s'] / lat['with_hint']['median_s']:.1f}x); "
        f"RSS {mem['rss_before_bytes'] / 2**20:.1f} -> {mem['rss_after_bytes'] / 2**20:.1f} MiB over "
        f"{mem['swaps']} swaps (one model: {mem['model_weight_bytes'] / 2**20:.2f} MiB); wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
