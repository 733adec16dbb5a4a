"""``kronos-stream archive``: the input topic's validated bars, kept as Parquet (the durable history).

A Kafka consumer in its own group (``KRONOS_ARCHIVE__GROUP_ID``, default ``kronos-archive``) reads the
input topic, validates each message with the daemon's :func:`~daemon.io.messages.parse_bar` and buffers the
bars per partition. A partition's buffer is *rolled* when it holds ``roll_max_rows`` bars or its first
bar is ``roll_max_age_s`` old: the bars go to :func:`kronos_contract.archive.write_bars` as
``<root>/date=D/<topic>-p<partition>-o<first>-<last>.parquet`` (one file per UTC date, written whole
and renamed or uploaded in one piece), and only then is offset ``last + 1`` committed.

Crash safety: a crash after a file is written but before its commit replays the partition from the
committed offset ``first``. The first bar after an assignment looks for archive files named
``...-p<partition>-o<first>-<last>`` and, if there are any, the next roll ends exactly at ``last``: the
same files are written again, byte for byte the same bars, under the same names. Without the lookup
readers would still de-duplicate on (symbol, ts); with it the archive holds no duplicate rows at all.

Invalid messages are counted by kind and logged (the daemon dead-letters them already); their offsets
are committed with the rest. SIGTERM/SIGINT: every buffer is rolled and committed, then the consumer
leaves the group. A failing write (an object store outage) is retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import structlog

from daemon.errors import BusError, CommitRefused, InvalidBar
from daemon.io.bus import InputBus, Partition
from daemon.io.feeds import csv_bars
from daemon.io.kafka_consumer import KafkaInput
from daemon.io.messages import Bar, bar_to_json, check_bar_time, format_ts, parse_bar
from daemon.settings import ArchiveSettings, KafkaSettings
from kronos_contract.archive import COLUMNS, offset_file_name, parse_offset_name, safe_name, write_bars
from kronos_contract.storage import open_fs

log = structlog.get_logger("kronos.archive")

_BACKOFF_MAX_S = 30.0


@dataclass
class _Buffer:
    """The bars of one partition not yet in the archive, and the offsets they span."""

    first: int
    last: int
    opened_at: float
    bars: list[Bar] = field(default_factory=list)
    invalid: int = 0


@dataclass
class ArchiveStats:
    consumed: int = 0
    archived: int = 0
    files: int = 0
    rolls: int = 0
    rewrites: int = 0  # rolls that rewrote the files of a range found uncommitted after a crash
    write_failures: int = 0  # failed writes (each retried with backoff, unless stopping)
    invalid: Counter[str] = field(default_factory=Counter)
    committed: dict[tuple[str, int], int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "consumed": self.consumed,
            "archived": self.archived,
            "files": self.files,
            "rolls": self.rolls,
            "rewrites": self.rewrites,
            "invalid": dict(self.invalid),
        }


def bars_frame(bars: list[Bar]) -> pd.DataFrame:
    """A frame in the archive's columns from validated bars."""
    values = list(zip(*(bar.values for bar in bars), strict=True)) if bars else [()] * 6
    frame = pd.DataFrame(
        {
            "symbol": [bar.symbol for bar in bars],
            "ts": pd.to_datetime([bar.ts_ns for bar in bars], unit="ns", utc=True),
        }
    )
    for name, column in zip(COLUMNS[2:], values, strict=True):
        frame[name] = pd.Series(column, dtype="float64")
    return frame


