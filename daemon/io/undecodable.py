"""Record batches the consumer cannot decode: found, isolated and stepped over, never waited on.

aiokafka decodes a partition's record batches lazily, as ``getmany`` hands records out. A batch it
cannot decode (a codec whose library is missing or unknown, a CRC mismatch, a malformed record)
raises from ``getmany`` with nothing to tell which partition or offset, and the next fetch of that
partition meets the same batch again: the partition would never advance. So on such an error the
partitions with records pending are fetched once more, raw (:func:`fetch_raw`), and cut at the
first batch that does not decode (:func:`split_at_undecodable`): the records before it are handed
out as usual, the batch itself becomes a message whose ``error`` says why (the loop dead-letters it
with the reason and its offsets), and the consumer seeks past it.

When the batch itself is sound but for its CRC, its records can still be read: each then becomes a
message of its own (original key, value and headers), so every record is dead-lettered alone.
Otherwise the whole batch, raw bytes as fetched, is one dead letter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.consumer.fetcher import READ_COMMITTED, PartitionRecords
from aiokafka.errors import CorruptRecordException, KafkaError, UnsupportedCodecError, for_code
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords

from daemon.io.bus import InMessage

# aiokafka's default max_partition_fetch_bytes: the raw fetch sees the batches the consumer saw
RAW_FETCH_BYTES = 1024 * 1024
CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
_LOG_OVERHEAD = 12  # base offset (int64) and length (int32) precede every batch, whatever its format


def is_decode_error(exc: BaseException) -> bool:
    """An error from decoding fetched records (not from the connection): a codec, a CRC, a record that
    does not parse. aiokafka raises its own two; a codec library or the parser may raise anything."""
    return isinstance(exc, UnsupportedCodecError | CorruptRecordException) or (
        isinstance(exc, Exception) and not isinstance(exc, KafkaError)
    )


@dataclass(frozen=True)
class Undecodable:
    """The first batch of a partition that does not decode, from ``first_offset`` (inclusive) to
    ``next_offset`` (exclusive): its reason, raw bytes, codec, and its records when only its CRC failed."""

    tp: TopicPartition
    first_offset: int
    next_offset: int
    reason: str
    codec: str
    raw: bytes
    timestamp_ms: int
    records: tuple[Any, ...] = ()  # ConsumerRecords read with the CRC check off

    def stand_ins(self) -> list[InMessage]:
        """What the consumer hands out instead, as messages whose ``error`` says why (the loop
        dead-letters them): one per record when they could be isolated, else one for the batch, with
        the raw batch as its value and its last offset as its own (committing past it steps over it)."""
        t, p = self.tp.topic, self.tp.partition
        if self.records:
            why = f"{self.reason}; the record is not used"
            return [
                InMessage(t, p, r.offset, r.key, r.value, r.timestamp, list(r.headers or ()), why)
                for r in self.records
            ]
        headers = [
            ("source_first_offset", str(self.first_offset).encode()),
            ("source_last_offset", str(self.next_offset - 1).encode()),
            ("codec", self.codec.encode()),
        ]
        why = f"{self.reason}; the value is the raw record batch, none of its records is used"
        return [InMessage(t, p, self.next_offset - 1, None, self.raw, self.timestamp_ms, headers, why)]


def _header(chunk: bytes) -> tuple[int, int, str, int]:
    """First offset, next offset, codec name and max timestamp of one raw batch (v2; older formats
    carry one offset per wrapper message and no batch timestamp)."""
    base = int.from_bytes(chunk[0:8], "big", signed=True)
    magic = chunk[16] if len(chunk) > 16 else -1
    if magic >= 2 and len(chunk) >= 43:
        attributes = int.from_bytes(chunk[21:23], "big", signed=True)
        last_delta = int.from_bytes(chunk[23:27], "big", signed=True)
        max_ts = int.from_bytes(chunk[35:43], "big", signed=True)
        return base, base + last_delta + 1, CODECS.get(attributes & 0x07, f"unknown ({attributes & 0x07})"), max_ts
    codec = chunk[17] & 0x07 if magic in (0, 1) and len(chunk) > 17 else -1  # v0/v1: attributes follow magic
    return base, base + 1, CODECS.get(codec, f"unknown ({codec})"), -1


def batches(data: bytes) -> list[tuple[int, int, str, bytes]]:
    """The whole record batches of fetched bytes: first offset, next offset, codec name, raw bytes."""
    out = []
    pos = 0
    while pos + _LOG_OVERHEAD <= len(data):
        length = int.from_bytes(data[pos + 8 : pos + 12], "big", signed=True)
        end = pos + _LOG_OVERHEAD + max(0, length)
        if end > len(data):
            break  # a partial batch at the end of a fetch
        chunk = bytes(data[pos:end])
        first, next_offset, codec, _ = _header(chunk)
        out.append((first, next_offset, codec, chunk))
        pos = end
    return out


def _records(tp: TopicPartition, data: bytes, aborted: Any, position: int, check_crcs: bool) -> list[Any]:
    """The records aiokafka's own reader hands out from ``position``: aborted transactions and
    control batches left out (read_committed). Raises what decoding raises."""
    reader = PartitionRecords(tp, MemoryRecords(data), aborted, position, None, None, check_crcs, READ_COMMITTED)
    return list(reader)


def split_at_undecodable(
    tp: TopicPartition, data: bytes, aborted: Any, position: int
) -> tuple[list[Any], Undecodable | None]:
    """Cut a partition's fetched bytes (from ``position``) at the first batch that does not decode:
    the records before it, and that batch (None when every batch decodes)."""
    reader = PartitionRecords(tp, MemoryRecords(data), aborted, position, None, None, True, READ_COMMITTED)
    good: list[Any] = []
    try:
        for record in reader:
            good.append(record)
    except Exception as exc:  # noqa: BLE001 (a codec library or the parser may raise anything)
        error: Exception = exc
    else:
        return good, None
    at = reader.next_fetch_offset  # past the last batch read whole: the failing batch comes next
    for first, next_offset, codec, chunk in batches(data):
        if next_offset <= at:
            continue
        max_ts = _header(chunk)[3]
        first = max(first, at)
        reason = (
            f"record batch at offsets {first}..{next_offset - 1} of {tp.topic}/{tp.partition} "
            f"(compression {codec}) could not be decoded: {type(error).__name__}: {error}"
        )
        isolated: list[Any] = []
        if isinstance(error, CorruptRecordException):  # a CRC mismatch: perhaps only the checksum
            try:
                isolated = [r for r in _records(tp, chunk, aborted, first, False) if r.offset >= first]
            except Exception:  # noqa: BLE001 (the batch is damaged beyond its CRC)
                isolated = []
        return good, Undecodable(tp, first, next_offset, reason, codec, chunk, max_ts, tuple(isolated))
    return good, None  # the error came from no batch this fetch returned


async def fetch_raw(consumer: AIOKafkaConsumer, tp: TopicPartition, position: int) -> tuple[bytes, Any]:
    """One fetch of ``tp`` from ``position`` from the partition's leader, undecoded, through the
    consumer's own connections: the record bytes and the aborted transactions (read_committed)."""
    client = consumer._client  # noqa: SLF001 (aiokafka has no public raw fetch)
    node = client.cluster.leader_for_partition(tp)
    if node is None or node < 0:
        raise KafkaError(f"no leader known for {tp.topic}/{tp.partition}")
    request = FetchRequest(0, 1, RAW_FETCH_BYTES, READ_COMMITTED, [(tp.topic, [(tp.partition, position, RAW_FETCH_BYTES)])])
    response = await client.send(node, request)
    for topic, partitions in response.topics:
        for partition, error_code, _highwater, *part_data in partitions:
            if (topic, partition) != (tp.topic, tp.partition):
                continue
            if error_code:
                raise for_code(error_code)(f"fetching {tp.topic}/{tp.partition} at {position} raw")
            if response.API_VERSION >= 11:
                aborted = part_data[2]
            elif response.API_VERSION >= 4:
                aborted = part_data[-2]
            else:
                aborted = None
            return bytes(part_data[-1] or b""), aborted
    raise KafkaError(f"the broker's fetch response has no {tp.topic}/{tp.partition}")


async def locate(
    consumer: AIOKafkaConsumer, tp: TopicPartition, position: int
) -> tuple[list[Any], Undecodable] | None:
    """The records of ``tp`` from ``position`` up to its first undecodable batch, and that batch;
    None when what the broker holds there decodes."""
    data, aborted = await fetch_raw(consumer, tp, position)
    good, bad = split_at_undecodable(tp, data, aborted, position)
    return None if bad is None else (good, bad)
