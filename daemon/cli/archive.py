"""``kronos-stream archive`` (the input topic into Parquet) and ``archive import CSV``."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from daemon.cli.common import cli_settings


def add_parser(sub: Any) -> None:
    archive = sub.add_parser(
        "archive",
        help="archive the input topic's validated bars as Parquet (or 'archive import CSV')",
        description=(
            "Consumes the input topic in its own group (KRONOS_ARCHIVE__GROUP_ID, default kronos-archive), "
            "validates each bar like the daemon and writes Parquet files by UTC date under the archive root "
            "(KRONOS_ARCHIVE__ROOT: a folder or an fsspec URL), named from partition and offset range. "
            "Offsets are committed only after a file is durable. SIGTERM rolls and commits what is buffered."
        ),
    )
    archive.add_argument("--root", help="archive folder or fsspec URL (default: KRONOS_ARCHIVE__ROOT)")
    archive.add_argument(
        "--topic", help="topic to archive (default: KRONOS_ARCHIVE__TOPIC, else the input topic)"
    )
    archive.add_argument(
        "--bootstrap", help="Kafka bootstrap servers (default: KRONOS_KAFKA__BOOTSTRAP_SERVERS)"
    )
    what = archive.add_subparsers(dest="archive_command", metavar="import")
    imp = what.add_parser("import", help="backfill the archive from a CSV file of one symbol")
    imp.add_argument("csv", type=Path, help="columns timestamps,open,high,low,close,volume[,amount]")
    imp.add_argument("--symbol", required=True, help="symbol of the bars")
    imp.add_argument("--tz", default="UTC", help="time zone of the CSV's naive timestamps (default UTC)")
    imp.add_argument(
        "--root", dest="import_root", help="archive folder or fsspec URL (default: KRONOS_ARCHIVE__ROOT)"
    )


def run(args: argparse.Namespace) -> int:
    settings = cli_settings(args)
    update = {k: v for k, v in (("root", args.root), ("topic", args.topic)) if v}
    if getattr(args, "import_root", None):
        update["root"] = args.import_root
    archive = settings.archive.model_copy(update=update)
    from daemon.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    if args.archive_command == "import":
        from daemon.archive.archiver import import_csv

        summary = import_csv(args.csv, args.symbol, args.tz, archive.root, archive.storage_options)
        print(json.dumps(summary))
        return 0 if summary["bars"] else 1
    from daemon.archive.archiver import run_archiver

    stats = asyncio.run(run_archiver(settings.kafka, archive, max_future_s=settings.max_future_s))
    print(json.dumps(stats.as_dict()))
    return 0
