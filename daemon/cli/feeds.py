"""``kronos-stream replay`` and ``kronos-stream synth``: bars onto the input topic."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from daemon.cli.common import cli_settings


def add_parsers(sub: Any) -> None:
    replay = sub.add_parser("replay", help="publish the bars of a CSV file to the input topic")
    replay.add_argument("csv", type=Path, help="columns timestamps,open,high,low,close,volume[,amount]")
    replay.add_argument("--symbol", required=True, help="symbol of the bars (also the message key)")
    replay.add_argument("--topic", help="input topic (default: KRONOS_KAFKA__INPUT_TOPIC)")
    replay.add_argument(
        "--speed", type=float, default=0.0, help="multiple of real time; 0 = as fast as possible"
    )
    replay.add_argument("--tz", default="UTC", help="time zone of the CSV's naive timestamps (default UTC)")
    replay.add_argument("--limit", type=int, help="publish only the first N bars")
    replay.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    replay.add_argument(
        "--bootstrap", help="Kafka bootstrap servers (default: KRONOS_KAFKA__BOOTSTRAP_SERVERS)"
    )

    synth = sub.add_parser("synth", help="publish synthetic random-walk bars for many symbols (load)")
    synth.add_argument("--symbols", type=int, default=10, help="number of symbols")
    synth.add_argument("--rate", type=float, default=100.0, help="bars per second, all symbols together")
    synth.add_argument("--duration", type=float, default=10.0, help="seconds to run")
    synth.add_argument("--interval-s", type=float, default=60.0, help="bar interval of the synthetic clock")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    synth.add_argument("--topic", help="input topic (default: KRONOS_KAFKA__INPUT_TOPIC)")
    synth.add_argument(
        "--bootstrap", help="Kafka bootstrap servers (default: KRONOS_KAFKA__BOOTSTRAP_SERVERS)"
    )


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_publish(args))


def _csv_rows(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            return max(0, sum(1 for line in handle if line.strip()) - 1)  # less the header
    except OSError:
        return 0  # csv_bars reports the error


async def _publish(args: argparse.Namespace) -> int:
    from itertools import islice

    from daemon.cli.progress import Progress
    from daemon.io.feeds import csv_bars, publish, synthetic_bars
    from daemon.io.kafka_producer import KafkaOutput

    settings = cli_settings(args)
    topic = args.topic or settings.kafka.input_topic
    out = KafkaOutput(settings.kafka)
    await out.start()
    try:
        if args.command == "replay":
            bars = csv_bars(args.csv, args.symbol, args.tz)
            total = _csv_rows(args.csv)
            if args.limit is not None:
                bars = islice(bars, args.limit)
                total = min(total, args.limit)
            progress = Progress("replay", total, enabled=not args.quiet)
            sent = await publish(out, topic, bars, speed=args.speed, on_progress=progress.update)
        else:
            bars = synthetic_bars(args.symbols, interval_s=args.interval_s, seed=args.seed)
            expected = int(args.rate * args.duration) if args.rate and args.duration else None
            progress = Progress("synth", expected, enabled=not args.quiet)
            sent = await publish(
                out, topic, bars, rate=args.rate, duration_s=args.duration, on_progress=progress.update
            )
        progress.finish(sent)
    finally:
        await out.stop()
    print(json.dumps({"topic": topic, "published": sent}))
    return 0
