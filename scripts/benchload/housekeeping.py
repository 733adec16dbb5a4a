"""Kafka and Redis housekeeping of a run: its topics (created, led, lag, deleted) and its Redis keys."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from .process import Run


async def group_lag(admin: AIOKafkaAdminClient, probe: AIOKafkaConsumer, run: Run) -> int:
    """Messages of the input topic not yet committed by the daemon's group."""
    parts = [TopicPartition(run.input, p) for p in range(run.partitions)]
    ends = await probe.end_offsets(parts)
    committed = await admin.list_consumer_group_offsets(run.group)
    lag = 0
    for tp in parts:
        meta = committed.get(tp)
        done = meta.offset if meta is not None and meta.offset >= 0 else 0
        lag += max(0, ends[tp] - done)
    return lag


async def create_topics(admin: AIOKafkaAdminClient, run: Run) -> None:
    await admin.create_topics(
        [
            NewTopic(run.input, num_partitions=run.partitions, replication_factor=1),
            NewTopic(run.output, num_partitions=run.partitions, replication_factor=1),
            NewTopic(run.dead, num_partitions=1, replication_factor=1),
        ]
    )


async def wait_for_leaders(probe: AIOKafkaConsumer, run: Run, timeout_s: float = 15.0) -> None:
    """Until the new topics' partitions all show up in the metadata (a leader is elected)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await probe._client.force_metadata_update()  # noqa: SLF001
        cluster = probe._client.cluster  # noqa: SLF001
        ready = True
        for topic in (run.input, run.output):
            parts = cluster.partitions_for_topic(topic) or set()
            leaders = [cluster.leader_for_partition(TopicPartition(topic, p)) for p in parts]
            ready = ready and len(parts) == run.partitions and all(x is not None and x >= 0 for x in leaders)
        if ready:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the topics of {run.group} have no leaders after {timeout_s} s")


async def delete_topics(admin: AIOKafkaAdminClient, run: Run) -> None:
    names = {run.input, run.output, run.dead}
    present = names & set(await admin.list_topics())
    if not present:
        return
    await admin.delete_topics(sorted(present))
    deadline = time.monotonic() + 15
    while names & set(await admin.list_topics()) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


async def delete_redis_keys(redis_url: str, prefix: str) -> int:
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i : i + 500])
        return len(keys)
    finally:
        await client.aclose()
