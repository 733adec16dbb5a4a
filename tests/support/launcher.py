"""The daemon launcher of the tests, benchmarks and chaos script, and its helpers: bars, Kafka reads and
writes, settings, a daemon in this process (``running_daemon``) or in a subprocess (``spawn_daemon``,
``stop_daemon``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError, NotCoordinatorForGroupError
from aiokafka.structs import ConsumerRecord

from daemon.app import Daemon
from daemon.io.messages import forecast_id, parse_bar
from daemon.settings import Settings, load_settings
from kronos_contract.messages import SCHEMA_PATH
from kronos_core.stream_types import StreamForecaster

T0 = datetime(2024, 6, 18, 1, 30, tzinfo=UTC)
Record = tuple[bytes | None, bytes | None]
MakeForecaster = Callable[[int], StreamForecaster]  # max_context -> the model of one daemon


def bar_record(symbol: str, when: datetime, price: float, **fields: Any) -> dict[str, Any]:
    """A valid bar closing at ``price`` (fields override)."""
    record: dict[str, Any] = {
        "symbol": symbol,
        "ts": when.isoformat().replace("+00:00", "Z"),
        "open": round(price * 0.999, 6),
        "high": round(price * 1.002, 6),
        "low": round(price * 0.997, 6),
        "close": price,
        "volume": 1000.0,
        "amount": round(1000.0 * price, 4),
    }
    record.update(fields)
    return record


def encode(record: dict[str, Any], key: str | None = "") -> Record:
    """(key, value) bytes; key "" means the record's symbol, None means no key."""
    k = record["symbol"] if key == "" else key
    return (None if k is None else k.encode()), json.dumps(record).encode()


def bar_series(
    symbol: str, n: int, start: datetime = T0, interval_s: float = 60.0, seed: int = 0
) -> list[Record]:
    """``n`` consecutive valid bars of a random walk."""
    rng = random.Random(f"{symbol}-{seed}")
    price = 10.0 + rng.random() * 90
    out = []
    for i in range(n):
        price *= math.exp(rng.gauss(0, 0.002))
        out.append(encode(bar_record(symbol, start + timedelta(seconds=interval_s * i), round(price, 4))))
    return out


def expected_ids(series: Mapping[str, Sequence[Record]], model_version: str) -> set[str]:
    """The forecast ids of every bar of ``series`` (symbol -> its records) under ``model_version``."""
    return {
        forecast_id(s, parse_bar(k, v).ts_ns, model_version) for s, recs in series.items() for k, v in recs
    }


def interleave(*series: Sequence[Record]) -> list[Record]:
    out: list[Record] = []
    for i in range(max(map(len, series))):
        out += [s[i] for s in series if i < len(s)]
    return out


