"""Publishing bars to the input topic: the synthetic clock, encoding, all at once or paced."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer

from daemon.io.feeds import FeedBar
from daemon.io.messages import bar_to_json, format_ts, to_ns

from .collector import Key

BAR_START = datetime(2024, 1, 2, tzinfo=UTC)  # synthetic clock start; the same bars in every mode
BAR_INTERVAL_S = 60.0


def key_of(symbol: str, ts: datetime) -> Key:
    return symbol, format_ts(to_ns(ts))


def encode_bars(bars: list[FeedBar]) -> list[tuple[bytes, bytes]]:
    """Each bar's Kafka key and value (the JSON the daemon reads)."""
    return [(s.encode(), bar_to_json(s, ts, v)) for s, ts, v in bars]


async def publish_encoded(producer: AIOKafkaProducer, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """Send already-encoded records as fast as the producer takes them; returns once every send is
    acknowledged."""
    acks = [await producer.send(topic, key=k, value=v) for k, v in records]
    await asyncio.gather(*acks)


async def publish_fast(producer: AIOKafkaProducer, topic: str, bars: list[FeedBar]) -> list[Key]:
    """Send all, as fast as the producer takes them; returns once every send is acknowledged."""
    await publish_encoded(producer, topic, encode_bars(bars))
    return [key_of(s, ts) for s, ts, _ in bars]


async def publish_paced(
    producer: AIOKafkaProducer, topic: str, bars: Iterator[FeedBar], rate: float, duration_s: float
) -> dict[Key, float]:
    """Bar n is sent at start + n / rate (late sends catch up); returns each bar's send time."""
    sent: dict[Key, float] = {}
    acks = []
    began = time.monotonic()
    for n in itertools.count():
        due = began + n / rate
        if due - began >= duration_s:
            break
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        symbol, ts, values = next(bars)
        sent[key_of(symbol, ts)] = time.time()
        acks.append(await producer.send(topic, key=symbol.encode(), value=bar_to_json(symbol, ts, values)))
        if len(acks) >= 1000:
            await asyncio.gather(*acks)
            acks = []
    await asyncio.gather(*acks)
    rest = began + duration_s - time.monotonic()
    if rest > 0:
        await asyncio.sleep(rest)  # the phase lasts duration_s, whatever the last send took
    return sent


def round_robin(bars: Iterator[FeedBar], count: int) -> list[FeedBar]:
    return list(itertools.islice(bars, count))
