"""``kronos-stream run`` (the daemon, or ``--print-config``) and ``kronos-stream check`` (its probe)."""

from __future__ import annotations

import argparse
from typing import Any

from daemon.cli.common import cli_settings
from daemon.settings import Settings, load_settings


def add_run_parser(sub: Any) -> None:
    run = sub.add_parser("run", help="run the forecasting daemon (configured by KRONOS_* variables)")
    run.add_argument(
        "--print-config",
        action="store_true",
        help="print the settings it would run with (KRONOS_*=value lines, secrets masked) and exit",
    )


def add_check_parser(sub: Any) -> None:
    check = sub.add_parser("check", help="exit 0 if the daemon's /healthz answers 200, else 1")
    check.add_argument("--url", help="default: http://127.0.0.1:$KRONOS_HTTP_PORT/healthz")


def run(args: argparse.Namespace) -> int:
    settings = load_settings()  # a bad value fails here, before torch is imported
    if args.print_config:
        return _print_config(settings)
    from daemon.app import run

    return run(settings)


def _print_config(settings: Settings) -> int:
    from daemon.logging import configure_logging
    from daemon.model.manifest import apply_model_runtime
    from daemon.ops.config_view import config_lines

    configure_logging("WARNING", settings.log_format)  # stdout holds the settings only
    print("\n".join(config_lines(apply_model_runtime(settings))))  # no hub download
    return 0


def check(args: argparse.Namespace) -> int:
    from daemon.ops.server import check

    url = args.url
    if not url:
        settings = cli_settings(args)
        url = f"http://127.0.0.1:{settings.http_port or 8080}/healthz"
    return 0 if check(url) else 1
