"""``kronos-stream backtest``: walk-forward evaluation of a model on the user's own bars.

The forecasts come from the daemon's own forecaster (:func:`daemon.model.build.build_forecaster`, in
exact mode), the published distribution from the daemon's publisher
(:class:`kronos_core.evaluation.Publisher`, with the daemon's ``KRONOS_CALIBRATION__*`` settings) and
the scores from :mod:`kronos_core.evaluation.scores`, so the figures are what the daemon would publish
on those bars. See ``kronos_core/evaluation/walk.py`` for the walk itself.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from daemon.errors import ConfigError

DEMO = "demo"


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "backtest",
        help="walk-forward backtest of a model on your bars (CSV or the archive) against baselines",
        description=(
            "Rolling forecasts from origins spread over the tail of your bars, published as the daemon "
            "would (calibrated and guarded) and scored against persistence and a random walk with rolling "
            "volatility: CRPS, MAE, pinball loss, band coverage, PIT, P(up) Brier score, skill with a "
            "Diebold-Mariano test. Writes backtest.json, backtest.md and backtest.png to --out."
        ),
    )
    src = p.add_argument_group("bars")
    src.add_argument("csv", nargs="*", type=Path, help="CSV files of bars (columns in any case; see --time-column)")
    src.add_argument("--symbol", help="symbol of a CSV without a symbol column (default: the file's name)")
    src.add_argument("--time-column", help="the timestamp column (default: timestamps/timestamp/time/date, else the first)")
    src.add_argument("--tz", default="UTC", help="time zone of naive timestamps (default UTC)")
    src.add_argument("--archive", help="read the Parquet archive at this root (folder or fsspec URL) instead")
    src.add_argument("--symbols", help="comma-separated symbols to read from the archive (default: all)")
    src.add_argument("--from", dest="since", help="first bar time to read from the archive (ISO, UTC)")
    src.add_argument("--to", dest="until", help="last bar time to read from the archive (ISO, UTC)")
    m = p.add_argument_group("model")
    m.add_argument(
        "--model", default=DEMO,
        help="'demo' (the bundled model), a folder holding tokenizer/ and predictor/, a predictor folder "
             "(with --tokenizer), or a Hugging Face id such as NeoQuasar/Kronos-small (with --tokenizer)",
    )  # fmt: skip
    m.add_argument("--tokenizer", help="tokenizer folder or Hugging Face id, when --model names only the predictor")
    m.add_argument("--registry", help="a model registry (fsspec URL): backtest its --version (default: the champion)")
    m.add_argument("--version", help="the registry version to backtest")
    m.add_argument("--max-context", type=int, help="the model's max_context (default: its manifest's, else 512)")
    m.add_argument("--threads", type=int, help="torch CPU threads")
    m.add_argument("--device", default="auto", help="cpu, cuda or auto")
    w = p.add_argument_group("walk")
    w.add_argument("--horizon", type=int, default=12, help="bars forecast from each origin (default 12)")
    w.add_argument("--samples", type=int, default=32, help="sample paths per forecast (default 32)")
    w.add_argument("--context", type=int, help="bars of context per forecast (default: max_context - horizon)")
    w.add_argument("--origins", type=int, default=300, help="scored origins per symbol, spread over the tail (default 300)")
    w.add_argument("--stride", type=int, help="bars between origins (instead of spreading --origins)")
    w.add_argument("--warmup", type=int, default=100, help="origins before the scored ones that only train the publisher")
    w.add_argument("--start", help="no origin before this time (ISO, UTC): e.g. the start of a model's holdout")
    w.add_argument("--vol-window", type=int, default=100, help="returns in the rolling-volatility walk (default 100)")
    w.add_argument("--batch", type=int, default=64, help="windows per model call (default 64)")
    p.add_argument("--out", type=Path, default=Path("backtest"), help="folder for backtest.json/.md/.png")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def _model_settings(args: argparse.Namespace) -> dict[str, Any]:
    from daemon.demo.config import MAX_CONTEXT, MODEL_DIR

    model: dict[str, Any] = {"horizon": args.horizon, "sample_count": args.samples, "device": args.device}
    max_context = args.max_context or (MAX_CONTEXT if args.model == DEMO and not args.registry else None)
    if max_context is not None and not 1 <= args.horizon < max_context:
        raise ConfigError(f"--horizon {args.horizon} exceeds the model's max_context {max_context}: lower --horizon")
    if args.threads:
        model["threads"] = args.threads
    if args.registry:
        if args.model != DEMO or args.tokenizer:
            raise ConfigError("--registry names the model: leave --model and --tokenizer out")
        return model | {"registry": args.registry}
    if args.model == DEMO:
        return model | {"tokenizer_dir": MODEL_DIR / "tokenizer", "predictor_dir": MODEL_DIR / "predictor",
                        "max_context": args.max_context or MAX_CONTEXT}  # fmt: skip
    folder = Path(args.model)
    if folder.is_dir() and (folder / "predictor").is_dir() and (folder / "tokenizer").is_dir():
        return model | {"tokenizer_dir": folder / "tokenizer", "predictor_dir": folder / "predictor"}
    if not args.tokenizer:
        raise ConfigError(
            f"--model {args.model}: not a folder holding tokenizer/ and predictor/; name the tokenizer with "
            "--tokenizer (a folder or a Hugging Face id such as NeoQuasar/Kronos-Tokenizer-base)"
        )
    if folder.is_dir():
        return model | {"predictor_dir": folder, "tokenizer_dir": Path(args.tokenizer)}
    return model | {"hf_predictor": args.model, "hf_tokenizer": args.tokenizer}


def build_backtest_forecaster(args: argparse.Namespace, cache: Path) -> Any:
    """The daemon's forecaster (exact mode) for the model the arguments name."""
    from daemon.model.build import build_forecaster
    from daemon.model.manifest import prepare_model_settings
    from daemon.settings import load_settings

    model = _model_settings(args)
    if args.max_context and "max_context" not in model:
        model["max_context"] = args.max_context
    if model.get("registry"):
        from kronos_contract.registry import Registry, RegistryError

        try:
            registry = Registry(model.pop("registry"))
            version = args.version or registry.champion()
            if version is None:
                raise ConfigError(f"--registry {args.registry}: no champion yet; name a --version")
            local = registry.fetch(version, cache / version)
        except RegistryError as exc:
            raise ConfigError(f"--registry {args.registry}: {exc}") from exc
        model |= {"tokenizer_dir": local.tokenizer_dir, "predictor_dir": local.predictor_dir, "version": version}
    settings = load_settings(model=model, mode="exact", http_port=None, log_level="WARNING")
    return build_forecaster(prepare_model_settings(settings))


