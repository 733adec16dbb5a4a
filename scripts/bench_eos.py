"""What exactly-once costs: the same backlog drained by the daemon at-least-once and exactly-once.

    source /work/services.env   # or: eval "$(scripts/services env)"
    PYTHONPATH=$PWD .venv/bin/python scripts/bench_eos.py [--symbols 50] [--bars 40] [--repeats 2]

The daemon runs in this process with the tests' stub forecaster (no model time), so the figure is
the delivery machinery alone: the worst case for the transactions' share. Each run gets its own topics
and key prefix on the given Kafka and Redis (KAFKA_BOOTSTRAP, REDIS_URL), deleted afterwards. Modes
alternate; results/exactly_once.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.support.launcher import (
    Topics,
    bar_series,
    daemon_settings,
    end_offsets,
    interleave,
    produce,
    running_daemon,
    wait_committed,
)
from tests.support.stub_forecaster import StubForecaster

ROOT = Path(__file__).resolve().parents[1]


async def one_run(bootstrap: str, redis_url: str, exactly_once: bool, symbols: int, bars: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:10]
    names = [f"eos-bench-{tag}-{n}" for n in ("in", "out", "dlq")]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    prefix = f"bench-eos:{tag}"
    try:
        await admin.create_topics([NewTopic(names[0], 3, 1), NewTopic(names[1], 3, 1), NewTopic(names[2], 1, 1)])
        topics = Topics(*names)
        records = interleave(*(bar_series(f"B{k:03d}", bars, seed=k) for k in range(symbols)))
        await produce(bootstrap, topics.input, records)
        kafka: dict[str, Any] = {"exactly_once": exactly_once}
        if exactly_once:
            kafka["group_instance_id"] = f"bench-{tag}"
        settings = daemon_settings(bootstrap, redis_url, prefix, f"bench-{tag}", topics, kafka=kafka)
        began = time.perf_counter()
        async with running_daemon(settings, StubForecaster(max_context=64)):
            await wait_committed(bootstrap, f"bench-{tag}", topics.input, timeout_s=600)
            seconds = time.perf_counter() - began
        out = sum((await end_offsets(bootstrap, topics.output)).values())
        return {"exactly_once": exactly_once, "bars": len(records), "seconds": round(seconds, 3),
                "bars_per_s": round(len(records) / seconds, 1), "output_log_offsets": out}  # fmt: skip
    finally:
        await admin.delete_topics(names)
        await admin.close()
        client = aioredis.Redis.from_url(redis_url)
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def amain(args: argparse.Namespace) -> int:
    bootstrap, redis_url = os.environ["KAFKA_BOOTSTRAP"], os.environ["REDIS_URL"]
    runs = []
    for _ in range(args.repeats):
        for eos in (False, True):
            runs.append(await one_run(bootstrap, redis_url, eos, args.symbols, args.bars))
            print(runs[-1], flush=True)
    mean = {eos: sum(r["bars_per_s"] for r in runs if r["exactly_once"] == eos) / args.repeats for eos in (False, True)}
    report = {"machine": platform.machine(), "symbols": args.symbols, "bars_per_symbol": args.bars, "runs": runs,
              "mean_bars_per_s": {"at_least_once": mean[False], "exactly_once": mean[True]},
              "ratio_exactly_once": round(mean[True] / mean[False], 3)}  # fmt: skip
    out = ROOT / "results" / "exactly_once"
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Exactly-once cost", "",
        f"`scripts/bench_eos.py`: a backlog of {args.symbols} symbols x {args.bars} bars drained by the daemon in-process "
        "with the stub forecaster (no model time: delivery machinery only), shared Kafka and Redis, modes alternating.", "",
        "| mode | run | bars | seconds | bars/s | output log offsets |", "|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for i, r in enumerate(runs):
        mode = "exactly-once" if r["exactly_once"] else "at-least-once"
        lines.append(f"| {mode} | {i // 2 + 1} | {r['bars']} | {r['seconds']} | {r['bars_per_s']} | {r['output_log_offsets']} |")
    lines += ["", f"Mean bars/s: at-least-once {mean[False]:.1f}, exactly-once {mean[True]:.1f} "
              f"(ratio {report['ratio_exactly_once']}). Output log offsets include the transactions' commit markers."]  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--bars", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    return asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
