"""The library against the daemon: ``KronosPredictor.predict_batch`` on the daemon's burst windows.

The daemon's burst benchmark (``scripts/bench_load.py``, ``results/bench_burst_final.md``) sends one
bar for each of 128 symbols at once; in exact mode the daemon then makes one model call over 128
windows of ``max_context - horizon`` bars (the demo model: max_context 128, horizon 12, 8 sample
paths, one torch thread). This script builds the same call both ways, in one process, interleaved
(daemon, library, daemon, library, ...):

- *daemon*: ``StreamingForecaster.forecast`` in exact mode, the daemon's own model call (what its
  ``model`` timing covers: normalisation, calendar features, prefill, horizon, quantiles);
- *library*: ``KronosPredictor.predict_batch`` over the same windows as DataFrames with their
  timestamps and the same seeds (validation, normalisation, calendar features, generation, result
  frames).

It reports both times (median and fastest of the rounds), their ratio, and how far the library's
mean paths are from the daemon's (they run the same engine). ``predict``, ``predict_samples`` and
``predict_quantiles`` on one window are timed against a one-window daemon call the same way. Writes
``--out`` (JSON, default ``results/bench_predictor.json``) and a Markdown table beside it, with
``/proc/loadavg`` before and after (the machine may be shared). Run: ``PYTHONPATH=. .venv/bin/python scripts/bench_predictor.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from kronos_core import Kronos, KronosPredictor, KronosTokenizer
from kronos_core.bench_efficiency import load_average
from kronos_core.engine import SamplingParams
from kronos_core.stream_types import SeriesWindow
from kronos_core.streaming import StreamConfig, StreamingForecaster
from scripts.benchkit.demo import BARS_CSV, COLUMNS
from scripts.benchkit.demo import DEMO_MODEL as MODEL
from scripts.benchkit.timing import interleaved_rounds

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--symbols", type=int, default=128)
    p.add_argument("--paths", type=int, default=8)
    p.add_argument("--horizon", type=int, default=12)
    p.add_argument("--max-context", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=REPO / "results" / "bench_predictor.json")
    return p.parse_args(argv)


def _windows(n: int, lookback: int, horizon: int) -> tuple[list[SeriesWindow], list[pd.DataFrame], list[pd.Series], list[pd.Series]]:
    """``n`` windows of the bundled 5-minute bars at different offsets, both as the daemon's
    SeriesWindow and as predict_batch's (frame, x_timestamp, y_timestamp)."""
    bars = pd.read_csv(BARS_CSV, parse_dates=["timestamps"])
    room = len(bars) - lookback
    windows, frames, x_ts, y_ts = [], [], [], []
    for i in range(n):
        start = (17 * i) % room
        part = bars.iloc[start : start + lookback]
        ts = part["timestamps"].to_numpy("datetime64[ns]")
        future = ts[-1] + np.arange(1, horizon + 1) * np.timedelta64(5, "m")
        windows.append(SeriesWindow(f"S{i:04d}", part[COLUMNS].to_numpy(np.float64), ts, future, seed=1000 + i))
        frames.append(part[COLUMNS].reset_index(drop=True))
        x_ts.append(pd.Series(ts))
        y_ts.append(pd.Series(future))
    return windows, frames, x_ts, y_ts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    tokenizer = KronosTokenizer.from_pretrained(MODEL / "tokenizer")
    model = Kronos.from_pretrained(MODEL / "predictor")
    predictor = KronosPredictor(model, tokenizer, device="cpu", max_context=args.max_context)
    params = SamplingParams(sample_count=args.paths)
    # The daemon's forecaster over the predictor's own engine: one model, two entry points.
    forecaster = StreamingForecaster(
        predictor.engine, StreamConfig(mode="exact", sampling=params), model_version="bench"
    )
    lookback = forecaster.lookback(args.horizon)
    windows, frames, x_ts, y_ts = _windows(args.symbols, lookback, args.horizon)
    seeds = [w.seed for w in windows]
    out: dict[str, Any] = {}

    def daemon() -> None:
        out["daemon"] = forecaster.forecast(windows, args.horizon)

    def library() -> None:
        out["library"] = predictor.predict_batch(
            frames, x_ts, y_ts, args.horizon, sample_count=args.paths, seeds=seeds, verbose=False
        )

    one = windows[:1]

    def daemon_one() -> None:
        out["daemon_one"] = forecaster.forecast(one, args.horizon)

    def predict() -> None:
        predictor.predict(frames[0], x_ts[0], y_ts[0], args.horizon, sample_count=args.paths, seed=seeds[0], verbose=False)

    def samples() -> None:
        predictor.predict_samples(frames[0], x_ts[0], y_ts[0], args.horizon, sample_count=args.paths, seed=seeds[0])

    def quantiles() -> None:
        predictor.predict_quantiles(frames[0], x_ts[0], y_ts[0], args.horizon, sample_count=args.paths, seed=seeds[0])

    load_before = load_average()
    burst = interleaved_rounds({"daemon": daemon, "library": library}, args.rounds)
    single = interleaved_rounds(
        {"daemon": daemon_one, "predict": predict, "predict_samples": samples, "predict_quantiles": quantiles},
        args.rounds,
    )
    load_after = load_average()
    lib_mean = np.stack([f.to_numpy() for f in out["library"]])
    dmn_mean = np.stack([f.mean for f in out["daemon"]])
    rel = float(np.abs(lib_mean - dmn_mean).max() / np.abs(dmn_mean).max())

    def summary(ts: list[float]) -> dict[str, Any]:
        return {"seconds": ts, "median_s": statistics.median(ts), "fastest_s": min(ts)}

    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "model": "demo (daemon/assets/demo-model)",
        "symbols": args.symbols, "paths": args.paths, "horizon": args.horizon,
        "max_context": args.max_context, "lookback": lookback, "rounds": args.rounds,
        "burst": {k: summary(v) for k, v in burst.items()},
        "burst_ratio_median": statistics.median(burst["library"]) / statistics.median(burst["daemon"]),
        "burst_ratio_fastest": min(burst["library"]) / min(burst["daemon"]),
        "burst_ratio_per_round": [lib / dmn for lib, dmn in zip(burst["library"], burst["daemon"], strict=True)],
        "mean_path_max_rel_diff": rel,
        "single": {k: summary(v) for k, v in single.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    b = result["burst"]
    lines = [
        f"# KronosPredictor against the daemon's model call ({args.symbols} windows, {args.paths} paths)",
        "",
        f"{result['when']}; {result['machine']}; loadavg before {load_before}, after {load_after} "
        "(the machine is shared with other jobs). "
        f"Model {result['model']}, max_context {args.max_context}, horizon {args.horizon}, windows of "
        f"{lookback} bars (what the daemon's exact mode feeds), {args.rounds} interleaved rounds in one process. "
        f"Command: `PYTHONPATH=. .venv/bin/python scripts/bench_predictor.py`.",
        "",
        "| call | median ms | fastest ms |",
        "|---|---:|---:|",
        f"| daemon: `StreamingForecaster.forecast` ({args.symbols} windows) | {b['daemon']['median_s'] * 1e3:.0f} | "
        f"{b['daemon']['fastest_s'] * 1e3:.0f} |",
        f"| library: `KronosPredictor.predict_batch` ({args.symbols} frames) | {b['library']['median_s'] * 1e3:.0f} | "
        f"{b['library']['fastest_s'] * 1e3:.0f} |",
    ]
    for name, s in result["single"].items():
        label = "daemon: one window" if name == "daemon" else f"library: `{name}` (one frame)"
        lines.append(f"| {label} | {s['median_s'] * 1e3:.1f} | {s['fastest_s'] * 1e3:.1f} |")
    lines += [
        "",
        f"predict_batch / daemon: **{result['burst_ratio_median']:.3f}** (medians), "
        f"{result['burst_ratio_fastest']:.3f} (fastest), per round "
        + ", ".join(f"{r:.3f}" for r in result["burst_ratio_per_round"]) + ". "
        f"The library's mean paths differ from the daemon's by at most {rel:.1e} of the largest value "
        "(the daemon averages the paths in float64, the library in float32, as upstream).",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
