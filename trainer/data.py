"""Training data: archive bars -> per-symbol series -> walk-forward split -> windows by index.

- A *window* is ``lookback + horizon`` consecutive bars of one symbol. It is normalised with the
  mean/std of its first ``lookback`` bars only (the context, as at inference), so no bar after the
  context shapes the normalised context, and the predictor's loss counts only the ``horizon``
  targets: no target bar ever shapes an input it is predicted from (upstream normalised each window
  with its own statistics, future included; its issues #227/#228).
- Walk-forward split: a cut time at ``1 - val_fraction`` of the data's time span. Training windows
  end before the cut; validation windows have their first target at or after the cut (their
  context may reach back before it: that history was known at the forecast origin).
- Windows are addressed by index (``WindowSet[i]``), so a sampler decides who sees what:
  :class:`RankSampler` shuffles per epoch with a seed of (seed, epoch), hands each rank a disjoint
  slice and can start in the middle of an epoch (resume); :func:`worker_seed` gives data-loader
  workers seeds that depend on seed, rank, epoch and worker.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from kronos_core.preprocess import FEATURE_COLUMNS, STD_EPS, time_features

CLOSE = FEATURE_COLUMNS.index("close")


class TrainingDataError(ValueError):
    """The archive slice cannot make a training run (empty, too short); the message says what to change."""


@dataclass(frozen=True)
class SymbolSeries:
    """One symbol's bars: features [N, 6] float32, calendar stamps [N, 5] float32, UTC times [N]."""

    symbol: str
    features: np.ndarray
    stamps: np.ndarray
    times: np.ndarray  # datetime64[ns], UTC

    def __len__(self) -> int:
        return len(self.features)


def series_from_frame(frame: pd.DataFrame, calendar_tz: str = "UTC") -> list[SymbolSeries]:
    """Split an archive frame (columns symbol, ts, open..amount) into per-symbol series, in time order.

    Calendar features (minute, hour, ...) are taken in ``calendar_tz`` (the zone the model was
    trained with, e.g. the exchange's)."""
    out = []
    for symbol, rows in frame.groupby("symbol", sort=True):
        rows = rows.sort_values("ts")
        ts = pd.DatetimeIndex(rows["ts"])
        ts = ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")
        values = rows[list(FEATURE_COLUMNS)].to_numpy(np.float64)
        if not np.isfinite(values).all():
            raise TrainingDataError(f"symbol {symbol!r}: the archive holds non-finite bar values")
        local = pd.Series(ts.tz_convert(calendar_tz).tz_localize(None))
        out.append(SymbolSeries(str(symbol), values.astype(np.float32), time_features(local),
                                ts.tz_localize(None).to_numpy("datetime64[ns]")))
    return out