class Archiver:
    """One archiver process: consume, buffer per partition, roll to Parquet, then commit.

    ``bus`` defaults to a Kafka consumer of ``settings.topic`` in the group ``settings.group_id``."""

    def __init__(
        self,
        kafka: KafkaSettings,
        settings: ArchiveSettings,
        bus: InputBus | None = None,
        max_future_s: float | None = 300.0,
    ) -> None:
        self.settings = settings
        self.max_future_s = max_future_s  # the daemon's KRONOS_MAX_FUTURE_S: the same bars are refused
        self.topic = settings.topic or kafka.input_topic
        self.stats = ArchiveStats()
        own = kafka.model_copy(update={"group_id": settings.group_id, "group_instance_id": None})
        self._bus = bus or KafkaInput(own, self.topic)
        self._bootstrap = kafka.bootstrap_servers
        self._buffers: dict[Partition, _Buffer] = {}
        self._recover_until: dict[Partition, int] = {}
        self._fresh: set[Partition] = set()  # assigned, first bar not seen yet
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._fs, self._root = open_fs(settings.root, settings.storage_options)

    # -- consumer ------------------------------------------------------------------------------------

    async def _start(self) -> bool:
        """Join the group, retrying with backoff while Kafka is unreachable; False if stopped first."""
        delay = 1.0
        while not self._stop.is_set():
            try:
                await self._bus.start(self)
                return True
            except BusError as exc:
                log.warning("archive.kafka_unavailable", bootstrap=self._bootstrap, error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)
        return False

    async def on_assigned(self, assigned: set[Partition]) -> None:
        self._fresh |= set(assigned)
        log.info("archive.assigned", partitions=sorted(tp.partition for tp in assigned), topic=self.topic)

    async def on_revoked(self, revoked: set[Partition]) -> None:
        async with self._lock:
            for tp in sorted(revoked, key=lambda t: t.partition):
                if tp in self._recover_until:  # mid-rewrite: the next owner rewrites the whole range
                    self._buffers.pop(tp, None)
                elif tp in self._buffers:
                    await self._roll(tp)
                self._recover_until.pop(tp, None)
                self._fresh.discard(tp)

    async def run(self, stop: asyncio.Event) -> ArchiveStats:
        """Archive until ``stop`` is set; then roll and commit every buffer and leave the group.

        A write that fails once ``stop`` is set is not retried: the run raises and commits nothing
        more (the next run rewrites the same files), instead of outliving the pod's grace period."""
        self._stop = stop
        if not await self._start():
            return self.stats
        log.info("archive.started", topic=self.topic, root=self.settings.root, group=self.settings.group_id)
        clean = False
        try:
            await self._loop(stop)
            async with self._lock:
                for tp in sorted(self._buffers, key=lambda t: t.partition):
                    await self._roll(tp)
            clean = True
        finally:
            if not clean:  # a crash: nothing more is committed; a restart rewrites the same files
                log.error("archive.aborted", buffered=sum(len(b.bars) for b in self._buffers.values()))
            self._buffers.clear()
            await self._bus.stop()
            log.info("archive.stopped", **self.stats.as_dict())
        return self.stats

    async def _loop(self, stop: asyncio.Event) -> None:
        s = self.settings
        next_progress = time.monotonic() + s.progress_every_s
        delay = 1.0
        while not stop.is_set():
            try:
                messages = await self._bus.fetch(s.fetch_max_records, s.fetch_timeout_ms)
                delay = 1.0
            except BusError as exc:
                log.warning("archive.fetch_failed", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)
                continue
            async with self._lock:
                for msg in messages:
                    await self._add(msg.tp, msg.offset, msg.key, msg.value, msg.timestamp_ms, msg.error)
                await self._roll_due()
            if time.monotonic() >= next_progress:
                next_progress = time.monotonic() + s.progress_every_s
                log.info(
                    "archive.progress",
                    buffered=sum(len(b.bars) for b in self._buffers.values()),
                    lag={str(p.partition): n for p, n in self._bus.lag().items()},
                    **self.stats.as_dict(),
                )

    # -- buffering and rolling -----------------------------------------------------------------------

    async def _add(
        self,
        tp: Partition,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        broker_ts_ms: int = 0,
        error: str | None = None,  # the record (batch) could not be decoded: daemon/io/undecodable.py
    ) -> None:
        if tp in self._fresh:
            self._fresh.discard(tp)
            await self._find_uncommitted(tp, offset)
        until = self._recover_until.get(tp)
        if until is not None and offset > until and tp in self._buffers:
            await self._roll(tp)  # records of the old range are gone (compaction): close it where it is
        buf = self._buffers.get(tp)
        if buf is None:
            buf = self._buffers[tp] = _Buffer(first=offset, last=offset, opened_at=time.monotonic())
        buf.last = offset
        self.stats.consumed += 1
        try:
            if error is not None:
                raise InvalidBar(error, "undecodable")
            bar = parse_bar(key, value)
            check_bar_time(bar, broker_ts_ms, time.time(), self.max_future_s)
            buf.bars.append(bar)
        except InvalidBar as exc:
            buf.invalid += 1
            self.stats.invalid[exc.kind] += 1
            log.warning("archive.invalid_bar", partition=tp.partition, offset=offset, reason=exc.reason)
        full = until is None and len(buf.bars) >= self.settings.roll_max_rows
        if full or (until is not None and offset >= until):
            await self._roll(tp)

    async def _find_uncommitted(self, tp: Partition, first: int) -> None:
        """Files of a range that starts at the committed offset were written but not committed."""
        prefix = offset_file_name(tp.topic, tp.partition, first, 0)[: -len("0")]
        pattern = f"{self._root}/date=*/{prefix}*.parquet"
        found = await asyncio.to_thread(self._fs.glob, pattern)
        ends = []
        for path in found:
            parsed = parse_offset_name(str(path).rsplit("/", 1)[-1])
            if parsed is not None and parsed[:3] == (tp.topic, tp.partition, first):
                ends.append(parsed[3])
        if ends:
            self._recover_until[tp] = max(ends)
            log.info("archive.rewrite_range", partition=tp.partition, first=first, last=max(ends))

    async def _roll_due(self) -> None:
        now = time.monotonic()
        s = self.settings
        for tp, buf in list(self._buffers.items()):
            if tp in self._recover_until:
                continue  # the range to rewrite decides where this roll ends
            if len(buf.bars) >= s.roll_max_rows or now - buf.opened_at >= s.roll_max_age_s:
                await self._roll(tp)

    async def _roll(self, tp: Partition) -> None:
        """Write the partition's buffer (if it holds bars), then commit past it."""
        buf = self._buffers.pop(tp)
        rewrite = self._recover_until.pop(tp, None) is not None
        name = offset_file_name(tp.topic, tp.partition, buf.first, buf.last)
        paths: list[str] = []
        if buf.bars:
            paths = await self._write(name, bars_frame(buf.bars))
        self.stats.files += len(paths)
        self.stats.archived += len(buf.bars)
        self.stats.rolls += 1
        self.stats.rewrites += int(rewrite)
        self._before_commit(tp, paths)
        committed = await self._commit(tp, buf.last + 1)
        log.info(
            "archive.rolled",
            partition=tp.partition,
            first=buf.first,
            last=buf.last,
            bars=len(buf.bars),
            invalid=buf.invalid,
            files=len(paths),
            rewrite=rewrite,
            committed=committed,
        )

    async def _write(self, name: str, frame: pd.DataFrame) -> list[str]:
        delay = 1.0
        while True:
            try:
                return await asyncio.to_thread(
                    write_bars,
                    self.settings.root,
                    frame,
                    name=name,
                    storage_options=self.settings.storage_options,
                )
            except OSError as exc:
                self.stats.write_failures += 1
                if self._stop.is_set():  # shutting down: give up, commit nothing; a restart rewrites it
                    log.error("archive.write_failed", file=name, error=str(exc), retry_in_s=None)
                    raise
                log.error("archive.write_failed", file=name, error=str(exc), retry_in_s=delay)
                with contextlib.suppress(TimeoutError):  # a stop request ends the wait
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)

    def _before_commit(self, tp: Partition, paths: list[str]) -> None:
        """A seam for fault tests: runs after the files are durable, before the offsets are committed."""

    async def _commit(self, tp: Partition, offset: int) -> bool:
        try:
            await self._bus.commit({tp: offset})
        except CommitRefused as exc:
            # the partition moved to another member: it replays from the last commit and rewrites the
            # same files (see the module docstring)
            log.warning("archive.commit_refused", partition=tp.partition, offset=offset, error=str(exc))
            return False
        self.stats.committed[(tp.topic, tp.partition)] = offset
        return True


