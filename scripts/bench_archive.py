"""Archive benchmark: the archiver's rate from the real Kafka broker, CSV import, and read_bars.

1. **archiver**: ``--bars`` synthetic bars (:func:`daemon.io.feeds.synthetic_bars`, ``--symbols``
   symbols, one-minute grid) are published to a fresh topic of ``--partitions`` partitions; an
   :class:`daemon.archive.archiver.Archiver` (its own group, ``--roll-rows`` per file) archives them into a
   temporary folder. Rate = bars / (time from the first consumed bar to the last one rolled and
   committed). The group join before the first bar is reported apart.
2. **import**: ``kronos-stream archive import`` of the bundled 2500 bars (validation + one file per day).
3. **read**: ``read_bars`` of the whole archive of step 1, then of one symbol over one day.

Every local file write is fsync'ed (the archive's durability), so the figures depend on the disk.
Output: a table on stdout and ``--out`` (JSON, default ``results/archive/bench_archive.json``).
Run: ``eval "$(scripts/services env)"; .venv/bin/python scripts/bench_archive.py`` (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pyarrow
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from daemon.archive.archiver import Archiver, import_csv
from daemon.io.feeds import publish, synthetic_bars
from daemon.io.kafka_producer import KafkaOutput
from daemon.settings import ArchiveSettings, KafkaSettings
from kronos_contract.archive import read_bars

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT / "daemon" / "assets" / "bars_5min_a_share.csv"


async def bench_archiver(args: argparse.Namespace, folder: Path) -> dict[str, float]:
    topic = f"bench-archive-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=args.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=args.partitions, replication_factor=1)])
        kafka = KafkaSettings(bootstrap_servers=args.bootstrap)
        out = KafkaOutput(kafka)
        await out.start()
        try:
            start = datetime(2024, 6, 18, tzinfo=UTC)
            bars = synthetic_bars(args.symbols, count=args.bars, interval_s=60.0, start=start)
            sent = await publish(out, topic, bars)
        finally:
            await out.stop()
        settings = ArchiveSettings(
            root=str(folder), topic=topic, group_id=f"bench-{topic}", roll_max_rows=args.roll_rows,
            roll_max_age_s=600.0, fetch_timeout_ms=100,
        )  # fmt: skip
        archiver = Archiver(kafka, settings)
        stop = asyncio.Event()
        began = time.perf_counter()
        task = asyncio.create_task(archiver.run(stop))
        first = None
        while archiver.stats.consumed < sent:
            if first is None and archiver.stats.consumed:
                first = time.perf_counter()
            if task.done():
                await task  # raises what stopped it
            await asyncio.sleep(0.005)
        stop.set()
        stats = await task
        done = time.perf_counter()
        first = first or done
        return {
            "bars": sent,
            "partitions": args.partitions,
            "roll_rows": args.roll_rows,
            "files": stats.files,
            "join_s": round(first - began, 3),
            "archive_s": round(done - first, 3),
            "bars_per_s": round(sent / (done - first), 1),
        }
    finally:
        await admin.delete_topics([topic])
        await admin.close()


def bench_import(folder: Path) -> dict[str, float]:
    began = time.perf_counter()
    summary = import_csv(CSV, "600977.SH", "Asia/Shanghai", str(folder))
    took = time.perf_counter() - began
    return {"bars": summary["bars"], "files": summary["files"], "seconds": round(took, 3),
            "bars_per_s": round(summary["bars"] / took, 1)}  # fmt: skip


def bench_read(folder: Path) -> dict[str, float]:
    began = time.perf_counter()
    everything = read_bars(str(folder))
    whole = time.perf_counter() - began
    began = time.perf_counter()
    one = read_bars(str(folder), start="2024-06-18T01:00Z", end="2024-06-18T05:00Z", symbols=["SYN0001"])
    part = time.perf_counter() - began
    return {"rows": len(everything), "seconds": round(whole, 3), "rows_per_s": round(len(everything) / whole, 1),
            "filtered_rows": len(one), "filtered_seconds": round(part, 3)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--bars", type=int, default=20_000)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--roll-rows", type=int, default=2_000)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "archive" / "bench_archive.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        archived = asyncio.run(bench_archiver(args, Path(tmp) / "kafka"))
        read = bench_read(Path(tmp) / "kafka")
        imported = bench_import(Path(tmp) / "import")
    result = {
        "archiver": archived,
        "import": imported,
        "read": read,
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "pyarrow": pyarrow.__version__,
            "platform": platform.platform(),
        },  # fmt: skip
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"archiver: {archived['bars']} bars, {archived['partitions']} partitions, {archived['files']} files: "
          f"{archived['bars_per_s']} bars/s (group join {archived['join_s']} s apart)")  # fmt: skip
    print(
        f"import:   {imported['bars']} bars into {imported['files']} files: {imported['bars_per_s']} bars/s"
    )
    print(f"read:     {read['rows']} rows in {read['seconds']} s ({read['rows_per_s']} rows/s); "
          f"one symbol, 4 hours: {read['filtered_rows']} rows in {read['filtered_seconds']} s")  # fmt: skip
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
