"""Exactly-once (``KRONOS_KAFKA__EXACTLY_ONCE=true``): a read_committed reader sees each bar's forecast
once, across a crash between the Redis write and the transaction's commit and across SIGKILLs."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from daemon.app import Daemon
from daemon.errors import ConfigError, DaemonError, StateError
from daemon.io.bus import InMessage, Partition
from daemon.io.kafka_eos import TransactionalInput, TransactionalOutput
from daemon.io.kafka_producer import KafkaOutput
from daemon.pipeline.plan import eos_segments
from daemon.settings import Settings, load_settings
from daemon.state.redis import RedisStateStore
from kronos_core.stream_types import StreamForecaster
from tests.support.launcher import (
    Topics,
    _partitions,
    bar_series,
    committed_offsets,
    daemon_settings,
    expected_ids,
    forecasts,
    interleave,
    produce,
    spawn_daemon,
    wait_committed,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]


def _msg(partition: int, offset: int, key: bytes | None) -> InMessage:
    return InMessage("in", partition, offset, key, b"{}", 0, [])


def test_segments_hold_each_key_once_and_follow_on_per_partition() -> None:
    batch = [
        _msg(0, 0, b"A"), _msg(0, 1, b"B"), _msg(1, 0, b"C"), _msg(0, 2, b"A"),
        _msg(0, 3, b"B"), _msg(1, 1, b"D"), _msg(0, 4, None), _msg(0, 5, None), _msg(1, 2, b"C"),
    ]  # fmt: skip
    segments = eos_segments(batch)
    assert [[(m.partition, m.offset) for m in seg] for seg in segments] == [
        [(0, 0), (0, 1), (1, 0), (1, 1)],
        [(0, 2), (0, 3), (0, 4), (0, 5), (1, 2)],
    ]
    for seg in segments:
        keys = [m.key for m in seg if m.key is not None]
        assert len(keys) == len(set(keys))
    # Per partition the segments are consecutive runs in offset order: each commit is a prefix.
    for p in (0, 1):
        order = [m.offset for seg in segments for m in seg if m.partition == p]
        assert order == sorted(order)


def test_a_message_after_a_repeat_never_jumps_ahead_of_it() -> None:
    # A, A, B on one partition: B must not join the first segment (its offset is past the second A).
    segments = eos_segments([_msg(0, 0, b"A"), _msg(0, 1, b"A"), _msg(0, 2, b"B")])
    assert [[m.offset for m in seg] for seg in segments] == [[0], [1, 2]]


def test_exactly_once_needs_a_stable_transactional_id() -> None:
    with pytest.raises(ConfigError, match="KRONOS_KAFKA__GROUP_INSTANCE_ID"):
        load_settings(kafka={"exactly_once": True})
    settings = load_settings(kafka={"exactly_once": True, "group_id": "g", "group_instance_id": "pod-0"})
    assert TransactionalOutput(settings.kafka).transactional_id == "g.pod-0"


async def _read(bootstrap: str, topic: str, isolation: str, settle_s: float = 1.5) -> list[Any]:
    """Every message of ``topic`` a reader with ``isolation`` sees (read until ``settle_s`` of quiet)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level=isolation
    )
    await consumer.start()
    try:
        parts = await _partitions(consumer, topic)
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        out: list[Any] = []
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < settle_s:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out += records
                quiet_since = time.monotonic()
        return out
    finally:
        await consumer.stop()


def _eos_settings(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, group_id: str, topics: Topics, **over: Any
) -> Settings:
    kafka = {"exactly_once": True, "group_instance_id": "eos-test-0", **over.pop("kafka", {})}
    return daemon_settings(kafka_bootstrap, redis_url, key_prefix, group_id, topics, kafka=kafka, **over)


class _Crash(DaemonError):
    """Stands for the process dying: raised by the commit, nothing aborted (not an outage: no retry)."""


class _CrashingInput(TransactionalInput):
    def __init__(self, *args: Any, crash_at: int) -> None:
        super().__init__(*args)
        self.crash_at, self.commits = crash_at, 0

    async def commit(self, offsets: dict[Partition, int]) -> None:
        self.commits += 1
        if self.commits == self.crash_at:  # forecasts sent and Redis written; the commit never happens
            raise _Crash("simulated crash before the transaction's commit")
        await super().commit(offsets)


class _AbandoningOutput(TransactionalOutput):
    async def stop(self) -> None:  # a dead process aborts nothing: the transaction stays open
        await KafkaOutput.stop(self)