def load_bars(args: argparse.Namespace) -> dict[str, Any]:
    from kronos_core.evaluation import load_bars_csv
    from kronos_core.evaluation.data import frame_to_bars

    if bool(args.csv) == bool(args.archive):
        raise ConfigError("name the bars: one or more CSV files, or --archive ROOT (not both)")
    bars: dict[str, Any] = {}
    if args.archive:
        from kronos_contract.archive import read_bars

        symbols = [s for s in (args.symbols or "").split(",") if s] or None
        frame = read_bars(args.archive, symbols=symbols, start=args.since, end=args.until)
        if frame.empty:
            raise ConfigError(f"--archive {args.archive}: no bars for {symbols or 'any symbol'} in that range")
        return frame_to_bars(frame, "archive", "UTC", "ts")
    for path in args.csv:
        symbol = args.symbol if len(args.csv) == 1 else None
        for name, b in load_bars_csv(path, symbol, args.tz, args.time_column).items():
            if name in bars:
                raise ConfigError(f"symbol {name} appears in two files; give each file its own symbol column")
            bars[name] = b
    return bars


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from daemon.cli.progress import Progress
    from kronos_core.evaluation import BacktestConfig, run_backtest
    from kronos_core.evaluation.report import summary_table, write_report
    from kronos_core.exceptions import InputError

    try:
        bars = load_bars(args)
        cfg = BacktestConfig(
            horizon=args.horizon, origins=args.origins, stride=args.stride, warmup=args.warmup,
            context=args.context, batch=args.batch, vol_window=args.vol_window,
            start=None if args.start is None else np.datetime64(args.start.replace("Z", ""), "ns"),
        )  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="kronos-backtest-") as cache:
            forecaster = build_backtest_forecaster(args, Path(cache))
            progress = Progress("backtest", unit="forecasts", enabled=not args.quiet)

            def report(done: int, total: int) -> None:
                progress.total = total
                progress.update(done)

            result = run_backtest(forecaster, bars, cfg, progress=report)
            progress.finish(result.summary["run"]["forecasts"])
    except (InputError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
    paths = write_report(result, args.out)
    print(summary_table(result.summary))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
