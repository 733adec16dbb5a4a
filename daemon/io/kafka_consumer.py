"""The Kafka consumer (aiokafka): a consumer-group member that commits by hand.

The consumer never auto-commits: the loop commits a fetch's offsets only after every forecast of that
fetch is acknowledged by Kafka and written to the state store. Rebalances go to the loop's
:class:`~daemon.io.bus.RebalanceHandler`: ``on_revoked`` runs before the group re-forms, while this
member's generation is still valid, so the loop can finish the batch in flight and commit it there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from daemon.errors import BusError, BusUnavailable, CommitRefused
from daemon.io.bus import InMessage, InputBus, Partition, RebalanceHandler
from daemon.io.kafka import bus_error, connection_config, start_client
from daemon.io.undecodable import is_decode_error, locate
from daemon.settings import KafkaSettings

log = structlog.get_logger("kronos.kafka")


def _partition(tp: TopicPartition) -> Partition:
    return Partition(tp.topic, tp.partition)


def _message(r: Any) -> InMessage:
    """A consumed record as an InMessage (a stand-in for an undecodable batch is one already)."""
    if type(r) is InMessage:
        return r
    return InMessage(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp, list(r.headers or ()))


def _position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The consumer's position in ``tp`` (next offset to fetch) without waiting; None when unknown.
    (``position()`` is a coroutine that waits for a valid position; readiness must not wait.)"""
    try:
        state = consumer._subscription.subscription.assignment.state_value(tp)  # noqa: SLF001
        return int(state.position) if state is not None and state.has_valid_position else None
    except (AttributeError, TypeError):
        return None


async def getmany_decodable(
    consumer: AIOKafkaConsumer,
    tps: Sequence[TopicPartition],
    timeout_ms: int,
    max_records: int,
    on_skip: Callable[[TopicPartition], None] | None = None,
) -> dict[TopicPartition, list[Any]]:
    """``consumer.getmany(*tps, ...)``, stepping over record batches that cannot be decoded.

    When records do not decode, each candidate partition (those of ``tps``, or all assigned, with
    records left to read) is fetched raw at its position and cut at its first undecodable batch
    (:mod:`daemon.io.undecodable`): what precedes the batch is returned with an :class:`InMessage`
    standing in for the batch (its ``error`` says why), and the consumer seeks past it. A failure no
    batch explains raises :class:`BusError` (the caller retries).

    Keep ``max_records`` at 1 when ``tps`` holds several partitions: aiokafka drains partitions in
    turn and, when one of them fails, the records already drained from the others in that call are
    lost while their positions have moved past them. One record per call drains a single partition.
    """
    try:
        return await consumer.getmany(*tps, timeout_ms=timeout_ms, max_records=max_records)
    except Exception as exc:
        if not is_decode_error(exc):
            raise
        error = exc
    found: dict[TopicPartition, list[Any]] = {}
    for tp in sorted(tps or consumer.assignment(), key=lambda t: (t.topic, t.partition)):
        position = _position(consumer, tp)
        high = consumer.highwater(tp)
        if position is None or (high is not None and high <= position):
            continue  # nothing left to read there: not the partition that failed
        try:
            located = await locate(consumer, tp, position)
        except (KafkaError, OSError) as exc:
            log.warning("could not fetch a partition raw to find an undecodable batch", topic=tp.topic,
                        partition=tp.partition, offset=position, error=repr(exc))  # fmt: skip
            continue
        if located is None:
            continue
        good, bad = located
        consumer.seek(tp, bad.next_offset)
        log.error(
            "record batch cannot be decoded: skipped past it and dead-lettered", topic=tp.topic,
            partition=tp.partition, first_offset=bad.first_offset, last_offset=bad.next_offset - 1,
            codec=bad.codec, records_isolated=len(bad.records), reason=bad.reason,
        )  # fmt: skip
        if on_skip is not None:
            on_skip(tp)
        found[tp] = good + bad.stand_ins()
    if not found:
        raise BusError(
            f"fetched records could not be decoded ({error!r}), and no partition's raw fetch shows an "
            "undecodable batch at its position; retrying"
        ) from error
    return found


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, handler: RebalanceHandler, owner: KafkaInput) -> None:
        self._handler = handler
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        parts = {_partition(tp) for tp in revoked}
        await self._handler.on_revoked(parts)
        self._owner.forget(parts)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._handler.on_assigned({_partition(tp) for tp in assigned})


