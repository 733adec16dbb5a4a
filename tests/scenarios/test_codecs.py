"""Every codec on the wire, against the session's real Kafka broker and Redis server.

Bars written by the Java client of the Kafka distribution the services run (scripts/kafka/BarProducer.java,
kafka-clients with compression.type gzip, snappy, lz4 or zstd) are forecast, and the daemon's own
forecasts and dead letters go out in the codec KRONOS_KAFKA__COMPRESSION_TYPE names. A record batch the daemon
cannot decode (a daemon process whose codec library is hidden) is skipped past, counted and
dead-lettered, and the partition goes on. A partition held by a hanging transaction upstream, lagging
without advancing, fails readiness and sets kronos_partition_stalled.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from daemon.io.undecodable import batches, fetch_raw
from kronos_core.stream_types import StreamForecaster
from tests.support.launcher import (
    T0,
    Record,
    Topics,
    bar_record,
    bar_series,
    committed_offsets,
    daemon_settings,
    encode,
    end_offsets,
    expected_ids,
    forecasts,
    interleave,
    metric,
    produce,
    read_topic,
    running_daemon,
    spawn_daemon,
    stop_daemon,
    wait_committed,
    wait_until,
)
from tests.support.private_services import kafka_jars

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
PRODUCER = ROOT / "scripts" / "kafka" / "BarProducer.java"
TopicFactory = Callable[..., Awaitable[str]]


def java_produce(bootstrap: str, topic: str, records: list[Record], compression: str) -> None:
    """``records`` through kafka-clients with ``compression.type``, one KEY<TAB>JSON line each."""
    jars = kafka_jars()
    java = shutil.which("java")
    if jars is None or java is None:
        reason = "the Java producer needs java and the Kafka jars scripts/services caches"
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
        pytest.skip(reason)
    lines = "".join(f"{k.decode()}\t{v.decode()}\n" for k, v in records if k is not None and v is not None)
    proc = subprocess.run(
        [java, "-cp", f"{jars}/*", str(PRODUCER), "--bootstrap", bootstrap, "--topic", topic,
         "--compression", compression],
        input=lines, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"sent {len(records)} bars" in proc.stdout


async def codecs_on(bootstrap: str, topic: str) -> set[str]:
    """The codecs of the record batches stored on every partition of ``topic`` (read raw)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        found: set[str] = set()
        for partition, end in (await end_offsets(bootstrap, topic)).items():
            if end > 0:
                tp = TopicPartition(topic, partition)
                await consumer._client.force_metadata_update()  # noqa: SLF001
                data, _ = await fetch_raw(consumer, tp, 0)
                found |= {codec for _, _, codec, _ in batches(data)}
        return found
    finally:
        await consumer.stop()


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_bars_from_the_java_client_are_forecast_whatever_the_codec(
    codec: str,
    kafka_bootstrap: str,
    redis_url: str,
    key_prefix: str,
    group_id: str,
    topics: Topics,
    forecaster: StreamForecaster,
) -> None:
    series = {s: bar_series(s, 6, seed=i) for i, s in enumerate(["JA", "JB", "JC"])}
    bad = encode(bar_record("JD", T0, 10.0, high=1.0))  # low > high: a dead letter
    records = interleave(*series.values()) + [bad]
    await asyncio.to_thread(java_produce, kafka_bootstrap, topics.input, records, codec)
    assert await codecs_on(kafka_bootstrap, topics.input) == {codec}  # the broker kept the client's codec
    # the daemon's own producer writes the same codec (KRONOS_KAFKA__COMPRESSION_TYPE)
    settings = daemon_settings(
        kafka_bootstrap, redis_url, key_prefix, group_id, topics, kafka={"compression_type": codec}
    )

    async with running_daemon(settings, forecaster) as d:
        out = forecasts(await read_topic(kafka_bootstrap, topics.output, 18))
        dead = await read_topic(kafka_bootstrap, topics.dead, 1)
        await wait_committed(kafka_bootstrap, group_id, topics.input)
        assert metric(d, "kronos_forecasts_out_total") == 18

    assert {f["id"] for f in out} == expected_ids(series, forecaster.model_version)
    assert [(r.key, r.value) for r in dead] == [bad]
    assert dict(dead[0].headers)["reason_kind"] == b"schema"
    assert await codecs_on(kafka_bootstrap, topics.output) == {codec}
    assert await codecs_on(kafka_bootstrap, topics.dead) == {codec}