async def run_archiver(
    kafka: KafkaSettings, settings: ArchiveSettings, max_future_s: float | None = 300.0
) -> ArchiveStats:
    """Run until SIGTERM or SIGINT, then roll, commit and leave the group."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await Archiver(kafka, settings, max_future_s=max_future_s).run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def import_csv(
    path: Path,
    symbol: str,
    tz: str,
    root: str,
    storage_options: dict[str, Any] | None = None,
    progress_every: int = 100_000,
) -> dict[str, Any]:
    """Backfill: validate a CSV's bars like the daemon does and write them to the archive.

    The files are named ``import-<symbol>-<first ts>-<last ts>`` (one per UTC date), so importing the
    same file again replaces them; bars already archived from Kafka are de-duplicated by readers.
    Invalid rows are skipped, counted and the first few logged. Returns a summary."""
    bars: list[Bar] = []
    invalid = 0
    began = time.monotonic()
    for n, (sym, ts, values) in enumerate(csv_bars(path, symbol, tz), start=1):
        try:
            bars.append(parse_bar(sym.encode(), bar_to_json(sym, ts, values)))
        except InvalidBar as exc:
            invalid += 1
            if invalid <= 5:
                log.warning("archive.import_invalid_row", file=str(path), row=n + 1, reason=exc.reason)
        if n % progress_every == 0:
            log.info("archive.import_progress", file=str(path), rows=n, invalid=invalid)
    summary: dict[str, Any] = {"file": str(path), "symbol": symbol, "bars": len(bars), "invalid": invalid}
    if not bars:
        log.error("archive.import_empty", **summary)
        return {**summary, "files": []}
    first, last = min(b.ts_ns for b in bars), max(b.ts_ns for b in bars)
    stamp = "%Y%m%dT%H%M%SZ"
    name = "-".join(
        ("import", safe_name(symbol), pd.Timestamp(first, tz="UTC").strftime(stamp),
         pd.Timestamp(last, tz="UTC").strftime(stamp))
    )  # fmt: skip
    paths = write_bars(root, bars_frame(bars), name=name, storage_options=storage_options)
    summary.update(
        files=len(paths),
        first=format_ts(first),
        last=format_ts(last),
        seconds=round(time.monotonic() - began, 3),
    )
    log.info("archive.imported", **summary)
    return summary
