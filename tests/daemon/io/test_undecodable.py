"""Cutting a partition's fetched bytes at the first record batch that does not decode (pure logic, on
record batches built with aiokafka's own builder and then damaged; a broker refuses such batches on
produce, so the end-to-end test in tests/scenarios/test_codecs.py uses a codec whose library is missing)."""

from __future__ import annotations

from aiokafka import TopicPartition
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c

from daemon.io.undecodable import split_at_undecodable

TP = TopicPartition("bars", 0)
_CRC_AT, _ATTRIBUTES_AT = 17, 21


def batch(base: int, values: list[bytes], codec: int = 0) -> bytearray:
    builder = DefaultRecordBatchBuilder(2, codec, 0, -1, -1, -1, 1 << 20)
    for i, value in enumerate(values):
        builder.append(i, timestamp=1_700_000_000_000 + i, key=b"K", value=value, headers=[("h", b"v")])
    raw = bytearray(builder.build())
    raw[0:8] = base.to_bytes(8, "big")  # the broker assigns the base offset (outside the CRC)
    return raw


def fix_crc(raw: bytearray) -> bytearray:
    raw[_CRC_AT:_ATTRIBUTES_AT] = calc_crc32c(bytes(raw[_ATTRIBUTES_AT:])).to_bytes(4, "big")
    return raw


def test_every_batch_decodes_nothing_is_cut() -> None:
    data = bytes(batch(0, [b"a", b"b"]) + batch(2, [b"c"]))
    good, bad = split_at_undecodable(TP, data, None, 0)
    assert [r.value for r in good] == [b"a", b"b", b"c"]
    assert bad is None


def test_a_batch_with_a_wrong_crc_is_cut_and_its_records_are_isolated() -> None:
    damaged = batch(3, [b"x1", b"x2"])
    damaged[-6] ^= 0x01  # the last record's value x2 -> x3: it still parses, the CRC no longer matches
    data = bytes(batch(0, [b"a", b"b", b"c"]) + damaged + batch(5, [b"d"]))

    good, bad = split_at_undecodable(TP, data, None, 0)

    assert [r.offset for r in good] == [0, 1, 2]  # what precedes the batch is handed out
    assert bad is not None
    assert (bad.first_offset, bad.next_offset, bad.codec) == (3, 5, "none")
    assert "CorruptRecordException" in bad.reason and "offsets 3..4 of bars/0" in bad.reason
    stand_ins = bad.stand_ins()
    assert [(s.offset, s.key, s.value) for s in stand_ins] == [(3, b"K", b"x1"), (4, b"K", b"x3")]
    assert all(s.headers == [("h", b"v")] and "the record is not used" in s.error for s in stand_ins)


def test_a_batch_with_an_unknown_codec_is_one_stand_in_carrying_the_raw_batch() -> None:
    unknown = batch(2, [b"z1", b"z2", b"z3"])
    unknown[_ATTRIBUTES_AT + 1] |= 0x05  # codec id 5: none that Kafka defines
    fix_crc(unknown)
    data = bytes(batch(0, [b"a", b"b"]) + unknown)

    good, bad = split_at_undecodable(TP, data, None, 1)  # from the middle of the first batch

    assert [r.offset for r in good] == [1]
    assert bad is not None
    assert (bad.first_offset, bad.next_offset) == (2, 5)
    assert bad.codec.startswith("unknown") and "UnsupportedCodecError" in bad.reason
    (stand_in,) = bad.stand_ins()
    assert (stand_in.offset, stand_in.key, stand_in.value) == (4, None, bytes(unknown))
    assert dict(stand_in.headers) == {
        "source_first_offset": b"2", "source_last_offset": b"4", "codec": bad.codec.encode()
    }


def test_the_first_batch_undecodable_leaves_nothing_before_it() -> None:
    garbled = batch(7, [b"q" * 200], codec=1)  # gzip
    body = len(garbled) - 20
    garbled[body : body + 8] = b"\x00" * 8  # the compressed stream no longer inflates
    fix_crc(garbled)
    good, bad = split_at_undecodable(TP, bytes(garbled), None, 7)
    assert good == []
    assert bad is not None and (bad.first_offset, bad.next_offset, bad.codec) == (7, 8, "gzip")
    assert len(bad.stand_ins()) == 1