class KafkaInput(InputBus):
    def __init__(self, settings: KafkaSettings, topic: str | None = None) -> None:
        self._settings = settings
        self._topic = topic or settings.input_topic
        self._consumer: AIOKafkaConsumer | None = None
        self._positions: dict[Partition, int] = {}
        self._turn = 0  # which partition a fetch's fair draw starts with

    async def start(self, handler: RebalanceHandler) -> None:
        s = self._settings
        self._consumer = AIOKafkaConsumer(
            **connection_config(s),
            group_id=s.group_id,
            group_instance_id=s.group_instance_id,
            enable_auto_commit=False,
            auto_offset_reset=s.auto_offset_reset,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_poll_interval_ms=s.max_poll_interval_ms,
            isolation_level="read_committed",
        )
        self._consumer.subscribe([self._topic], listener=_Listener(handler, self))
        await start_client(self._consumer, "consumer", s)

    def _require(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise BusError("the Kafka consumer is not started; call start() first")
        return self._consumer

    async def fetch(self, max_records: int, timeout_ms: int) -> list[InMessage]:
        consumer = self._require()
        try:
            batches = await self._draw_fairly(consumer, max_records, timeout_ms)
        except KafkaError as exc:
            raise bus_error(f"fetching from {self._topic!r} failed: {exc!r}", exc) from exc
        out: list[InMessage] = []
        for tp, records in batches.items():
            out += map(_message, records)
            if records:
                self._positions[_partition(tp)] = records[-1].offset + 1
        return out

    def _skipped(self, tp: TopicPartition) -> None:
        if self.on_undecodable is not None:
            self.on_undecodable(_partition(tp))

    async def _take(
        self, consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition], timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[Any]]:
        return await getmany_decodable(consumer, tps, timeout_ms, max_records, self._skipped)

    async def _draw_fairly(
        self, consumer: AIOKafkaConsumer, max_records: int, timeout_ms: int
    ) -> dict[TopicPartition, list[Any]]:
        """Up to ``max_records`` records drawn from every assigned partition in turn.

        aiokafka's ``getmany(max_records=n)`` empties the first buffered partitions before it looks at
        the next, so a backlog on a few partitions crowds the others out of the batch. Here the first
        call waits (up to ``timeout_ms``) for a first record; then each pass fills every partition up
        to an equal level from its buffered records (offset order kept per partition), the emptiest
        first, until the batch is full or nothing more is buffered; partitions that run dry leave
        their room to the others. Ties start one partition later each fetch. Every call drains one
        partition, so a batch that fails to decode loses no other partition's records
        (:func:`getmany_decodable`).
        """
        parts = sorted(consumer.assignment(), key=lambda tp: tp.partition)
        drawn: dict[TopicPartition, list[Any]] = {}

        def take(got: dict[TopicPartition, list[Any]]) -> int:
            for tp, records in got.items():
                drawn.setdefault(tp, []).extend(records)
            return sum(len(r) for r in got.values())

        # The wait for a first record drains one record (see getmany_decodable); the fair draw below
        # fills every partition from there.
        room = max_records - take(await self._take(consumer, (), timeout_ms, 1))
        if not drawn or not parts:
            return drawn
        self._turn = (self._turn + 1) % len(parts)
        parts = parts[self._turn :] + parts[: self._turn]
        active = list(parts)  # partitions that may still have buffered records
        while room > 0 and active:
            dry_total = sum(len(drawn.get(tp, ())) for tp in parts if tp not in active)
            # each active partition's fair total: the even share, then one more each (emptiest first)
            # for the remainder, once every active partition holds its share
            level = (max_records - dry_total) // len(active)
            if all(len(drawn.get(tp, ())) >= level for tp in active):
                level += 1
            for tp in sorted(active, key=lambda tp: len(drawn.get(tp, ()))):  # stable: ties keep the turn
                want = min(room, level - len(drawn.get(tp, ())))
                if want > 0:
                    try:
                        got = take(await self._take(consumer, (tp,), 0, want))
                    except IllegalStateError:  # revoked meanwhile: the loop drops its records anyway
                        return drawn
                    except (KafkaError, BusError) as exc:
                        # The records drawn so far have moved their partitions' positions on: hand
                        # them out; the failing partition fails again at the next fetch.
                        log.warning("drawing from a partition failed; returning what was drawn",
                                    topic=tp.topic, partition=tp.partition, error=repr(exc))  # fmt: skip
                        return drawn
                    room -= got
                    if got < want:
                        active.remove(tp)
        return drawn

    async def commit(self, offsets: dict[Partition, int]) -> None:
        if not offsets:
            return
        consumer = self._require()
        try:
            await consumer.commit({TopicPartition(p.topic, p.partition): off for p, off in offsets.items()})
        except (CommitFailedError, IllegalStateError) as exc:
            raise CommitRefused(
                f"committing offsets {dict(offsets)} was refused after a rebalance: {exc}"
            ) from exc
        except KafkaError as exc:
            raise bus_error(f"committing offsets {dict(offsets)} failed: {exc!r}", exc) from exc

    async def probe(self, timeout_s: float = 3.0) -> None:
        """Raise BusUnavailable unless a broker answers a metadata request within ``timeout_s``."""
        consumer = self._require()
        try:
            async with asyncio.timeout(timeout_s):
                await consumer._client.fetch_all_metadata()  # noqa: SLF001 (no public equivalent)
        except (KafkaError, TimeoutError, OSError) as exc:
            raise BusUnavailable(f"no Kafka broker answers at {self._settings.bootstrap_servers}: {exc!r}") from exc

    async def read_history(
        self,
        partition: Partition,
        end_offset: int,
        since_ms: int | None,
        sink: Callable[[list[InMessage]], None],
    ) -> int:
        """A consumer outside the group, assigned the one partition: seek by time (offsets_for_times)
        or to the beginning, read up to ``end_offset``."""
        s = self._settings
        tp = TopicPartition(partition.topic, partition.partition)
        reader = AIOKafkaConsumer(
            **connection_config(s), enable_auto_commit=False, isolation_level="read_committed"
        )
        await start_client(reader, "history reader", s)
        try:
            reader.assign([tp])
            first = (await reader.beginning_offsets([tp]))[tp]
            start = first
            if since_ms is not None:
                found = (await reader.offsets_for_times({tp: since_ms}))[tp]
                start = max(first, found.offset if found is not None else end_offset)
            if start >= end_offset:
                return start
            reader.seek(tp, start)
            stalled_since = time.monotonic()
            while (position := await reader.position(tp)) < end_offset:
                if time.monotonic() - stalled_since > s.request_timeout_ms / 1e3:
                    raise BusUnavailable(f"reading the history of {partition} stalled at offset {position}")
                # an undecodable batch was dead-lettered when first consumed: here it is only skipped
                batch = await getmany_decodable(reader, (tp,), 1000, 5000)
                if batch.get(tp):
                    stalled_since = time.monotonic()
                sink([_message(r) for r in batch.get(tp, []) if r.offset < end_offset])
            return start
        except KafkaError as exc:
            raise bus_error(f"reading the history of {partition} failed: {exc!r}", exc) from exc
        finally:
            await reader.stop()

    def assignment(self) -> set[Partition]:
        if self._consumer is None:
            return set()
        return {_partition(tp) for tp in self._consumer.assignment()}

    def forget(self, partitions: set[Partition]) -> None:
        for p in partitions:
            self._positions.pop(p, None)

    def lag(self) -> dict[Partition, int]:
        return {p: lag for p, (_, lag) in self.progress().items()}

    def progress(self) -> dict[Partition, tuple[int, int]]:
        """Position and lag per partition: the position is past the last record handed out, or the
        consumer's own when further (a transaction's commit marker after the last record)."""
        if self._consumer is None:
            return {}
        out = {}
        for tp in self._consumer.assignment():
            part = _partition(tp)
            high = self._consumer.highwater(tp)
            known = [p for p in (self._positions.get(part), _position(self._consumer, tp)) if p is not None]
            if high is not None and known:
                pos = max(known)
                out[part] = (pos, max(0, high - pos))
        return out

    async def stop(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            try:
                await consumer.stop()
            except KafkaError as exc:
                raise BusError(f"closing the Kafka consumer failed: {exc}") from exc
