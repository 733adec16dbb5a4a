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
import asyncio
import contextlib
import json
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from pathlib import Path
from typing import Any

from daemon.cli import api_keys as api_keys_cli
from daemon.cli import backtest as backtest_cli
from daemon.errors import ConfigError, DaemonError, StateError
from daemon.settings import Settings, load_settings

try:  # the installed distribution's version, without importing kronos_core (and torch) for --help
    __version__ = _dist_version("kronos-stream")
except PackageNotFoundError:  # a source checkout that is not installed
    __version__ = "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kronos-stream",
        description="Real-time Kronos forecasting: Kafka in, Redis state, forecasts out.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="the daemon on the bundled real bars with the demo model: no Kafka, no Redis",
        description=(
            "Replays the bundled five-minute bars (Asia/Shanghai local times, sent as UTC) through the "
            "daemon with an in-memory bus and state store and the project's demo model (max_context 128, "
            "horizon 12). First --warmup bars are published and their forecasts consumed without printing, "
            "so the replayed bars see a full context; then the last --bars bars of the file are replayed "
            "and each forecast is printed as it arrives. Halfway (unless --no-retrain) the bars seen so far are "
            "archived, the model fine-tuned on them, gated and published to a temporary registry that the "
            "daemon follows: it hot-swaps to the new version if the gate passed. At the end: a summary (throughput, close MAE of the "
            "next-bar and horizon-end forecasts against the realised bars and against persistence), a PNG "
            "(--out) and the summary as JSON beside it. Daemon logs: warnings only, on stderr. KRONOS_* "
            "variables the demo does not set itself apply (e.g. KRONOS_MODEL__DEVICE, KRONOS_MODEL__THREADS, "
            "default 1 here; KRONOS_DRIFT_SIGMA)."
        ),
    )
    demo.add_argument(
        "--bars", type=int, default=240, help="replay the last N bars of the file (default 240)"
    )
    demo.add_argument(
        "--warmup", type=int, help="bars published before them, not printed (default: max_context, 128)"
    )
    demo.add_argument(
        "--mode", choices=["exact", "incremental"], default="incremental", help="default incremental"
    )
    demo.add_argument(
        "--speed",
        type=float,
        default=0.0,
        help="multiple of real time, market breaks and nights included; 0 = as fast as possible (default)",
    )
    demo.add_argument("--samples", type=int, default=16, help="sample paths per forecast (default 16)")
    demo.add_argument(
        "--no-calibration",
        dest="calibrate",
        action="store_false",
        help="publish the model's bands as they are (both are scored either way)",
    )
    demo.add_argument("--symbol", default="DEMO", help="symbol the bars are sent under (default DEMO)")
    demo.add_argument(
        "--no-retrain",
        action="store_true",
        help="skip the act halfway (archive the bars seen, fine-tune, gate, publish, hot-swap)",
    )
    demo.add_argument(
        "--out", type=Path, default=Path("results/demo.png"), help="the PNG; the JSON goes beside it"
    )

    run = sub.add_parser("run", help="run the forecasting daemon (configured by KRONOS_* variables)")
    run.add_argument(
        "--print-config",
        action="store_true",
        help="print the settings it would run with (KRONOS_*=value lines, secrets masked) and exit",
    )

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

    forecast = sub.add_parser("forecast", help="print the latest forecast of a symbol from Redis")
    forecast.add_argument("symbol")
    forecast.add_argument("--redis-url", help="default: KRONOS_REDIS__URL")
    forecast.add_argument("--prefix", help="key prefix (default: KRONOS_REDIS__KEY_PREFIX)")
    forecast.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for a forecast to appear (default 0: answer at once)",
    )

    _add_scores_parser(sub)
    backtest_cli.add_parser(sub)

    acl = sub.add_parser(
        "redis-acl", help="print the ACL SETUSER line of the daemon's least-privilege Redis user"
    )
    acl.add_argument("--user", default="kronos-daemon", help="ACL user name (default kronos-daemon)")
    acl.add_argument("--prefix", help="key prefix (default: KRONOS_REDIS__KEY_PREFIX)")
    acl.add_argument("--cluster", action="store_true", help="add what a Redis Cluster client needs")
    acl.add_argument(
        "--publisher", action="store_true", help="the hint publisher's (trainer, models promote) instead"
    )

    check = sub.add_parser("check", help="exit 0 if the daemon's /healthz answers 200, else 1")
    check.add_argument("--url", help="default: http://127.0.0.1:$KRONOS_HTTP_PORT/healthz")

    bench = sub.add_parser("bench", help="benchmarks (see 'kronos-stream bench inference --help')")
    bench.add_argument("which", choices=["inference"], help="inference: fast engine vs recompute baseline")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="options of that benchmark")
    _add_train(sub)
    _add_archive_parser(sub)
    _add_models_parser(sub)
    api_keys_cli.add_parsers(sub)
    return parser


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = sub.add_parser(
        "train", add_help=False,
        help="fine-tune on archived bars, gate against the champion, publish (plain or under torchrun)",
    )
    train.add_argument("train_args", nargs=argparse.REMAINDER, help="see 'kronos-stream train --help'")


