"""DataFrame validation, instance normalisation and calendar features (upstream preprocessing).

Plain functions so the predictor, the engine and the trainer share one implementation:

1. :func:`prepare_features`: check the frame, fill ``volume``/``amount`` like upstream, and
   return the six feature columns as float32 [T, 6].
2. :func:`time_features`: minute, hour, weekday, day, month as float32 [T, 5].
3. :func:`normalize`: per-column mean/std over the window (float32, population std),
   ``(x - mean) / (std + 1e-5)`` clipped to ``±clip``; :func:`denormalize` undoes the scaling.
4. :func:`prepare_series`: all of the above for one ``predict`` call, with the checks that
   tie the frame, its timestamps and ``pred_len`` together.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kronos_core.exceptions import InputError

PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
VOLUME_COLUMN = "volume"
AMOUNT_COLUMN = "amount"
FEATURE_COLUMNS: tuple[str, ...] = (*PRICE_COLUMNS, VOLUME_COLUMN, AMOUNT_COLUMN)
TIME_FEATURE_COLUMNS: tuple[str, ...] = ("minute", "hour", "weekday", "day", "month")
STD_EPS = 1e-5


def _where(label: str) -> str:
    return f" ({label})" if label else ""


def fill_volume_amount(df: pd.DataFrame) -> pd.DataFrame:
    """Upstream filling rules on a copy: no ``volume`` -> ``volume`` and ``amount`` are 0;
    ``volume`` but no ``amount`` -> ``amount = volume * mean(open, high, low, close)``."""
    out = df.copy()
    if VOLUME_COLUMN not in out.columns:
        out[VOLUME_COLUMN] = 0.0
        out[AMOUNT_COLUMN] = 0.0
    if AMOUNT_COLUMN not in out.columns:
        out[AMOUNT_COLUMN] = out[VOLUME_COLUMN] * out[list(PRICE_COLUMNS)].mean(axis=1)
    return out


def prepare_features(df: Any, label: str = "") -> np.ndarray:
    """Validate a bar frame and return its features (open, high, low, close, volume, amount).  # [T, 6] float32

    Volume and amount are filled as :func:`fill_volume_amount` does, from the columns' arrays
    (no copy of the frame)."""
    where = _where(label)
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"expected a pandas DataFrame of bars{where}, got {type(df).__name__}")
    missing = [c for c in PRICE_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(
            f"DataFrame{where} is missing price columns {missing}; it needs {list(PRICE_COLUMNS)} "
            f"(optionally {VOLUME_COLUMN!r} and {AMOUNT_COLUMN!r}), got columns {list(df.columns)}"
        )
    if len(df) == 0:
        raise InputError(f"DataFrame{where} has no rows; pass at least one bar of context")
    x = np.zeros((len(df), len(FEATURE_COLUMNS)), dtype=np.float64)
    try:
        for i, c in enumerate(FEATURE_COLUMNS):
            if c in df.columns and (c != AMOUNT_COLUMN or VOLUME_COLUMN in df.columns):
                x[:, i] = df[c].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"DataFrame{where}: columns {list(FEATURE_COLUMNS)} must be numeric ({exc})") from exc
    if VOLUME_COLUMN in df.columns and AMOUNT_COLUMN not in df.columns:
        x[:, 5] = x[:, 4] * df[list(PRICE_COLUMNS)].mean(axis=1).to_numpy(dtype=np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        rows, cols = np.nonzero(bad)
        names = sorted({FEATURE_COLUMNS[c] for c in cols})
        raise InputError(
            f"DataFrame{where} contains NaN or infinite values in {names} (first at row {int(rows[0])}); "
            "drop or fill those rows before predicting"
        )
    return x.astype(np.float32)


def to_datetime_series(timestamps: Any, label: str = "timestamps") -> pd.Series:
    """Timestamps (Series, DatetimeIndex, array or list) as a datetime Series."""
    if isinstance(timestamps, pd.DataFrame) or np.ndim(timestamps) != 1:
        raise InputError(f"{label} must be a one-dimensional sequence of timestamps (a Series or DatetimeIndex)")
    try:
        with warnings.catch_warnings():  # pandas warns when it has to guess a string format
            warnings.simplefilter("ignore", UserWarning)
            series = pd.Series(pd.to_datetime(timestamps))
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputError(f"{label} could not be read as timestamps: {exc}") from exc
    if series.isna().any():
        raise InputError(f"{label} contains missing timestamps (NaT); every row needs a timestamp")
    return series


def time_features(timestamps: Any, label: str = "timestamps") -> np.ndarray:
    """Minute, hour, weekday (Monday = 0), day of month, month, of the wall-clock time (a zone-aware
    input is read in its own zone).  # [T, 5] float32"""
    return calendar_fields(_wall_clock(timestamps, label))


