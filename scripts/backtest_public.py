"""The published backtests: the demo model on the bundled file's holdout and on public real bars of
other markets and intervals (``scripts/public_bars.py``, ``scripts/benchkit/public_bars.py``), each through ``kronos-stream backtest``.

    PYTHONPATH=. .venv/bin/python scripts/backtest_public.py [--only NAME ...] [--out results/backtest]

Writes ``OUT/NAME/backtest.{json,md,png}`` per data set and ``OUT/summary.md`` (a table of all).
The NASDAQ file is the development set the publisher's settings were chosen on; it is run and shown
too, marked as such. Nothing here is tuned on the other sets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from scripts.benchkit.public_bars import fetch

ROOT = Path(__file__).resolve().parents[1]

# name -> (what, CLI arguments after the CSV path)
SETS = {
    "a_share_5min": ("bundled A-share stock, 5-minute bars, the demo model's holdout",
                     ["--tz", "Asia/Shanghai", "--start", "2024-08-15T01:55:00", "--stride", "1", "--origins", "388"]),
    "eurusd_1h": ("EUR/USD spot, hourly (backtesting 0.6.6)", ["--origins", "400"]),
    "goog_1d": ("NASDAQ:GOOG, daily (backtesting 0.6.6)", ["--origins", "400"]),
    "sp500_1d": ("S&P 500 index, daily (arch 8.0.0)", ["--time-column", "Date", "--origins", "400"]),
    "nasdaq_1d_dev": ("NASDAQ Composite, daily (arch 8.0.0): DEVELOPMENT set", ["--time-column", "Date", "--origins", "400"]),
}
FILES = {"eurusd_1h": "EURUSD.csv", "goog_1d": "GOOG.csv", "sp500_1d": "SP500.csv", "nasdaq_1d_dev": "NASDAQ.csv"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", choices=sorted(SETS))
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "backtest")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from daemon.cli.main import main as cli

    files = fetch(ROOT / ".cache" / "public-bars")
    rows = []
    for name in args.only or list(SETS):
        what, extra = SETS[name]
        csv = ROOT / "daemon" / "assets" / "bars_5min_a_share.csv" if name == "a_share_5min" else files[FILES[name]]
        out = args.out / name
        argv = ["backtest", str(csv), "--symbol", name, "--warmup", "100", "--horizon", "12", "--samples", "32",
                "--threads", str(args.threads), "--out", str(out), *extra]  # fmt: skip
        print("kronos-stream " + " ".join(argv[:1] + [os.path.relpath(a, ROOT) if a.startswith("/") else a for a in argv[1:]]), flush=True)
        t0 = time.perf_counter()
        if cli(argv) != 0:
            return 1
        s = json.loads((out / "backtest.json").read_text())
        rows.append((name, what, s, time.perf_counter() - t0))
    lines = ["# Backtests of the demo model", "",
             "| data set | origins | published CRPS | model CRPS | rw_vol CRPS | persistence CRPS | published / better of model, rw_vol | "
             "published p10-p90 (steps min-max) | model p10-p90 | Brier up (running climatology) |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, what, s, _ in rows:
        cov = s["per_step"]["published"]["coverage_p10_p90"]
        lines.append(
            f"| {name}: {what} | {s['n_origins']} | {s['published']['crps']:.5f} | {s['model']['crps']:.5f} | "
            f"{s['baselines']['rw_vol']['crps']:.5f} | {s['baselines']['persistence']['crps']:.5f} | "
            f"{s['guard']['crps_vs_better_of_model_and_rw_vol']:.4f} | {s['published']['coverage_p10_p90']:.1%} "
            f"({min(cov):.1%}-{max(cov):.1%}) | {s['model']['coverage_p10_p90']:.1%} | "
            f"{s['published']['brier_up']:.4f} ({s['climatology']['brier_up']:.4f}) |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.only:
        (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