async def _produce_one_batch(
    bootstrap: str, topic: str, records: list[Record], codec: str | None, partition: int = 0
) -> None:
    """``records`` as exactly one record batch of ``partition``, compressed with ``codec``."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type=codec, acks="all")
    await producer.start()
    try:
        batch = producer.create_batch()
        for key, value in records:
            assert batch.append(key=key, value=value, timestamp=None) is not None
        await (await producer.send_batch(batch, topic, partition=partition))
    finally:
        await producer.stop()


def _ops_port(log: Path) -> int | None:
    for line in log.read_text().splitlines():
        if line.startswith("{") and json.loads(line).get("event") == "ops endpoints listening":
            return int(json.loads(line)["port"])
    return None


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310
        return str(response.read().decode())


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
async def test_an_undecodable_batch_is_skipped_counted_and_dead_lettered_and_the_partition_goes_on(
    exactly_once: bool,
    kafka_bootstrap: str,
    redis_url: str,
    key_prefix: str,
    group_id: str,
    topic_factory: TopicFactory,
    forecaster_env: dict[str, str],
    model_version: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A daemon process without the zstd library (cramjam hidden) meets a zstd batch between plain
    and gzip ones on partition 0: the batch is dead-lettered whole (raw bytes, its offsets, the
    reason), counted in kronos_undecodable_batches_total, the offsets are committed past it and the
    later bars forecast; partition 1 is not disturbed. Exactly-once: the dead letter and the offsets
    past the batch commit in one transaction."""
    topics = Topics(await topic_factory(partitions=2), await topic_factory(partitions=1), await topic_factory(partitions=1))
    bars = bar_series("UD", 11, seed=5)
    before, unreadable, after = bars[:4], bars[4:7], bars[7:]
    other = bar_series("UE", 6, seed=6)
    await _produce_one_batch(kafka_bootstrap, topics.input, before, None)  # offsets 0..3
    await _produce_one_batch(kafka_bootstrap, topics.input, other[:3], None, partition=1)
    await _produce_one_batch(kafka_bootstrap, topics.input, unreadable, "zstd")  # 4..6
    await _produce_one_batch(kafka_bootstrap, topics.input, other[3:], "gzip", partition=1)
    await _produce_one_batch(kafka_bootstrap, topics.input, after, "gzip")  # 7..10
    assert (await end_offsets(kafka_bootstrap, topics.input)) == {0: 11, 1: 6}

    hidden = tmp_path / "hide"
    (hidden / "cramjam").mkdir(parents=True)
    (hidden / "cramjam" / "__init__.py").write_text('raise ImportError("cramjam is hidden by the test")\n')
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hidden), os.environ.get("PYTHONPATH")])))
    eos = {"exactly_once": True, "group_instance_id": "codec-0"} if exactly_once else {}
    settings = daemon_settings(kafka_bootstrap, redis_url, key_prefix, group_id, topics, http_port=0, kafka=eos)
    log = tmp_path / "daemon.log"
    proc = spawn_daemon(settings, forecaster_env, log, delay_ms=0)
    try:
        out = forecasts(await read_topic(kafka_bootstrap, topics.output, 14, timeout_s=60))
        dead = await read_topic(kafka_bootstrap, topics.dead, 1, timeout_s=30)
        await wait_committed(kafka_bootstrap, group_id, topics.input, timeout_s=30)
        port = _ops_port(log)
        assert port is not None, log.read_text()[-3000:]
        text = await asyncio.to_thread(_scrape, port)
    finally:
        assert await stop_daemon(proc, signal.SIGTERM) == 0, log.read_text()[-3000:]

    assert {f["id"] for f in out} == expected_ids({"UD": before + after, "UE": other}, model_version)
    assert len(out) == 14
    assert await committed_offsets(kafka_bootstrap, group_id, topics.input) == {0: 11, 1: 6}
    (letter,) = dead
    headers = {k: v.decode() for k, v in letter.headers}
    assert headers["reason_kind"] == "undecodable"
    assert (headers["source_partition"], headers["source_offset"]) == ("0", "6")
    assert (headers["source_first_offset"], headers["source_last_offset"], headers["codec"]) == ("4", "6", "zstd")
    assert "offsets 4..6" in headers["reason"] and "zstd" in headers["reason"]
    assert letter.key is None and letter.value is not None
    assert int.from_bytes(letter.value[:8], "big") == 4  # the raw record batch, base offset 4
    sample = f'kronos_undecodable_batches_total{{partition="0",topic="{topics.input}"}} 1.0'
    assert sample in text, [line for line in text.splitlines() if "undecodable" in line]
    assert f'kronos_undecodable_batches_total{{partition="1",topic="{topics.input}"}}' not in text
    assert 'kronos_invalid_messages_total{kind="undecodable"} 1.0' in text
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    (skipped,) = [e for e in events if e["event"].startswith("record batch cannot be decoded")]
    assert (skipped["topic"], skipped["partition"], skipped["first_offset"]) == (topics.input, 0, 4)
    assert not [e for e in events if e["event"] == "service unavailable; waiting it out"]