def _wall_clock(timestamps: Any, label: str) -> np.ndarray:
    """Timestamps as wall-clock ``datetime64[ns]`` (zone-aware ones in their own zone).  # [T]

    Values that already are datetimes (a Series, DatetimeIndex or array) skip the parsing of
    :func:`to_datetime_series`; anything else goes through it."""
    dtype = getattr(timestamps, "dtype", None)
    if isinstance(timestamps, pd.Series | pd.DatetimeIndex | np.ndarray) and np.ndim(timestamps) == 1:
        values: np.ndarray | None = None
        if isinstance(dtype, pd.DatetimeTZDtype):
            index = pd.DatetimeIndex(timestamps)  # a Series or DatetimeIndex (arrays carry no zone)
            values = index.tz_localize(None).to_numpy(dtype="datetime64[ns]")
        elif isinstance(dtype, np.dtype) and dtype.kind == "M":
            values = np.asarray(timestamps).astype("datetime64[ns]")
        if values is not None:
            if np.isnat(values).any():
                raise InputError(f"{label} contains missing timestamps (NaT); every row needs a timestamp")
            return values
    series = to_datetime_series(timestamps, label)
    if series.dt.tz is not None:
        series = series.dt.tz_localize(None)  # the local wall-clock time
    return series.to_numpy(dtype="datetime64[ns]")


def calendar_fields(ts: np.ndarray) -> np.ndarray:
    """:func:`time_features` of wall-clock ``datetime64`` values, in numpy (no pandas accessors).  # [T, 5] float32"""
    ts = np.asarray(ts, dtype="datetime64[ns]")
    minutes = ts.astype("datetime64[m]").astype(np.int64)
    days = ts.astype("datetime64[D]")
    months = ts.astype("datetime64[M]")
    out = np.empty((len(ts), 5), dtype=np.float32)
    out[:, 0] = minutes % 60
    out[:, 1] = (minutes // 60) % 24
    out[:, 2] = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday (3 with Monday = 0)
    out[:, 3] = (days - months.astype("datetime64[D]")).astype(np.int64) + 1
    out[:, 4] = months.astype(np.int64) % 12 + 1
    return out


def normalize(x: np.ndarray, clip: float = 5.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Instance normalisation over rows: ``(clip((x - mean) / (std + 1e-5)), mean, std)``, float32."""
    x = np.asarray(x, dtype=np.float32)
    mean, std = np.mean(x, axis=0), np.std(x, axis=0)
    x_norm = np.clip((x - mean) / (std + STD_EPS), -clip, clip)
    return x_norm.astype(np.float32), mean, std


def denormalize(x_norm: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Inverse scaling of :func:`normalize` (clipping is not undone)."""
    return x_norm * (std + STD_EPS) + mean


@dataclass(frozen=True)
class PreparedSeries:
    """One series ready for generation."""

    x: np.ndarray  # [T, 6] normalised, clipped, float32
    x_stamp: np.ndarray  # [T, 5] float32
    y_stamp: np.ndarray  # [pred_len, 5] float32
    mean: np.ndarray  # [6] float32
    std: np.ndarray  # [6] float32
    y_index: Any  # the caller's y_timestamp, used as the result index


def check_pred_len(pred_len: Any, max_context: int) -> int:
    if isinstance(pred_len, bool) or not isinstance(pred_len, int | np.integer) or pred_len < 1:
        raise InputError(f"pred_len must be a positive integer, got {pred_len!r}")
    if pred_len > max_context:
        raise InputError(
            f"pred_len={pred_len} exceeds max_context={max_context}: the forecast is decoded from the last "
            "max_context tokens; raise max_context or forecast fewer steps"
        )
    return int(pred_len)


def prepare_series(
    df: Any, x_timestamp: Any, y_timestamp: Any, pred_len: int, clip: float = 5.0, label: str = ""
) -> PreparedSeries:
    """Validate one ``predict`` input and normalise it."""
    where = _where(label)
    x_raw = prepare_features(df, label)
    x_stamp = time_features(x_timestamp, f"x_timestamp{where}")
    y_stamp = time_features(y_timestamp, f"y_timestamp{where}")
    if len(x_stamp) != len(x_raw):
        raise InputError(
            f"x_timestamp{where} has {len(x_stamp)} entries but the DataFrame has {len(x_raw)} rows; "
            "pass one timestamp per context row"
        )
    if len(y_stamp) != pred_len:
        raise InputError(
            f"y_timestamp{where} has {len(y_stamp)} entries but pred_len={pred_len}; "
            "pass one future timestamp per forecast step"
        )
    x, mean, std = normalize(x_raw, clip)
    return PreparedSeries(x=x, x_stamp=x_stamp, y_stamp=y_stamp, mean=mean, std=std, y_index=y_timestamp)


def forecast_frame(preds_norm: np.ndarray, series: PreparedSeries) -> pd.DataFrame:
    """Denormalise [pred_len, 6] predictions into the upstream result frame."""
    values = denormalize(preds_norm, series.mean, series.std)
    return pd.DataFrame(values, columns=list(FEATURE_COLUMNS), index=series.y_index)


def check_same_length(items: Sequence[Any], names: Sequence[str]) -> None:
    lengths = [len(i) for i in items]
    if len(set(lengths)) != 1:
        raise InputError(
            f"{', '.join(names)} must have the same number of entries, got {dict(zip(names, lengths, strict=True))}"
        )
