"""``kronos-stream archive`` against the real Kafka broker: bars in, Parquet out, offsets after files."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from daemon.archive.archiver import Archiver, ArchiveStats, import_csv
from daemon.cli.main import main as cli_main
from daemon.io.bus import InputBus, Partition
from daemon.io.messages import parse_bar
from daemon.settings import ArchiveSettings, KafkaSettings
from kronos_contract.archive import COLUMNS, parse_offset_name, read_bars
from tests.support.launcher import (
    T0,
    bar_record,
    bar_series,
    committed_offsets,
    encode,
    end_offsets,
    interleave,
    produce,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[3]
CSV = ROOT / "daemon" / "assets" / "bars_5min_a_share.csv"
Record = tuple[bytes | None, bytes | None]


def expected_frame(records: list[Record]) -> pd.DataFrame:
    """What the archive should hold for these messages: valid bars, one per (symbol, ts), sorted."""
    rows = []
    for key, value in records:
        try:
            bar = parse_bar(key, value)
        except Exception:
            continue
        rows.append((bar.symbol, pd.Timestamp(bar.ts_ns, tz="UTC"), *bar.values))
    frame = pd.DataFrame(rows, columns=list(COLUMNS)).drop_duplicates(["symbol", "ts"], keep="last")
    return frame.sort_values(["symbol", "ts"]).reset_index(drop=True)


def raw_rows(root: Path) -> int:
    """Rows in every archive file, before any de-duplication."""
    return sum(pq.read_metadata(p).num_rows for p in root.rglob("*.parquet"))


def names(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*.parquet")}


def settings(
    bootstrap: str, topic: str, group: str, root: Path, **over: Any
) -> tuple[KafkaSettings, ArchiveSettings]:
    kafka = KafkaSettings(bootstrap_servers=bootstrap, session_timeout_ms=6000, heartbeat_interval_ms=500)
    archive = ArchiveSettings(
        root=str(root), topic=topic, group_id=group, fetch_timeout_ms=100, roll_max_age_s=600.0, **over
    )
    return kafka, archive


async def run_until(archiver: Archiver, done: Callable[[ArchiveStats], bool]) -> ArchiveStats:
    """Run the archiver until ``done(stats)``, then stop it gracefully (roll + commit)."""
    stop = asyncio.Event()
    task = asyncio.create_task(archiver.run(stop))
    try:
        await wait_until(lambda: done(archiver.stats) or task.done(), 60, "the archiver to consume the bars")
    finally:
        stop.set()
    return await task


def day_crossing_series(symbol: str, n: int, seed: int = 0) -> list[Record]:
    """Five-minute bars that start late in a UTC day, so rolls span two dates."""
    return bar_series(symbol, n, start=T0.replace(hour=22), interval_s=300.0, seed=seed)


async def test_round_trip_de_duplicated_invalid_counted_offsets_committed(
    kafka_bootstrap: str, topic_factory: Callable[..., Awaitable[str]], group_id: str, tmp_path: Path
) -> None:
    topic = await topic_factory(partitions=2)
    series = [day_crossing_series(s, 40, seed=i) for i, s in enumerate(("AAA", "BBB", "CCC"))]
    records = interleave(*series)
    records += series[0][:10]  # a replay: the same bars again
    bad = bar_record("AAA", T0, 10.0)
    future = bar_record("AAA", T0.replace(year=2200), 10.0)  # in range, but far ahead of the broker time
    records += [(b"AAA", b"{not json"), encode(bad, key="BBB"), encode({**bad, "low": 99.0}), encode(future)]
    await produce(kafka_bootstrap, topic, records)

    archiver = Archiver(*settings(kafka_bootstrap, topic, group_id, tmp_path, roll_max_rows=25))
    stats = await run_until(archiver, lambda s: s.consumed >= len(records))

    got = read_bars(str(tmp_path))
    pd.testing.assert_frame_equal(got, expected_frame(records[:-1]), check_dtype=False)  # not the future bar
    assert stats.consumed == len(records) == stats.archived + 4
    assert stats.invalid == {"json": 1, "key": 1, "schema": 1, "future": 1}
    assert await committed_offsets(kafka_bootstrap, group_id, topic) == await end_offsets(
        kafka_bootstrap, topic
    )
    files = names(tmp_path)
    assert {f.split("/")[0] for f in files} == {"date=2024-06-18", "date=2024-06-19"}
    for name in files:
        parsed = parse_offset_name(name.split("/")[1])
        assert parsed is not None and parsed[0] == topic and parsed[2] <= parsed[3]
    assert stats.rolls >= 6  # 133 messages in rolls of at most 25 bars


class CrashBeforeSecondCommit(Archiver):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.written: list[str] = []

    def _before_commit(self, tp: Partition, paths: list[str]) -> None:
        self.written += paths
        if self.stats.rolls == 2:
            raise RuntimeError("crash injected after the files, before the commit")


async def test_crash_between_file_and_commit_rewrites_the_same_files(
    kafka_bootstrap: str, topic_factory: Callable[..., Awaitable[str]], group_id: str, tmp_path: Path
) -> None:
    topic = await topic_factory(partitions=1)
    records = interleave(day_crossing_series("AAA", 60), day_crossing_series("BBB", 60, seed=1))
    await produce(kafka_bootstrap, topic, records)

    crashing = CrashBeforeSecondCommit(
        *settings(kafka_bootstrap, topic, group_id, tmp_path, roll_max_rows=30)
    )
    with pytest.raises(RuntimeError, match="crash injected"):
        await run_until(crashing, lambda s: False)
    assert await committed_offsets(kafka_bootstrap, group_id, topic) == {0: 30}
    after_crash = names(tmp_path)
    assert any("-o30-59.parquet" in n for n in after_crash)

    # the restarted archiver rolls at another size: the uncommitted range is rewritten as it was
    restarted = Archiver(*settings(kafka_bootstrap, topic, group_id, tmp_path, roll_max_rows=1000))
    stats = await run_until(restarted, lambda s: s.consumed >= len(records) - 30)
    assert stats.rewrites == 1
    assert after_crash <= names(tmp_path)
    assert raw_rows(tmp_path) == len(records)  # no duplicate row at all, even before de-duplication
    pd.testing.assert_frame_equal(read_bars(str(tmp_path)), expected_frame(records), check_dtype=False)
    assert await committed_offsets(kafka_bootstrap, group_id, topic) == {0: len(records)}


async def test_rolls_by_age(
    kafka_bootstrap: str, topic_factory: Callable[..., Awaitable[str]], group_id: str, tmp_path: Path
) -> None:
    topic = await topic_factory(partitions=1)
    records = bar_series("AAA", 5)
    await produce(kafka_bootstrap, topic, records)
    kafka, archive = settings(kafka_bootstrap, topic, group_id, tmp_path)
    archiver = Archiver(kafka, archive.model_copy(update={"roll_max_age_s": 0.2}))
    stop = asyncio.Event()
    task = asyncio.create_task(archiver.run(stop))
    try:
        # committed while still running: the age roll, not the shutdown, wrote the file
        await wait_until(lambda: archiver.stats.committed.get((topic, 0)) == 5, 60, "an age roll")
        assert names(tmp_path) == {f"date=2024-06-18/{topic}-p0-o0-4.parquet"}
    finally:
        stop.set()
        await task


async def test_sigterm_rolls_and_commits_what_is_buffered(
    kafka_bootstrap: str, topic_factory: Callable[..., Awaitable[str]], group_id: str, tmp_path: Path
) -> None:
    topic = await topic_factory(partitions=1)
    records = bar_series("AAA", 50)
    await produce(kafka_bootstrap, topic, records)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRONOS_")}
    env.update(
        PYTHONPATH=str(ROOT),
        KRONOS_KAFKA__BOOTSTRAP_SERVERS=kafka_bootstrap,
        KRONOS_ARCHIVE__ROOT=str(tmp_path / "archive"),
        KRONOS_ARCHIVE__TOPIC=topic,
        KRONOS_ARCHIVE__GROUP_ID=group_id,
        KRONOS_ARCHIVE__PROGRESS_EVERY_S="0.2",
        KRONOS_ARCHIVE__FETCH_TIMEOUT_MS="100",
    )
    log = tmp_path / "archive.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "archive"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=log.open("wb"),
    )  # fmt: skip
    try:

        def consumed_all() -> bool:
            lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
            return any(x["event"] == "archive.progress" and x["consumed"] == 50 for x in lines)

        await wait_until(consumed_all, 60, "the archiver process to consume the bars")
        assert not list((tmp_path / "archive").rglob("*.parquet"))  # all still buffered
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert json.loads(out)["archived"] == 50
    assert len(read_bars(str(tmp_path / "archive"))) == 50
    assert await committed_offsets(kafka_bootstrap, group_id, topic) == {0: 50}


def test_import_csv_bundled_bars_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "archive"
    argv = [
        "archive",
        "import",
        str(CSV),
        "--symbol",
        "600977.SH",
        "--tz",
        "Asia/Shanghai",
        "--root",
        str(root),
    ]
    assert cli_main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["bars"] == 2500 and summary["invalid"] == 0
    first = names(root)
    assert len(first) == summary["files"]
    got = read_bars(str(root), symbols=["600977.SH"])
    assert len(got) == 2500
    # naive Shanghai times became UTC: the first CSV row is 2024-06-18 11:15 local
    assert got["ts"].iloc[0] == pd.Timestamp("2024-06-18T03:15:00Z")
    assert got["close"].iloc[0] == 11.27
    assert cli_main(argv) == 0  # again: the same files, replaced
    assert names(root) == first and raw_rows(root) == 2500


def test_import_skips_and_counts_invalid_rows(tmp_path: Path) -> None:
    csv = tmp_path / "bars.csv"
    lines = CSV.read_text().splitlines()[:6]
    lines[2] = lines[2].replace("11.28,11.27", "11.28,99.0", 1)  # low above high
    csv.write_text("\n".join(lines) + "\n")
    summary = import_csv(csv, "X", "UTC", str(tmp_path / "archive"))
    assert (summary["bars"], summary["invalid"]) == (4, 1)
    assert (summary["first"], summary["last"]) == ("2024-06-18T11:15:00Z", "2024-06-18T13:05:00Z")


async def test_rebalance_rolls_and_commits_before_partitions_move(
    kafka_bootstrap: str, topic_factory: Callable[..., Awaitable[str]], group_id: str, tmp_path: Path
) -> None:
    topic = await topic_factory(partitions=2)
    records = interleave(*(bar_series(s, 30, seed=i) for i, s in enumerate(("AAA", "BBB", "CCC", "DDD"))))
    await produce(kafka_bootstrap, topic, records)
    first = Archiver(*settings(kafka_bootstrap, topic, group_id, tmp_path))
    stop_first = asyncio.Event()
    task = asyncio.create_task(first.run(stop_first))
    try:
        await wait_until(lambda: first.stats.consumed == len(records), 60, "the first archiver to consume")
        assert first.stats.rolls == 0  # everything is buffered: no size or age roll is due
        second = Archiver(*settings(kafka_bootstrap, topic, group_id, tmp_path))
        stats = await run_until(second, lambda s: first.stats.rolls == 2)
    finally:
        stop_first.set()
        await task
    assert first.stats.archived == len(records) and stats.consumed == 0
    assert raw_rows(tmp_path) == len(records)
    pd.testing.assert_frame_equal(read_bars(str(tmp_path)), expected_frame(records), check_dtype=False)
    ends = await end_offsets(kafka_bootstrap, topic)
    assert await committed_offsets(kafka_bootstrap, group_id, topic) == ends


async def test_storage_outage_is_waited_out_and_a_stop_during_it_commits_nothing(
    kafka_bootstrap: str,
    topic_factory: Callable[..., Awaitable[str]],
    group_id: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import daemon.archive.archiver as archiver_mod

    topic = await topic_factory(partitions=1)
    records = bar_series("AAA", 20)
    await produce(kafka_bootstrap, topic, records)
    real_write = archiver_mod.write_bars
    broken = {"on": True}

    def flaky_write(*args: Any, **kwargs: Any) -> list[str]:
        if broken["on"]:
            raise OSError("object store unreachable")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(archiver_mod, "write_bars", flaky_write)
    archiver = Archiver(*settings(kafka_bootstrap, topic, group_id, tmp_path, roll_max_rows=10))
    stop = asyncio.Event()
    task = asyncio.create_task(archiver.run(stop))
    try:
        await wait_until(lambda: archiver.stats.write_failures >= 2, 60, "two failed writes")
        assert not task.done() and archiver.stats.committed == {}
        broken["on"] = False  # the store is back: the same roll goes through, then the rest
        await wait_until(
            lambda: archiver.stats.committed.get((topic, 0)) == 20, 60, "the rolls after the outage"
        )
        await produce(kafka_bootstrap, topic, bar_series("AAA", 25)[20:])
        await wait_until(lambda: archiver.stats.consumed == 25, 60, "five more bars buffered")
        broken["on"] = True  # down again when the stop asks for the last roll
        stop.set()
        with pytest.raises(OSError, match="unreachable"):
            await asyncio.wait_for(task, 30)  # gives up instead of retrying until SIGKILL
    finally:
        stop.set()
        if not task.done():
            task.cancel()
    assert await committed_offsets(kafka_bootstrap, group_id, topic) == {0: 20}
    assert len(read_bars(str(tmp_path))) == 20


async def test_a_stop_while_kafka_is_unreachable_ends_the_run(tmp_path: Path) -> None:
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1", request_timeout_ms=1000)
    archiver = Archiver(kafka, ArchiveSettings(root=str(tmp_path), topic="bars"))
    stop = asyncio.Event()
    task = asyncio.create_task(archiver.run(stop))
    await asyncio.sleep(1.5)  # at least one failed start, now waiting to retry
    assert not task.done()
    stop.set()
    stats = await asyncio.wait_for(task, 10)
    assert stats.consumed == 0 and not list(tmp_path.iterdir())


class _RecordingBus(InputBus):
    """Only what on_revoked may touch: commits are recorded."""

    def __init__(self) -> None:
        self.commits: list[dict[Partition, int]] = []

    async def start(self, handler: Any) -> None:
        raise AssertionError("not started in this test")

    async def fetch(self, max_records: int, timeout_ms: int) -> list[Any]:
        return []

    async def commit(self, offsets: dict[Partition, int]) -> None:
        self.commits.append(dict(offsets))

    def assignment(self) -> set[Partition]:
        return set()

    def lag(self) -> dict[Partition, int]:
        return {}

    async def stop(self) -> None:
        return None


async def test_revoked_mid_rewrite_leaves_the_range_to_the_next_owner(tmp_path: Path) -> None:
    """A partition taken away while its uncommitted range is being rewritten is neither written nor
    committed in part: the next owner finds the same files and rewrites the whole range."""
    records = bar_series("AAA", 10)
    archiver = Archiver(KafkaSettings(), ArchiveSettings(root=str(tmp_path)), bus=_RecordingBus())
    tp = Partition("bars", 0)
    (tmp_path / "date=2024-06-18").mkdir()
    # the files a crashed run left for offsets 0..9
    (tmp_path / "date=2024-06-18" / "bars-p0-o0-9.parquet").write_bytes(b"left by a crash")
    await archiver.on_assigned({tp})
    for offset, (key, value) in enumerate(records[:4]):
        await archiver._add(tp, offset, key, value)
    await archiver.on_revoked({tp})
    bus = archiver._bus
    assert isinstance(bus, _RecordingBus) and bus.commits == []
    assert names(tmp_path) == {"date=2024-06-18/bars-p0-o0-9.parquet"}

    # while a partition with nothing to rewrite is rolled and committed on revocation
    other = Partition("bars", 1)
    await archiver.on_assigned({other})
    for offset, (key, value) in enumerate(records[:4]):
        await archiver._add(other, offset, key, value)
    await archiver.on_revoked({other})
    assert bus.commits == [{other: 4}]
    assert "date=2024-06-18/bars-p1-o0-3.parquet" in names(tmp_path)