async def test_a_partition_lagging_without_advancing_fails_readiness_until_it_moves(
    kafka_bootstrap: str,
    redis_url: str,
    key_prefix: str,
    group_id: str,
    topic_factory: TopicFactory,
    forecaster: StreamForecaster,
    unique_id: str,
) -> None:
    """A transaction left open upstream holds a read_committed consumer at its first record while
    bars pile up behind it: after KRONOS_PARTITION_STALL_S readiness is 503 with the partition and
    kronos_partition_stalled is 1; once the transaction commits, the partition moves and both clear."""
    topics = Topics(*[await topic_factory(partitions=1) for _ in range(3)])
    bars = bar_series("ST", 7, seed=2)
    await produce(kafka_bootstrap, topics.input, bars[:3])  # offsets 0..2
    upstream = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"upstream-{unique_id}")
    await upstream.start()
    try:
        await upstream.begin_transaction()
        await upstream.send_and_wait(topics.input, key=bars[3][0], value=bars[3][1], partition=0)  # 3, open
        await produce(kafka_bootstrap, topics.input, bars[4:])  # 4..6, behind the open transaction
        settings = daemon_settings(
            kafka_bootstrap, redis_url, key_prefix, group_id, topics,
            partition_stall_s=1.5, health_probe_interval_s=0.2,
        )  # fmt: skip
        stalled = {"topic": topics.input, "partition": "0"}
        async with running_daemon(settings, forecaster) as d:
            await read_topic(kafka_bootstrap, topics.output, 3)

            def stalled_reported() -> bool:
                return "stalled_partitions" in d.ready()[1]

            await wait_until(stalled_reported, 30, "readiness to report the stalled partition")
            ok, details = d.ready()
            assert not ok and "KRONOS_PARTITION_STALL_S" in details["reason"]
            info = details["stalled_partitions"][f"{topics.input}/0"]
            assert info["offset"] == 3 and info["lag"] >= 4 and info["stuck_s"] >= 1.5
            assert metric(d, "kronos_partition_stalled", **stalled) == 1
            assert not details["services_down"]  # not an outage: Kafka and Redis answer

            await upstream.commit_transaction()
            await read_topic(kafka_bootstrap, topics.output, 7)
            await wait_until(lambda: d.ready()[0], 30, "readiness once the partition moves")
            assert metric(d, "kronos_partition_stalled", **stalled) == 0
            assert "stalled_partitions" not in d.ready()[1]
            assert metric(d, "kronos_forecasts_out_total") == 7
    finally:
        await upstream.stop()
