"""Planning a fetch: which bars are new, how they run in rounds, what to commit (pure functions).

A bar is new when its ts is after its symbol's last processed one (:func:`skip_reason`); a fetch's new
bars run in rounds, the k-th bar of every symbol in round k (:func:`plan_rounds`); exactly-once cuts a
fetch into segments, one transaction each (:func:`eos_segments`); what is committed once a fetch, or
part of it, is done: :func:`commit_offsets`.
"""

from __future__ import annotations

from collections.abc import Sequence

from daemon.io.bus import InMessage, Partition
from daemon.io.messages import Bar

Item = tuple[InMessage, Bar]
Letter = tuple[InMessage, str, str]  # a message for the dead-letter topic: message, reason, kind


def next_offsets(batch: Sequence[InMessage]) -> dict[Partition, int]:
    """Per partition, the offset to commit once the whole batch is done: last offset + 1."""
    offsets: dict[Partition, int] = {}
    for m in batch:
        offsets[m.tp] = max(offsets.get(m.tp, 0), m.offset + 1)
    return offsets


def commit_offsets(batch: Sequence[InMessage], not_done: Sequence[InMessage]) -> dict[Partition, int]:
    """Per partition, the offset to commit: past the whole batch, or at its first message not done.

    Rounds run across symbols, so when a batch is cut short the done messages of a partition need not
    be a prefix; committing up to the first one not done replays the rest, and the bars among them
    already stored are skipped as duplicates.
    """
    offsets = next_offsets(batch)
    for m in not_done:
        offsets[m.tp] = min(offsets[m.tp], m.offset)
    return offsets


def eos_segments(batch: Sequence[InMessage]) -> list[list[InMessage]]:
    """Exactly-once: cut a fetch into segments in which no key repeats and each partition's messages
    follow on from the previous segment's. A segment is then one round, one transaction whose input
    offsets cover every message it sent a forecast or dead letter for, and which holds at most one
    bar per symbol (so after an abort, Redis's latest forecast of a symbol is the aborted one)."""
    segments: list[list[InMessage]] = []
    cursor: dict[Partition, int] = {}  # per partition: index of the segment its next message joins
    keys: list[set[bytes | None]] = []
    for m in batch:
        k = cursor.get(m.tp, 0)
        while k < len(segments) and m.key is not None and m.key in keys[k]:  # no key: dead-lettered
            k += 1
        if k == len(segments):
            segments.append([])
            keys.append(set())
        segments[k].append(m)
        keys[k].add(m.key)
        cursor[m.tp] = k
    return segments


Source = tuple[str, int, int]  # topic, partition, offset of the message that carried a bar


def skip_reason(msg: InMessage, ts_ns: int, last_ts: int | None, last_source: Source | None) -> str | None:
    """Why a bar is not new, or None when it is: its ts must be after the symbol's last processed ts.

    ``replayed``: the message is the one that carried the last processed bar, or an earlier one of the
    same partition (offsets went back: a crash before the commit, a rebalance, a reset), so it was
    processed already. Otherwise ``duplicate`` (same ts) or ``out_of_order`` (earlier ts): a new
    message whose bar is not newer.
    """
    if last_ts is None or ts_ns > last_ts:
        return None
    if last_source is not None and last_source[:2] == (msg.topic, msg.partition) and msg.offset <= last_source[2]:
        return "replayed"
    return "duplicate" if ts_ns == last_ts else "out_of_order"


def plan_rounds(
    items: Sequence[Item],
    last_seen: dict[str, int | None],
    last_source: dict[str, Source | None] | None = None,
) -> tuple[list[list[Item]], list[tuple[Item, str]]]:
    """Split a fetch's valid bars into rounds and skipped bars.

    A bar whose ts is not after the symbol's last seen ts (``last_seen``, then earlier bars of this
    fetch) is skipped by :func:`skip_reason` (``last_source``: the message of each symbol's last
    processed bar). Round k holds the k-th remaining bar of every symbol, so each symbol's bars are
    forecast in order.
    """
    last = dict(last_seen)
    sources: dict[str, Source | None] = dict(last_source or {})
    queues: dict[str, list[Item]] = {}
    skipped: list[tuple[Item, str]] = []
    for item in items:
        msg, bar = item
        reason = skip_reason(msg, bar.ts_ns, last.get(bar.symbol), sources.get(bar.symbol))
        if reason is not None:
            skipped.append((item, reason))
            continue
        last[bar.symbol] = bar.ts_ns
        sources[bar.symbol] = (msg.topic, msg.partition, msg.offset)
        queues.setdefault(bar.symbol, []).append(item)
    depth = max((len(q) for q in queues.values()), default=0)
    rounds = [[q[k] for q in queues.values() if len(q) > k] for k in range(depth)]
    return rounds, skipped



def watermarks(offsets: dict[Partition, int]) -> dict[str, int]:
    """The store's partition watermarks for committed ``offsets``: the offset of the last message done."""
    return {f"{p.topic}/{p.partition}": off - 1 for p, off in offsets.items() if off > 0}


__all__ = [
    "Item", "Letter", "Source", "commit_offsets", "eos_segments", "next_offsets", "plan_rounds", "skip_reason",
    "watermarks",
]  # fmt: skip
