"""Benchmark: the backtest's forecasts/s against the engine's batched forecasts/s on the same windows.

    python scripts/bench_backtest.py [--origins 300] [--samples 32] [--batch 64] [--threads 2] [--out results/backtest/bench]

One run, the demo model (exact mode) on the bundled file: (1) the backtest's windows go through the
forecaster in batches of ``--batch`` and are timed alone; (2) ``run_backtest`` on the same bars and
origins is timed whole (its windows, the model, the publisher, the scores). The ratio (2)/(1) in
forecasts/s is the backtest's efficiency: 1.0 means it costs nothing beyond the model. The two are
interleaved three times on one forecaster, after an untimed pass, and the best of each is kept. Writes
``OUT.json`` and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--origins", type=int, default=300)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "backtest" / "bench")
    args = ap.parse_args()

    from daemon.cli.backtest import build_backtest_forecaster
    from kronos_core.evaluation import BacktestConfig, load_bars_csv, run_backtest
    from kronos_core.evaluation.walk import _context, _windows, forecast_all, plan_origins

    ns = argparse.Namespace(model="demo", tokenizer=None, registry=None, version=None, max_context=None,
                            threads=args.threads, device="cpu", horizon=12, samples=args.samples)  # fmt: skip
    forecaster = build_backtest_forecaster(ns, Path("/tmp"))
    bars = load_bars_csv(ROOT / "daemon" / "assets" / "bars_5min_a_share.csv", "DEMO", "Asia/Shanghai")
    cfg = BacktestConfig(horizon=12, origins=args.origins, warmup=0, batch=args.batch)
    context = _context(forecaster, cfg)
    origins, _ = plan_origins(bars["DEMO"], cfg, context)
    windows = _windows(bars["DEMO"], origins, context, cfg.horizon, forecaster.model_version)
    # the first pass over a batch size pays one-time costs (allocations, kernel choice): not timed
    forecast_all(forecaster, windows, cfg.horizon, args.batch)
    engine, backtest = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        forecast_all(forecaster, windows, cfg.horizon, args.batch)
        engine.append(len(windows) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        result = run_backtest(forecaster, bars, cfg)
        backtest.append(result.summary["run"]["forecasts"] / (time.perf_counter() - t0))
    ratio = max(backtest) / max(engine)
    record = {
        "command": "python scripts/bench_backtest.py " + " ".join(sys.argv[1:]),
        "forecasts": len(windows), "batch": args.batch, "samples": args.samples, "threads": args.threads,
        "engine_forecasts_per_s": [round(x, 2) for x in engine],
        "backtest_forecasts_per_s": [round(x, 2) for x in backtest],
        "ratio_best": round(ratio, 4), "loadavg": os.getloadavg(),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(
        "# Backtest against the engine, same windows, one run\n\n"
        f"`{record['command']}`\n\n| | forecasts/s (two runs) |\n|---|---|\n"
        f"| engine, batches of {args.batch} | {record['engine_forecasts_per_s']} |\n"
        f"| backtest (windows, model, publisher, scores) | {record['backtest_forecasts_per_s']} |\n\n"
        f"Ratio of the best runs: **{ratio:.3f}** ({len(windows)} forecasts, {args.samples} paths, "
        f"{args.threads} threads; load average {tuple(round(x, 2) for x in record['loadavg'])}).\n"
    )
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
