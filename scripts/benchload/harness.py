"""A daemon session of the load benchmark: a run's fresh topics, the daemon started and ready, this
process's clients and the output reader around it; everything stopped and deleted afterwards."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from .collector import Collector
from .housekeeping import create_topics, delete_redis_keys, delete_topics, wait_for_leaders
from .process import REPO, DaemonProcess, Run


@dataclass
class Session:
    """A started daemon on a run's fresh topics, with this process's clients around it."""

    daemon: DaemonProcess
    admin: AIOKafkaAdminClient
    probe: AIOKafkaConsumer
    producer: AIOKafkaProducer
    collector: Collector


@contextlib.asynccontextmanager
async def daemon_session(
    args: argparse.Namespace, run: Run, env: dict[str, str], bootstrap: str, redis_url: str,
    log_path: Path, result: dict[str, Any], *, producer_linger_ms: int = 0,
) -> AsyncIterator[Session]:
    """Create the run's topics, start the daemon and wait until it is ready, start the output reader;
    afterwards stop everything and delete the topics and Redis keys (also after a failure)."""
    s = Session(
        DaemonProcess(env, int(env["KRONOS_HTTP_PORT"]), log_path),
        AIOKafkaAdminClient(bootstrap_servers=bootstrap),
        AIOKafkaConsumer(bootstrap_servers=bootstrap),
        AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                         linger_ms=producer_linger_ms, max_batch_size=1 << 20),  # a burst in one batch per partition
        Collector(bootstrap, run.output),
    )
    result["daemon_log"] = str(log_path.relative_to(REPO))
    await s.admin.start()
    try:
        await create_topics(s.admin, run)
        await s.probe.start()
        await wait_for_leaders(s.probe, run)
        await s.producer.start()
        s.daemon.start()
        result["startup_s"] = round(await s.daemon.wait_ready(args.ready_timeout), 2)
        await s.collector.start(run.partitions)  # reads from the beginning; nothing is published yet
        print(f"[{run.mode}] daemon ready after {result['startup_s']} s", flush=True)
        yield s
    finally:
        result["exit_code"] = await s.daemon.stop()
        await s.collector.stop()
        await s.producer.stop()
        await s.probe.stop()
        try:
            await delete_topics(s.admin, run)
        finally:
            await s.admin.close()
        result["redis_keys_deleted"] = await delete_redis_keys(redis_url, run.prefix)
        run.probe_file.unlink(missing_ok=True)  # the probe's tallies are in the result by now
