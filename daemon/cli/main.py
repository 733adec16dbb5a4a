"""The ``kronos-stream`` command.

    kronos-stream demo [--bars N] [--mode M] [--out PNG]  the daemon on the bundled bars, no services
    kronos-stream run [--print-config]                 the daemon (settings from KRONOS_* variables)
    kronos-stream replay CSV --symbol S [--topic T] [--speed X] [--tz Asia/Shanghai]
    kronos-stream synth --symbols N --rate R --duration D [--topic T]
    kronos-stream forecast SYMBOL [--wait S]           the latest forecast from Redis, as JSON
    kronos-stream scores [--version V] [--hours N]     online scores per model version, from Redis
    kronos-stream check [--url URL]                    exit 0 if /healthz answers 200 (a probe)
    kronos-stream api-key new NAME                     an HTTP API key, and its hashed line for the keys file
    kronos-stream api-schema [PATH]                    the HTTP API's OpenAPI schema (docs/api/openapi.json)
    kronos-stream redis-acl [--user U] [--prefix P]    the daemon's least-privilege Redis ACL user
    kronos-stream train [...]                          fine-tune, gate, publish (see `train --help`)
    kronos-stream archive [--root URL]                 the input topic's bars into Parquet (KRONOS_ARCHIVE__*)
    kronos-stream archive import CSV --symbol S [--tz Z]   backfill the archive from a CSV file
    kronos-stream models list|show|verify|sign|promote|rollback|gc|challenge|withdraw|compare
                                                                     the model registry (--registry URL)

Kafka and Redis addresses come from the same settings as the daemon's (``--bootstrap``/``--redis-url``
override them).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version

from daemon.cli import api_keys, archive, backtest, demo, feeds, models, reads, tools
from daemon.cli import run as run_cli
from daemon.errors import DaemonError

try:  # the installed distribution's version, without importing kronos_core (and torch) for --help
    __version__ = _dist_version("kronos-stream")
except PackageNotFoundError:  # a source checkout that is not installed
    __version__ = "0+unknown"

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": demo.run,
    "run": run_cli.run,
    "replay": feeds.run,
    "synth": feeds.run,
    "forecast": reads.forecast,
    "scores": reads.scores,
    "backtest": backtest.run,
    "redis-acl": tools.redis_acl,
    "check": run_cli.check,
    "api-key": api_keys.run,
    "api-schema": api_keys.run,
    "bench": tools.bench,
    "archive": archive.run,
    "models": models.run,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kronos-stream",
        description="Real-time Kronos forecasting: Kafka in, Redis state, forecasts out.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo.add_parser(sub)
    run_cli.add_run_parser(sub)
    feeds.add_parsers(sub)
    reads.add_forecast_parser(sub)
    reads.add_scores_parser(sub)
    backtest.add_parser(sub)
    tools.add_acl_parser(sub)
    run_cli.add_check_parser(sub)
    tools.add_bench_parser(sub)
    tools.add_train_parser(sub)
    archive.add_parser(sub)
    models.add_parser(sub)
    api_keys.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # its own parser (one flag per TrainSettings field), --help included
        return tools.train(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = COMMANDS.get(args.command)
    if handler is not None:
        try:
            return handler(args)
        except DaemonError as exc:
            print(f"kronos-stream {args.command}: {exc}", file=sys.stderr)
            return 2
    parser.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