async def produce(bootstrap: str, topic: str, records: Sequence[Record], headers: Any = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        acks = [await producer.send(topic, value=v, key=k, headers=headers) for k, v in records]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


async def read_topic(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0, settle_s: float = 0.5
) -> list[ConsumerRecord]:
    """Every message of ``topic`` once at least ``expected`` arrived (plus any within ``settle_s``)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        parts = await _partitions(consumer, topic)
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        out: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        settle_until: float | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                out += records
            if len(out) >= expected:
                settle_until = settle_until or time.monotonic() + settle_s
                if time.monotonic() >= settle_until:
                    break
        return out
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    for _ in range(100):
        numbers = consumer.partitions_for_topic(topic)
        if numbers:
            return [TopicPartition(topic, p) for p in sorted(numbers)]
        await consumer._client.force_metadata_update()  # noqa: SLF001
        await asyncio.sleep(0.05)
    raise AssertionError(f"topic {topic} has no partitions")


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        parts = await _partitions(consumer, topic)
        ends = await consumer.end_offsets(parts)
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {
        tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0
    }


async def wait_until(predicate: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.1)


async def wait_committed(bootstrap: str, group: str, topic: str, timeout_s: float = 30.0) -> dict[int, int]:
    """Wait until the group has committed the end of every non-empty partition of ``topic``."""
    ends = {p: o for p, o in (await end_offsets(bootstrap, topic)).items() if o > 0}

    async def done() -> bool:
        try:
            committed = await committed_offsets(bootstrap, group, topic)
        except (GroupCoordinatorNotAvailableError, NotCoordinatorForGroupError):
            return False  # a fresh broker: its group coordinator is still starting; ask again
        return all(committed.get(p) == o for p, o in ends.items())

    await wait_until(done, timeout_s, f"group {group} to commit {ends}")
    return ends


class Topics:
    def __init__(self, input: str, output: str, dead: str) -> None:
        self.input = input
        self.output = output
        self.dead = dead


def daemon_settings(
    bootstrap: str, redis_url: str, prefix: str, group: str, topics: Topics, **over: Any
) -> Settings:
    """Fast test settings; ``over`` sets top-level fields, or groups as dicts (merged)."""
    groups: dict[str, dict[str, Any]] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "input_topic": topics.input,
            "output_topic": topics.output,
            "dead_letter_topic": topics.dead,
            "group_id": group,
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 500,
        },
        "redis": {"url": redis_url, "key_prefix": prefix.rstrip(":")},
        "model": {"max_context": 64, "horizon": 4, "sample_count": 4},
        "batch": {"max_batch_size": 64, "max_wait_ms": 50},
    }
    top: dict[str, Any] = {"http_port": None, "graceful_shutdown_s": 10.0, "log_format": "json"}
    for name, value in over.items():
        if name in groups:
            groups[name].update(value)
        else:
            top[name] = value
    return load_settings(**groups, **top)


def memory_settings(**over: object) -> Settings:
    """In-memory daemons compare exact numbers across runs: the guarded distribution, whose state would
    start afresh in each run's memory score store, is off unless a test turns it on."""
    over.setdefault("scoring", {"calibrate": False})
    return load_settings(
        kafka={"input_topic": "in", "output_topic": "out", "dead_letter_topic": "dlq", "group_id": "g"},
        model={"max_context": 16, "horizon": 3},
        batch={"max_batch_size": 1000, "max_wait_ms": 10},
        http_port=None,
        **over,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as KRONOS_* environment variables (for a daemon in a subprocess)."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        if isinstance(value, dict):
            for sub, v in value.items():
                if v is not None:
                    env[f"KRONOS_{name.upper()}__{sub.upper()}"] = (
                        ",".join(map(str, v)) if isinstance(v, list) else str(v)
                    )
        elif value is not None:
            env[f"KRONOS_{name.upper()}"] = str(value)
    if settings.http_port is None:  # an unset variable means the default port, 8080: any free one instead
        env["KRONOS_HTTP_PORT"] = "0"
    return env


ROOT = Path(__file__).resolve().parents[2]


def spawn_daemon(
    settings: Settings, model_env: dict[str, str], log: Path, delay_ms: int = 0
) -> subprocess.Popen[bytes]:
    """``python -m daemon run`` in a subprocess with ``settings`` (and the model of ``model_env``), its
    output appended to ``log``; ``delay_ms`` slows the stub or test engine's every batch."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRONOS_")}
    env.update(settings_env(settings))
    env.update(model_env)
    env["STUB_FORECASTER_DELAY_MS"] = str(delay_ms)
    return launch_daemon(env, log)


def launch_daemon(
    env: Mapping[str, str], log: Path, *, python_args: Sequence[str] = (), append: bool = True
) -> subprocess.Popen[bytes]:
    """The one way the tests, the benchmarks and the chaos run start a daemon process:
    ``python [python_args] -m daemon run`` from the repository root with exactly ``env`` (plus the
    repository root on ``PYTHONPATH``, so ``tests.support.stub_forecaster`` loads), its output written to
    ``log`` (appended, or from the start with ``append=False``)."""
    full = dict(env)
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full.get("PYTHONPATH")]))
    with log.open("ab" if append else "wb") as out:
        return subprocess.Popen(
            [sys.executable, *python_args, "-m", "daemon", "run"],
            cwd=ROOT,
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def stop_daemon(proc: subprocess.Popen[bytes], sig: int) -> int:
    """Send ``sig`` to a daemon process (unless it has ended) and wait for its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
    return await asyncio.to_thread(proc.wait, 30)


@contextlib.asynccontextmanager
async def running_daemon(
    settings: Settings, forecaster: StreamForecaster | None, **parts: Any
) -> AsyncIterator[Daemon]:
    """A started daemon serving in a task; closed gracefully on exit (serving errors re-raised).
    ``forecaster`` None: built from the settings (e.g. KRONOS_MODEL__REGISTRY's champion)."""
    daemon = Daemon(settings, forecaster=forecaster, **parts)
    await daemon.start()
    task = asyncio.create_task(daemon.serve())
    try:
        yield daemon
    finally:
        await daemon.close()
        await task


def forecasts(records: Sequence[ConsumerRecord]) -> list[dict[str, Any]]:
    """The forecasts' JSON, each validated against kronos_contract/forecast.schema.json."""
    out = [json.loads(r.value) for r in records]
    for record in out:
        _FORECAST_VALIDATOR.validate(record)
    return out


_FORECAST_VALIDATOR = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))


def metric(daemon: Daemon, name: str, **labels: str) -> float:
    value = daemon.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value
