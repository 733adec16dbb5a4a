"""Outages of Redis and Kafka against private servers of each test (the shared ones are never stopped):
waited out with backoff, readiness 503 meanwhile, recovery without a restart, nothing lost.

The 20 s outages of the issue are marked slow; they write what they measure to
results/reliability/outages.json (recovery seconds after the service returned)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from daemon.app import Daemon
from daemon.errors import OutageTooLong
from daemon.ops.server import check
from tests.support.launcher import (
    Topics,
    bar_series,
    daemon_settings,
    end_offsets,
    expected_ids,
    forecasts,
    interleave,
    metric,
    produce,
    read_topic,
    wait_committed,
    wait_until,
)
from tests.support.private_services import PrivateKafka, PrivateRedis, free_port
from tests.support.stub_forecaster import StubForecaster

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(240)]

# Measured figures go to results/tmp/ (ignored by git) unless TEST_RESULTS_DIR names another folder
# (`TEST_RESULTS_DIR=results` refreshes the committed results/reliability/outages.json).
RESULTS = (
    Path(os.environ.get("TEST_RESULTS_DIR") or Path(__file__).resolve().parents[2] / "results" / "tmp")
    / "reliability"
    / "outages.json"
)
FAST_RETRY = {"retry_initial_s": 0.05, "retry_max_s": 1.0, "health_probe_interval_s": 0.5}


def _record(name: str, values: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[name] = values
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextlib.asynccontextmanager
async def _serving(daemon: Daemon) -> AsyncIterator[asyncio.Task[None]]:
    """Start (which may wait for a service) and serve in one task; close at the end; re-raise errors."""

    async def run() -> None:
        await daemon.start()
        await daemon.serve()

    task = asyncio.create_task(run())
    try:
        yield task
    finally:
        await daemon.close()
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_redis_down_at_start_up_is_waited_out(
    kafka_bootstrap: str, private_redis: PrivateRedis, group_id: str, topics: Topics
) -> None:
    series = {s: bar_series(s, 5) for s in ("U1", "U2")}
    await produce(kafka_bootstrap, topics.input, interleave(*series.values()))
    settings = daemon_settings(kafka_bootstrap, private_redis.url, "kr", group_id, topics, **FAST_RETRY)
    private_redis.stop()
    daemon = Daemon(settings, forecaster=StubForecaster(max_context=64))
    async with _serving(daemon) as task:
        await wait_until(lambda: "redis" in daemon.outages.down(), 10, "the Redis outage to be noticed")
        ok, details = daemon.ready()
        assert not ok and "redis" in details["services_down"]
        await asyncio.sleep(1.0)
        assert not task.done()  # waiting, not crashing
        await private_redis.start()
        out = forecasts(await read_topic(kafka_bootstrap, topics.output, 10))
        await wait_committed(kafka_bootstrap, group_id, topics.input)
        await wait_until(lambda: daemon.ready()[0], 10, "ready")
        assert metric(daemon, "kronos_service_retries_total", service="redis") >= 1
    assert {f["id"] for f in out} == expected_ids(series, "stub-1")


async def test_an_outage_longer_than_the_give_up_time_ends_the_process(
    kafka_bootstrap: str, private_redis: PrivateRedis, group_id: str, topics: Topics
) -> None:
    settings = daemon_settings(
        kafka_bootstrap, private_redis.url, "kr", group_id, topics, outage_give_up_s=1.0, **FAST_RETRY
    )
    private_redis.stop()
    daemon = Daemon(settings, forecaster=StubForecaster(max_context=64))
    try:
        with pytest.raises(OutageTooLong, match="KRONOS_OUTAGE_GIVE_UP_S"):
            await daemon.start()
    finally:
        await daemon.close()


async def _produce_paced(
    bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]], every_s: float
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value=value, key=key)
            await asyncio.sleep(every_s)
    finally:
        await producer.stop()


@pytest.mark.slow
async def test_redis_down_20s_mid_stream_loses_nothing_and_recovers_by_itself(
    kafka_bootstrap: str, private_redis: PrivateRedis, group_id: str, topics: Topics
) -> None:
    series = {s: bar_series(s, 60, seed=7) for s in ("R1", "R2", "R3")}
    settings = daemon_settings(kafka_bootstrap, private_redis.url, "kr", group_id, topics, **FAST_RETRY)
    daemon = Daemon(settings, forecaster=StubForecaster(max_context=64))
    feed = asyncio.create_task(
        _produce_paced(kafka_bootstrap, topics.input, interleave(*series.values()), every_s=0.12)
    )  # 180 bars over ~25 s
    try:
        async with _serving(daemon) as task:
            await wait_until(
                lambda: metric(daemon, "kronos_forecasts_out_total") >= 20, 30, "forecasts before the outage"
            )
            private_redis.stop()
            down_at = time.monotonic()
            not_ready = 0
            while time.monotonic() - down_at < 20:
                await asyncio.sleep(0.5)
                not_ready += not daemon.ready()[0]
                assert not task.done(), "the daemon stopped during the outage"
            published_before = sum((await end_offsets(kafka_bootstrap, topics.output)).values())
            await private_redis.start()
            back_at = time.monotonic()

            async def output_moves() -> bool:
                return sum((await end_offsets(kafka_bootstrap, topics.output)).values()) > published_before

            await wait_until(output_moves, 30, "output after Redis returned")
            recovery_s = time.monotonic() - back_at
            await feed
            await wait_committed(kafka_bootstrap, group_id, topics.input, timeout_s=60)
            out = forecasts(await read_topic(kafka_bootstrap, topics.output, 180))
            retries = metric(daemon, "kronos_service_retries_total", service="redis")
            assert not task.done()
    finally:
        feed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feed
    ids = {f["id"] for f in out}
    _record(
        "redis_down_20s",
        {"bars": 180, "lost": len(expected_ids(series, "stub-1") - ids), "duplicates": len(out) - len(ids),
         "output_back_s": round(recovery_s, 3), "probes_not_ready": not_ready, "redis_retries": retries},
    )  # fmt: skip
    assert ids == expected_ids(series, "stub-1")  # 0 lost
    assert not_ready >= 30  # readiness 503 through the outage (sampled every 0.5 s)
    assert recovery_s < 5.0, f"output came back {recovery_s:.1f} s after Redis"


@pytest.mark.slow
async def test_broker_down_20s_readiness_503_then_recovery_without_restart(
    private_kafka: PrivateKafka, redis_url: str, key_prefix: str, group_id: str, unique_id: str
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=private_kafka.bootstrap)
    await admin.start()
    try:
        names = [f"out-{unique_id}-{n}" for n in ("in", "out", "dlq")]
        await admin.create_topics([NewTopic(n, num_partitions=1, replication_factor=1) for n in names])
    finally:
        await admin.close()
    topics = Topics(*names)
    before = {s: bar_series(s, 40, seed=9) for s in ("B1", "B2")}
    after = {s: recs[20:] for s, recs in before.items()}
    before = {s: recs[:20] for s, recs in before.items()}
    bootstrap = private_kafka.bootstrap
    await produce(bootstrap, topics.input, interleave(*before.values()))
    settings = daemon_settings(
        bootstrap, redis_url, key_prefix, group_id, topics, http_port=0,
        kafka={"request_timeout_ms": 5000}, **FAST_RETRY,
    )  # fmt: skip
    daemon = Daemon(settings, forecaster=StubForecaster(max_context=64))
    async with _serving(daemon) as task:
        await wait_committed(bootstrap, group_id, topics.input, timeout_s=60)
        await wait_until(lambda: daemon.ready()[0], 10, "ready before the outage")
        assert daemon.ops is not None
        url = f"http://127.0.0.1:{daemon.ops.port}/readyz"
        private_kafka.stop()
        down_at = time.monotonic()
        await wait_until(lambda: not daemon.ready()[0], 10, "readiness to fail")
        noticed_s = time.monotonic() - down_at
        ready_during = []
        while time.monotonic() - down_at < 20:
            ready_during.append(await asyncio.to_thread(check, url, 2.0))
            await asyncio.sleep(1.0)
            assert not task.done(), "the daemon stopped during the outage"
        await private_kafka.start()
        back_at = time.monotonic()
        await produce(bootstrap, topics.input, interleave(*after.values()))
        await wait_committed(bootstrap, group_id, topics.input, timeout_s=90)
        recovery_s = time.monotonic() - back_at
        await wait_until(lambda: daemon.ready()[0], 30, "ready again")
        out = forecasts(await read_topic(bootstrap, topics.output, 80))
        assert not task.done()
    ids = {f["id"] for f in out}
    expected = expected_ids(before, "stub-1") | expected_ids(after, "stub-1")
    _record(
        "broker_down_20s",
        {"bars": 80, "lost": len(expected - ids), "duplicates": len(out) - len(ids),
         "readiness_failed_after_s": round(noticed_s, 3), "ready_probes_during": sum(ready_during),
         "all_processed_after_broker_back_s": round(recovery_s, 3)},
    )  # fmt: skip
    assert not any(ready_during)  # 503 throughout
    assert ids == expected  # 0 lost


async def test_an_invalid_message_just_under_the_size_limit_is_dead_lettered_truncated(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, group_id: str, topics: Topics
) -> None:
    """Fault 3 against the real broker: the dead letter (original + headers) exceeds the producer's
    maximum request size; a truncated copy goes instead and the consumer goes on."""
    huge = (b"H", b"{" + b"x" * (1_048_576 - 200))  # invalid JSON, fits the limit by itself
    good = bar_series("H", 3)
    await produce(kafka_bootstrap, topics.input, good[:1] + [huge] + good[1:])
    settings = daemon_settings(kafka_bootstrap, redis_url, key_prefix, group_id, topics)
    async with _serving(Daemon(settings, forecaster=StubForecaster(max_context=64))) as task:
        out = forecasts(await read_topic(kafka_bootstrap, topics.output, 3))
        dead = await read_topic(kafka_bootstrap, topics.dead, 1)
        await wait_committed(kafka_bootstrap, group_id, topics.input)
        assert not task.done()
    assert len(out) == 3
    (letter,) = dead
    headers = dict(letter.headers)
    assert headers["truncated"] == b"true" and len(letter.value) == 1024
    assert headers["original_value_bytes"] == str(len(huge[1])).encode()
    assert headers["source_offset"] == b"1" and b"MessageSizeTooLarge" in headers["send_error"]


class _Gate:
    """A TCP forwarder to the broker that can be shut: the bootstrap address of a daemon whose broker
    is down at start-up (after bootstrapping, clients talk to the broker's advertised address)."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.port = free_port()
        self._server: asyncio.Server | None = None

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))


async def test_a_broker_unreachable_at_start_up_is_waited_out(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, group_id: str, topics: Topics
) -> None:
    series = {"S1": bar_series("S1", 4)}
    await produce(kafka_bootstrap, topics.input, series["S1"])
    gate = _Gate(kafka_bootstrap)
    settings = daemon_settings(
        f"127.0.0.1:{gate.port}", redis_url, key_prefix, group_id, topics, **FAST_RETRY
    )
    daemon = Daemon(settings, forecaster=StubForecaster(max_context=64))
    try:
        async with _serving(daemon) as task:
            await wait_until(
                lambda: metric(daemon, "kronos_service_retries_total", service="kafka") >= 3, 20, "retries"
            )
            assert not task.done() and not daemon.ready()[0]
            assert "kafka" in daemon.ready()[1]["services_down"]
            await gate.open()
            out = forecasts(await read_topic(kafka_bootstrap, topics.output, 4))
            await wait_until(lambda: daemon.ready()[0], 20, "ready")
    finally:
        await gate.close()
    assert {f["id"] for f in out} == expected_ids(series, "stub-1")
