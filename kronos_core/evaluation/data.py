"""Bars as users have them: a CSV file read into per-symbol arrays for the backtest.

Accepted: column names in any case (``Open``/``open``/``OPEN``); the timestamp in the column named by
``time_column``, else the first of ``timestamps``/``timestamp``/``time``/``date``/``datetime`` present,
else the first column (an unnamed index column, as pandas writes it); ``open``, ``high``, ``low`` and
``close`` required, ``volume`` and ``amount`` optional (0, and ``volume * mean price`` when missing);
an optional ``symbol`` column (else every row belongs to ``symbol``). Naive timestamps are read in
``tz`` (default UTC); rows are sorted by time and duplicate timestamps keep the last row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kronos_core.exceptions import InputError

PRICES = ("open", "high", "low", "close")
TIME_NAMES = ("timestamps", "timestamp", "time", "date", "datetime")


@dataclass
class Bars:
    """One symbol's bars, oldest first."""

    symbol: str
    timestamps: np.ndarray  # datetime64[ns], UTC
    values: np.ndarray  # float64 [N, 6] open, high, low, close, volume, amount

    def __len__(self) -> int:
        return len(self.timestamps)

    @property
    def closes(self) -> np.ndarray:
        return self.values[:, 3]


def frame_to_bars(frame: pd.DataFrame, symbol: str, tz: str = "UTC", time_column: str | None = None) -> dict[str, Bars]:
    """A DataFrame of bars -> {symbol: Bars}; see the module docstring for what is accepted."""
    df = frame.rename(columns={c: str(c).strip().lower() for c in frame.columns})
    if time_column is not None:
        key = time_column.strip().lower()
        if key not in df.columns:
            raise InputError(f"no time column {time_column!r}; the columns are {list(frame.columns)}")
    else:
        key = next((n for n in TIME_NAMES if n in df.columns), str(df.columns[0]))
    missing = [c for c in PRICES if c not in df.columns]
    if missing:
        raise InputError(f"the bars lack the column(s) {missing}; they need open, high, low, close (any case)")
    try:
        ts = pd.to_datetime(df[key])
    except (ValueError, TypeError) as exc:
        raise InputError(f"column {key!r} does not hold timestamps ({exc}); name the time column with --time-column") from exc
    try:
        ts = ts.dt.tz_localize(tz) if ts.dt.tz is None else ts
    except Exception as exc:  # noqa: BLE001 - pytz/zoneinfo raise several types
        raise InputError(f"cannot read the timestamps in time zone {tz!r}: {exc}") from exc
    out = pd.DataFrame({c: pd.to_numeric(df[c], errors="coerce") for c in PRICES})
    out["volume"] = pd.to_numeric(df["volume"], errors="coerce") if "volume" in df.columns else 0.0
    if "amount" in df.columns:
        out["amount"] = pd.to_numeric(df["amount"], errors="coerce")
    else:
        out["amount"] = out["volume"] * out[list(PRICES)].mean(axis=1)
    out["ts"] = ts.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
    out["symbol"] = df["symbol"].astype(str) if "symbol" in df.columns else symbol
    bad = out[list(PRICES)].isna().any(axis=1) | ~(out[list(PRICES)] > 0).all(axis=1)
    if bad.all():
        raise InputError("no row has positive open, high, low and close")
    out = out[~bad]
    bars: dict[str, Bars] = {}
    for name, part in out.groupby("symbol", sort=True):
        part = part.sort_values("ts", kind="stable").drop_duplicates("ts", keep="last")
        values = part[["open", "high", "low", "close", "volume", "amount"]].fillna(0.0).to_numpy(np.float64)
        bars[str(name)] = Bars(str(name), part["ts"].to_numpy(dtype="datetime64[ns]"), values)
    return bars


def load_bars_csv(path: str | Path, symbol: str | None = None, tz: str = "UTC", time_column: str | None = None) -> dict[str, Bars]:
    """Read a CSV of bars (plain or .gz) -> {symbol: Bars}; ``symbol`` defaults to the file's stem."""
    p = Path(path)
    try:
        frame = pd.read_csv(p)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {p}: {exc}") from exc
    if frame.empty:
        raise InputError(f"{p} holds no rows")
    return frame_to_bars(frame, symbol or p.name.split(".")[0], tz, time_column)
