"""Pending forecasts: what online scoring keeps of each published forecast until its horizon bars
have arrived, and how the realised closes are found in the symbol's bar ring.

A forecast's record is JSON (arrays as base64 float64), kept in the score store's pending list of its
symbol (:mod:`daemon.scoring.store`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kronos_core.evaluation.publisher import b64_floats, floats_from_b64
from kronos_core.stream_types import SeriesForecast, SeriesWindow

CLOSE = 3  # index of the close among the six features


@dataclass
class PendingForecast:
    """What scoring needs of one published forecast (close only)."""

    version: str
    as_of: int  # epoch ns of the forecast's bar
    last_close: float
    levels: tuple[float, ...]
    mean: np.ndarray  # [H]
    quantiles: np.ndarray  # [Q, H] as published (calibrated when calibration is on)
    model_quantiles: np.ndarray  # [Q, H] the model's own
    paths: np.ndarray | None  # [S, H] the model's sample paths
    calibrated_paths: np.ndarray | None = None  # [J, H] the published distribution's grid (guarded)
    ticket: dict[str, Any] | None = None  # what the publisher needs back once realised

    @property
    def horizon(self) -> int:
        return int(self.mean.shape[0])

    def encode(self) -> bytes:
        h = self.horizon
        record: dict[str, Any] = {
            "v": self.version,
            "t": self.as_of,
            "c": self.last_close,
            "l": list(self.levels),
            "h": h,
            "m": b64_floats(self.mean),
            "q": b64_floats(self.quantiles),
            "mq": b64_floats(self.model_quantiles),
        }
        if self.paths is not None:
            record["s"] = int(self.paths.shape[0])
            record["p"] = b64_floats(self.paths)
        if self.calibrated_paths is not None:
            record["j"] = int(self.calibrated_paths.shape[0])
            record["cp"] = b64_floats(self.calibrated_paths)
        if self.ticket is not None:
            record["g"] = self.ticket
        return json.dumps(record, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> PendingForecast:
        d = json.loads(raw)
        h, q = int(d["h"]), len(d["l"])
        s = d.get("s")
        return cls(
            version=str(d["v"]),
            as_of=int(d["t"]),
            last_close=float(d["c"]),
            levels=tuple(float(x) for x in d["l"]),
            mean=floats_from_b64(d["m"], (h,)),
            quantiles=floats_from_b64(d["q"], (q, h)),
            model_quantiles=floats_from_b64(d["mq"], (q, h)),
            paths=None if s is None else floats_from_b64(d["p"], (int(s), h)),
            calibrated_paths=None if "cp" not in d else floats_from_b64(d["cp"], (int(d.get("j", s)), h)),
            ticket=d.get("g"),
        )


def pending_from(
    window: SeriesWindow,
    result: SeriesForecast,
    version: str,
    model_quantiles: np.ndarray | None = None,
    calibrated_paths: np.ndarray | None = None,
    ticket: dict[str, Any] | None = None,
) -> PendingForecast:
    """The pending record of a forecast as published (``result``), with the model's own close
    quantiles when calibration changed the published ones."""
    q = np.asarray(result.quantiles[:, :, CLOSE], dtype=np.float64)
    samples = result.samples
    paths = np.asarray(samples[:, :, CLOSE], dtype=np.float64) if samples.ndim == 3 and len(samples) else None
    return PendingForecast(
        version=version,
        as_of=int(np.asarray(window.timestamps[-1:], dtype="datetime64[ns]").astype(np.int64)[0]),
        last_close=float(window.values[-1, CLOSE]),
        levels=tuple(float(x) for x in result.quantile_levels),
        mean=np.asarray(result.mean[:, CLOSE], dtype=np.float64),
        quantiles=q,
        model_quantiles=q.copy()
        if model_quantiles is None
        else np.asarray(model_quantiles, dtype=np.float64),
        paths=paths,
        calibrated_paths=calibrated_paths,
        ticket=ticket,
    )


EXPIRED = "expired"


def realised_closes(timestamps: Sequence[int], closes: Sequence[float], pending: PendingForecast) -> Any:
    """The ``horizon`` closes after the forecast's bar in the ring; None while they have not all
    arrived; EXPIRED when the forecast's bar is no longer in the ring."""
    ts = np.asarray(timestamps, dtype=np.int64)
    i = int(np.searchsorted(ts, pending.as_of))
    if i >= len(ts) or ts[i] != pending.as_of:
        return EXPIRED if len(ts) and pending.as_of < ts[-1] else None
    after = closes[i + 1 : i + 1 + pending.horizon]
    if len(after) < pending.horizon:
        return None
    return np.asarray(after, dtype=np.float64)