def _train(train_args: Sequence[str]) -> int:
    from trainer.cli import main as train_main  # lazily: the daemon never imports the trainer

    return train_main(list(train_args))


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings()
    kafka = settings.kafka
    if getattr(args, "bootstrap", None):
        kafka = kafka.model_copy(update={"bootstrap_servers": args.bootstrap})
    redis = settings.redis
    if getattr(args, "redis_url", None):
        redis = redis.model_copy(update={"url": args.redis_url})
    if getattr(args, "prefix", None):
        redis = redis.model_copy(update={"key_prefix": args.prefix})
    return settings.model_copy(update={"kafka": kafka, "redis": redis})


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

    settings = _settings(args)
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


async def _forecast(args: argparse.Namespace) -> int:
    from daemon.state.redis import RedisStateStore

    settings = _settings(args)
    r = settings.redis
    store = RedisStateStore.from_settings(r, settings.model.max_context)
    try:
        record = await _latest_forecast(store, args.symbol, args.wait)
    finally:
        await store.close()
    if record is None:
        waited = f" after waiting {args.wait:g} s" if args.wait > 0 else " (--wait SECONDS waits for one)"
        print(
            f"no forecast for {args.symbol!r} under prefix {r.key_prefix!r}{waited} (expired, or never made)",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(record, indent=2))
    return 0


async def _latest_forecast(store: Any, symbol: str, wait_s: float) -> dict[str, Any] | None:
    """The latest forecast; with ``wait_s`` > 0, polls until one appears or the time is up."""
    import time

    deadline = time.monotonic() + max(0.0, wait_s)
    while True:
        record: dict[str, Any] | None = await store.latest_forecast(symbol)
        if record is not None or time.monotonic() >= deadline:
            return record
        await asyncio.sleep(min(0.25, max(0.0, deadline - time.monotonic())))


def _print_config(settings: Settings) -> int:
    from daemon.logging import configure_logging
    from daemon.model.manifest import apply_model_runtime
    from daemon.ops.config_view import config_lines

    configure_logging("WARNING", settings.log_format)  # stdout holds the settings only
    print("\n".join(config_lines(apply_model_runtime(settings))))  # no hub download
    return 0


def _add_scores_parser(sub: Any) -> None:
    scores = sub.add_parser(
        "scores",
        help="the online scores of the forecasts (per model version, from Redis)",
        description=(
            "Close MAE, persistence MAE and skill, CRPS, pinball loss and p10-p90 coverage of the forecasts "
            "the daemon scored in the last --hours hours, per model version (VERSION@model: the model's own "
            "bands when the published ones are the guarded distribution)."
        ),
    )
    scores.add_argument("--version", dest="model_version", help="one model version (default: all)")
    scores.add_argument("--hours", type=int, default=24, help="window of the rolling aggregate (default 24)")
    scores.add_argument("--json", action="store_true", help="print JSON instead of a table")
    scores.add_argument("--redis-url", help="default: KRONOS_REDIS__URL")
    scores.add_argument("--prefix", help="key prefix (default: KRONOS_REDIS__KEY_PREFIX)")