def normalize_window(features: np.ndarray, lookback: int, clip: float = 5.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale a window [W, 6] by the mean/std of its first ``lookback`` rows (float32, clipped).

    Returns ``(x [W, 6], mean [6], std [6])``; rows after ``lookback`` never change the statistics."""
    context = np.asarray(features[:lookback], dtype=np.float64)  # float64: no summation-order noise
    mean, std = context.mean(axis=0), context.std(axis=0)
    x = np.clip((np.asarray(features, dtype=np.float64) - mean) / (std + STD_EPS), -clip, clip)
    return x.astype(np.float32), mean, std


class WindowSet(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Windows of ``lookback + horizon`` bars, addressed by index; ``[i] -> (x [W, 6], stamp [W, 5])``."""

    def __init__(self, series: Sequence[SymbolSeries], starts: Sequence[tuple[int, int]] | np.ndarray, lookback: int,
                 horizon: int, clip: float = 5.0) -> None:
        self.series = list(series)
        self.starts = np.asarray(starts, dtype=np.int64).reshape(-1, 2)  # (series index, first row)
        self.lookback, self.horizon, self.clip = lookback, horizon, clip

    @property
    def window(self) -> int:
        return self.lookback + self.horizon

    def __len__(self) -> int:
        return len(self.starts)

    def rows(self, i: int) -> tuple[SymbolSeries, int]:
        k, start = self.starts[i]
        return self.series[int(k)], int(start)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, start = self.rows(i)
        x, _, _ = normalize_window(s.features[start : start + self.window], self.lookback, self.clip)
        return torch.from_numpy(x), torch.from_numpy(s.stamps[start : start + self.window])

    def subset(self, count: int) -> WindowSet:
        """At most ``count`` windows, the same share from every symbol (what a symbol cannot fill goes to
        the others), each symbol's spread evenly over its windows (so over its whole held-out span of
        days); fixed, for evaluation."""
        if count >= len(self):
            return self
        by_series = [np.flatnonzero(self.starts[:, 0] == k) for k in np.unique(self.starts[:, 0])]
        quota = _fair_shares(count, [len(rows) for rows in by_series])
        pick = np.concatenate([
            rows[np.unique(np.linspace(0, len(rows) - 1, q).round().astype(np.int64))] if q else rows[:0]
            for rows, q in zip(by_series, quota, strict=True)
        ])  # fmt: skip
        return WindowSet(self.series, self.starts[np.sort(pick)], self.lookback, self.horizon, self.clip)

    def coverage(self) -> dict[str, object]:
        """Symbols and the span of days the windows' forecast origins cover."""
        origins = [s.times[start + self.lookback - 1] for s, start in (self.rows(i) for i in range(len(self)))]
        if not origins:
            return {"symbols": 0, "days": 0.0, "first_origin": None, "last_origin": None}
        first, last = min(origins), max(origins)
        return {
            "symbols": len({int(k) for k in self.starts[:, 0]}),
            "days": round(float((last - first) / np.timedelta64(1, "s")) / 86400.0, 3),
            "first_origin": str(pd.Timestamp(first).tz_localize("UTC")),
            "last_origin": str(pd.Timestamp(last).tz_localize("UTC")),
        }


def _fair_shares(total: int, sizes: Sequence[int]) -> list[int]:
    """``total`` split as evenly as possible over bins of the given ``sizes`` (none gets more than it holds)."""
    quota = [0] * len(sizes)
    left, open_ = total, [i for i, n in enumerate(sizes) if n > 0]
    while left > 0 and open_:
        share = max(1, left // len(open_))
        for i in list(open_):
            take = min(share, sizes[i] - quota[i], left)
            quota[i] += take
            left -= take
            if quota[i] >= sizes[i]:
                open_.remove(i)
            if left == 0:
                break
    return quota


@dataclass(frozen=True)
class Split:
    train: WindowSet
    val: WindowSet
    cut: dt.datetime
    summary: dict[str, object]


def walk_forward(series: Sequence[SymbolSeries], lookback: int, horizon: int, val_fraction: float,
                 *, train_stride: int = 1, val_stride: int | None = None) -> Split:
    """Training windows end before the cut; validation windows predict bars from the cut on."""
    if not series or all(len(s) == 0 for s in series):
        raise TrainingDataError("the archive slice holds no bars: check the archive path, time range and symbols")
    window = lookback + horizon
    first = min(s.times[0] for s in series if len(s))
    last = max(s.times[-1] for s in series if len(s))
    cut = (first + (last - first) * (1.0 - val_fraction)).astype("datetime64[us]")  # a whole microsecond
    val_stride = val_stride or horizon
    train, val, rows = [], [], {}
    for k, s in enumerate(series):
        n_train = int(np.searchsorted(s.times, cut, side="left"))  # rows [0, n_train) are before the cut
        train += [(k, i) for i in range(0, n_train - window + 1, train_stride)]
        # first target row t = i + lookback must be >= n_train; the window must fit
        first_start = max(0, n_train - lookback)
        val += [(k, i) for i in range(first_start, len(s) - window + 1, val_stride)]
        rows[s.symbol] = {"rows": len(s), "train_rows": n_train, "val_rows": len(s) - n_train}
    if not train:
        raise TrainingDataError(
            f"no training window of {window} bars (lookback {lookback} + horizon {horizon}) ends before the "
            f"walk-forward cut at {pd.Timestamp(cut)}; per symbol: {rows}. Widen the time range, lower "
            "--val-fraction or shorten --lookback/--horizon"
        )
    if not val:
        raise TrainingDataError(
            f"no validation window: after the cut at {pd.Timestamp(cut)} fewer than {horizon} bars follow a "
            f"{lookback}-bar context; per symbol: {rows}. Raise --val-fraction or widen the time range"
        )
    cut_dt = pd.Timestamp(cut).tz_localize("UTC").to_pydatetime()
    summary: dict[str, object] = {
        "first": str(pd.Timestamp(first).tz_localize("UTC")), "last": str(pd.Timestamp(last).tz_localize("UTC")),
        "cut": str(cut_dt), "train_windows": len(train), "val_windows": len(val), "symbols": rows,
        "rows": int(sum(len(s) for s in series)),
    }
    return Split(WindowSet(series, train, lookback, horizon), WindowSet(series, val, lookback, horizon),
                 cut_dt, summary)


# ----------------------------------------------------------------------------- sampling and seeds


def derive(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes and runs)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class RankSampler(Sampler[int]):
    """DistributedSampler's contract with a resumable start: epoch ``e`` shuffles all indices with
    seed ``derive(seed, e)``, drops the tail that does not fill ``world * batch`` and gives rank ``r``
    the rows ``r::world``; ``skip`` windows of this rank's share are skipped (resume mid-epoch)."""

    def __init__(self, size: int, *, rank: int, world: int, batch_size: int, seed: int, epoch: int = 0,
                 skip: int = 0) -> None:
        self.size, self.rank, self.world, self.batch_size = size, rank, world, batch_size
        self.seed, self.epoch, self.skip = seed, epoch, skip

    def per_rank(self) -> int:
        return (self.size // (self.world * self.batch_size)) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(derive("epoch", self.seed, self.epoch))
        order = torch.randperm(self.size, generator=g)[: self.per_rank() * self.world]
        return iter(order[self.rank :: self.world][self.skip :].tolist())

    def __len__(self) -> int:
        return max(0, self.per_rank() - self.skip)


def steps_per_epoch(size: int, world: int, batch_size: int) -> int:
    steps = size // (world * batch_size)
    if steps == 0:
        raise TrainingDataError(
            f"{size} training windows cannot fill one step of {world} processes x {batch_size} windows; "
            "lower --batch-size, use fewer processes or widen the time range"
        )
    return steps


def worker_seed(seed: int, rank: int, epoch: int, worker: int) -> int:
    return derive("worker", seed, rank, epoch, worker)


def position(step: int, per_epoch: int) -> tuple[int, int]:
    """(epoch, steps already taken in it) of a global step."""
    return step // per_epoch, step % per_epoch