class _FlakyStore(RedisStateStore):
    """Redis failing the first read of a stored forecast (an outage while re-publishing)."""

    failures = 0

    async def forecast_from(self, symbol: str, source: str) -> bytes | None:
        if self.failures == 0:
            self.failures += 1
            raise StateError("injected: Redis unreachable while reading a stored forecast")
        return await super().forecast_from(symbol, source)


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.timeout(120)
@pytest.mark.parametrize("redis_fails_once", [False, True], ids=["plain", "redis-outage-while-republishing"])
async def test_crash_between_redis_write_and_commit_republishes_once(
    kafka_bootstrap: str,
    redis_url: str,
    key_prefix: str,
    group_id: str,
    topics: Topics,
    forecaster: StreamForecaster,
    model_version: str,
    redis_fails_once: bool,
) -> None:
    series = {s: bar_series(s, 6, seed=5) for s in ("E1", "E2", "E3", "E4")}
    # A bad message in the crashed segment: its dead letter must not show up twice either.
    bars = interleave(*series.values())
    await produce(kafka_bootstrap, topics.input, bars[:9] + [(b"E9", b"not json")] + bars[9:])
    settings = _eos_settings(kafka_bootstrap, redis_url, key_prefix, group_id, topics)

    out1 = _AbandoningOutput(settings.kafka)
    in1 = _CrashingInput(settings.kafka, out1, crash_at=3)
    first = Daemon(settings, bus_in=in1, bus_out=out1, forecaster=forecaster)
    await first.start()
    with pytest.raises(_Crash):
        await first.serve()
    await first.close()
    assert in1.commits == 3

    store = None
    if redis_fails_once:
        store = _FlakyStore.from_url(redis_url, settings.redis.key_prefix, settings.model.max_context)
    second = Daemon(settings, forecaster=forecaster, store=store)  # same transactional id: aborts the open one
    await second.start()
    serving = asyncio.create_task(second.serve())
    try:
        await wait_committed(kafka_bootstrap, group_id, topics.input, timeout_s=60)
    finally:
        await second.close()
        await serving

    committed = forecasts(await _read(kafka_bootstrap, topics.output, "read_committed"))
    everything = await _read(kafka_bootstrap, topics.output, "read_uncommitted")
    counts = Counter(f["id"] for f in committed)
    assert set(counts) == expected_ids(series, model_version)
    assert max(counts.values()) == 1, [i for i, n in counts.items() if n > 1]
    # The crashed segment's forecasts are in the log, aborted: a read_uncommitted reader sees them twice.
    assert len(everything) > len(committed)
    dead = await _read(kafka_bootstrap, topics.dead, "read_committed")
    assert len(dead) == 1
    if store is not None:
        assert store.failures == 1  # the outage was met, and waited out


async def _more(progress: Any, before: int) -> bool:
    return bool(await progress() > before)


async def _open_transaction(watcher: AIOKafkaConsumer, parts: list[TopicPartition]) -> bool:
    """True while a transaction on the output is open: the high watermark is past the last stable offset
    (both as of the read_committed watcher's latest fetch response)."""
    await watcher.getmany(timeout_ms=5)
    for tp in parts:
        high, stable = watcher.highwater(tp), watcher.last_stable_offset(tp)
        if high is not None and stable is not None and high > stable:
            return True
    return False


@pytest.mark.slow
@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.timeout(420)
async def test_sigkill_ten_times_each_forecast_exactly_once_for_a_read_committed_reader(
    kafka_bootstrap: str,
    redis_url: str,
    key_prefix: str,
    group_id: str,
    topics: Topics,
    tmp_path: Path,
) -> None:
    rng = random.Random(9)
    series = {f"X{i}": bar_series(f"X{i}", 60, seed=i) for i in range(12)}
    await produce(kafka_bootstrap, topics.input, interleave(*series.values()))
    settings = _eos_settings(
        kafka_bootstrap, redis_url, key_prefix, group_id, topics, batch={"max_batch_size": 24}
    )
    model_env = {"KRONOS_MODEL__FACTORY": "tests.support.stub_forecaster:build"}  # the kills test the daemon, not the model
    log = tmp_path / "daemon.log"
    watcher = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, isolation_level="read_committed", fetch_max_wait_ms=10
    )
    await watcher.start()
    parts = [TopicPartition(topics.output, p) for p in range(3)]
    watcher.assign(parts)
    in_txn_kills = 0
    total = 12 * 60

    async def progress() -> int:
        return sum((await committed_offsets(kafka_bootstrap, group_id, topics.input)).values())

    try:
        for _ in range(10):
            before = await progress()
            assert before < total, "the stream ended before the tenth kill: slow the model down"
            proc = spawn_daemon(settings, model_env, log, delay_ms=rng.choice([100, 200, 300]))
            try:
                await wait_until(lambda b=before: _more(progress, b), 90, "the restarted daemon to commit")
                # Then kill at a random moment, at once if a transaction is seen open.
                deadline = time.monotonic() + rng.uniform(0.0, 0.8)
                while time.monotonic() < deadline:
                    if await _open_transaction(watcher, parts):
                        in_txn_kills += 1
                        break
            finally:
                proc.send_signal(signal.SIGKILL)
                assert await asyncio.to_thread(proc.wait, 30) == -signal.SIGKILL, log.read_text()[-3000:]
        last = spawn_daemon(settings, model_env, log, delay_ms=0)
        try:
            await wait_committed(kafka_bootstrap, group_id, topics.input, timeout_s=120)
        finally:
            last.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(last.wait, 30) == 0, log.read_text()[-3000:]
    finally:
        await watcher.stop()

    committed = forecasts(await _read(kafka_bootstrap, topics.output, "read_committed"))
    counts = Counter(f["id"] for f in committed)
    assert set(counts) == expected_ids(series, "stub-1"), "a bar has no forecast"
    assert max(counts.values()) == 1, f"twice: {[i for i, n in counts.items() if n > 1]}"
    everything = await _read(kafka_bootstrap, topics.output, "read_uncommitted")
    print(f"kills with a transaction in flight: {in_txn_kills}/10; aborted records: {len(everything) - len(committed)}")