async def _scores(args: argparse.Namespace) -> int:
    import time

    from daemon.scoring.report import format_report, report_dict
    from daemon.scoring.store_redis import RedisScoreStore

    settings = _settings(args)
    r = settings.redis
    if args.hours < 1:
        raise ConfigError(f"--hours must be at least 1, got {args.hours}")
    store = RedisScoreStore.from_settings(settings)
    try:
        versions = None
        if args.model_version:
            versions = [args.model_version, args.model_version + "@model"]
        sums = await store.read(versions, args.hours, time.time())
    except Exception as exc:
        raise StateError(f"reading the scores from Redis failed: {exc}; check KRONOS_REDIS__URL") from exc
    finally:
        with contextlib.suppress(Exception):
            await store.close()
    if not sums:
        print(f"no scores under prefix {r.key_prefix!r} in the last {args.hours} h", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({v: report_dict(acc) for v, acc in sums.items()}, indent=2))
    else:
        print("\n\n".join(format_report(v, acc, args.hours) for v, acc in sums.items()))
    return 0


def _check(args: argparse.Namespace) -> int:
    from daemon.ops.server import check

    url = args.url
    if not url:
        settings = _settings(args)
        url = f"http://127.0.0.1:{settings.http_port or 8080}/healthz"
    return 0 if check(url) else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # its own parser (one flag per TrainSettings field), --help included
        return _train(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from daemon.demo.config import DemoConfig
            from daemon.demo.replay import main as demo_main

            return demo_main(
                DemoConfig(
                    bars=args.bars,
                    warmup=args.warmup,
                    mode=args.mode,
                    speed=args.speed,
                    out=args.out,
                    symbol=args.symbol,
                    sample_count=args.samples,
                    calibrate=args.calibrate,
                    retrain=not args.no_retrain,
                )
            )
        if args.command == "run":
            settings = load_settings()  # a bad value fails here, before torch is imported
            if args.print_config:
                return _print_config(settings)
            from daemon.app import run

            return run(settings)
        if args.command in ("replay", "synth"):
            return asyncio.run(_publish(args))
        if args.command == "forecast":
            return asyncio.run(_forecast(args))
        if args.command == "scores":
            return asyncio.run(_scores(args))
        if args.command == "backtest":
            return backtest_cli.run(args)
        if args.command == "redis-acl":
            from daemon.state.redis_access import setuser_line

            prefix = args.prefix or load_settings().redis.key_prefix
            print(setuser_line(args.user, prefix, cluster=args.cluster, publisher=args.publisher))
            return 0
        if args.command == "check":
            return _check(args)
        if args.command in ("api-key", "api-schema"):
            return api_keys_cli.run(args)
        if args.command == "bench":
            from kronos_core.bench import main as bench_main

            return bench_main(args.bench_args)
        if args.command == "archive":
            return _archive(args)
        if args.command == "models":
            return _models(args)
    except DaemonError as exc:
        print(f"kronos-stream {args.command}: {exc}", file=sys.stderr)
        return 2
    parser.print_help()
    return 0


# -- archive and models (the contract package's commands) ----------------------------------------


def _add_archive_parser(sub: Any) -> None:
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


def _archive(args: argparse.Namespace) -> int:
    settings = _settings(args)
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


def _add_models_parser(sub: Any) -> None:
    models = sub.add_parser("models", help="the model registry: list, show, verify, sign, promote, rollback, gc")
    models.add_argument(
        "--registry",
        help="registry folder or fsspec URL (default: KRONOS_MODEL__REGISTRY, KRONOS_TRAIN__REGISTRY)",
    )
    models.add_argument(
        "--redis-url", help="where promote/rollback send the hint (default: KRONOS_REDIS__URL)"
    )
    models.add_argument("--prefix", help="key prefix of the hint channel (default: KRONOS_REDIS__KEY_PREFIX)")
    models.add_argument(
        "--public-key", type=Path,
        help="Ed25519 public key (PEM): verify and promote also check the manifest's signature "
        "(default: KRONOS_MODEL__REGISTRY_PUBLIC_KEY)",
    )  # fmt: skip
    what = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    listing = what.add_parser("list", help="versions, newest last, with the champion and previous marked")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.add_argument("--refused", action="store_true", help="also list candidates the gate refused")
    show = what.add_parser("show", help="a version's manifest (default: the champion's)")
    show.add_argument("version", nargs="?")
    verify = what.add_parser(
        "verify",
        help="re-read a version's files and check every sha256, and with a public key its signature (exit 1 if not)",
    )
    verify.add_argument("version", nargs="?")
    sign = what.add_parser("sign", help="sign a published version's manifest (writes manifest.sig beside it)")
    sign.add_argument("version")
    sign.add_argument("--key", type=Path, required=True, help="Ed25519 private key (PEM)")
    promote = what.add_parser("promote", help="verify a version and make it the champion")
    promote.add_argument("version")
    what.add_parser("rollback", help="point back at the previous champion")
    gc = what.add_parser("gc", help="delete old versions (never the champion or the previous)")
    gc.add_argument("--keep", type=int, required=True, help="newest versions to keep besides those two")
    from daemon.cli import challengers

    challengers.add_parsers(what)


def _models(args: argparse.Namespace) -> int:
    import os

    from kronos_contract.registry import Registry, RegistryError

    url = (
        args.registry or os.environ.get("KRONOS_MODEL__REGISTRY") or os.environ.get("KRONOS_TRAIN__REGISTRY")
    )
    if not url:
        raise DaemonError("no registry given: pass --registry URL or set KRONOS_MODEL__REGISTRY")
    key_path = args.public_key or os.environ.get("KRONOS_MODEL__REGISTRY_PUBLIC_KEY") or None
    try:
        registry = Registry(url)
        if key_path is not None:
            from kronos_contract.signing import load_public_key

            args.key_object = load_public_key(key_path)
        return _models_action(args, registry)
    except RegistryError as exc:
        raise DaemonError(str(exc)) from exc


def _models_action(args: argparse.Namespace, registry: Any) -> int:
    action = args.models_command
    if action in ("challenge", "withdraw", "compare"):
        from daemon.cli import challengers

        return challengers.run(args, registry, _settings(args))
    if action == "list":
        from kronos_contract.challengers import challengers as listed

        pointer = registry.pointer()
        shadow = set(listed(registry))
        rows = []
        for version in registry.versions():
            manifest = registry.manifest(version)
            role = {pointer.get("version"): "champion", pointer.get("previous"): "previous"}.get(version, "")
            role = role or ("challenger" if version in shadow else "")
            rows.append(
                {
                    "version": version,
                    "role": role,
                    "created_at": manifest.get("created_at"),
                    "parent": manifest.get("parent"),
                }
            )
        if args.refused:
            rows += [{"version": v, "role": "refused"} for v in registry.refused()]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for row in rows:
                print(
                    f"{row['version']:<32} {row['role']:<10} {row.get('created_at') or '':<21} parent={row.get('parent')}"
                )
        return 0
    if action in ("show", "verify"):
        version = args.version or registry.champion()
        if version is None:
            raise DaemonError(
                f"{registry.url} has no champion; name a version (see 'kronos-stream models list')"
            )
        public_key = getattr(args, "key_object", None)
        if action == "show":
            print(json.dumps(registry.manifest(version), indent=2))
            return 0
        manifest = registry.verify(version, public_key)
        if public_key is not None:
            signed = "signature by the given key verifies"
        else:
            signed = "signed" if registry.signature(version) is not None else "unsigned"
            signed += ", signature not checked (no --public-key)"
        print(f"{version}: {len(manifest['files'])} files verify; {signed}")
        return 0
    if action == "sign":
        from kronos_contract.signing import load_private_key

        registry.sign(args.version, load_private_key(args.key))
        print(json.dumps({"signed": args.version}))
        return 0
    if action == "gc":
        print(json.dumps({"deleted": registry.gc(args.keep)}))
        return 0
    if action == "promote" and getattr(args, "key_object", None) is not None:
        registry.verify(args.version, args.key_object)  # daemons holding the key would refuse it
    version = registry.promote(args.version)["version"] if action == "promote" else registry.rollback()
    print(json.dumps({"champion": version, "previous": registry.previous()}))
    _models_hint(args, version)
    return 0


def _models_hint(args: argparse.Namespace, version: str) -> None:
    """Tell daemons the pointer moved (a hint: they poll the pointer anyway)."""
    import os

    if not (args.redis_url or os.environ.get("KRONOS_REDIS__URL")):
        return
    from daemon.state.redis_access import client_options
    from kronos_contract.registry import RegistryError, publish_hint

    redis = _settings(args).redis
    try:
        asyncio.run(publish_hint(redis.url, redis.key_prefix, version, **client_options(redis)))
    except RegistryError as exc:
        print(f"kronos-stream models: {exc}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
