"""Split-conformal calibration of the published close quantiles (``KRONOS_SCORING__CALIBRATE=true``).

For each model version, horizon step k and quantile level q, the calibration set is the last
``KRONOS_SCORING__CALIBRATION_WINDOW`` forecasts whose horizon has been realised (online scoring feeds
them in as they complete, so only the past is used). Their residuals are taken relative to the last
close, ``r = (realised close - model quantile) / last close``, which pools symbols of any price. A new
forecast's q-quantile is then published as ``model quantile + c_q * last close``, with ``c_q`` the
conformal q-quantile of the residuals: the ``ceil((n + 1) q)``-th smallest for ``q > 0.5`` and the
``floor((n + 1) q)``-th for ``q < 0.5`` (the finite-sample rule of split-conformal prediction). Each
such quantile is then marginally calibrated on exchangeable data, so the p10-p90 band's coverage
approaches 80%; levels stay ordered. The median (``q = 0.5``) is left as the model made it: on the
demo's bars shifting it too worsened the p50 pinball loss and the CRPS in both modes
(``results/calibration.md``).

Until ``KRONOS_SCORING__CALIBRATION_MIN`` forecasts of a version are realised, its bands are published
as the model made them. The sample paths are mapped onto the calibrated quantiles (piecewise linear
between the levels, the outer slopes beyond) so that the CRPS of the published distribution can be
scored; the mean path is left alone. Only the close is calibrated. The calibration set lives in the
process (it is rebuilt from the next realised forecasts after a restart).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from kronos_core.stream_types import SeriesForecast, SeriesWindow

CLOSE = 3


def conformal_shift(residuals: np.ndarray, levels: tuple[float, ...]) -> np.ndarray:
    """``residuals`` [n, Q, H] -> the conformal q-quantile per level and step, [Q, H]."""
    n = residuals.shape[0]
    ordered = np.sort(residuals, axis=0)
    out = np.empty(residuals.shape[1:], dtype=np.float64)
    for i, q in enumerate(levels):
        k = math.ceil((n + 1) * q) if q >= 0.5 else math.floor((n + 1) * q)
        k = min(max(k, 1), n)
        out[i] = ordered[k - 1, i]
    return out


def map_paths(paths: np.ndarray, model_q: np.ndarray, calibrated_q: np.ndarray) -> np.ndarray:
    """Per step, the monotone piecewise-linear map taking ``model_q`` [Q, H] to ``calibrated_q`` applied
    to ``paths`` [S, H]; beyond the outer levels a path moves as far as its nearest outer level did."""
    out = np.empty_like(paths, dtype=np.float64)
    for k in range(paths.shape[1]):
        xs, ys = model_q[:, k], calibrated_q[:, k]
        x = paths[:, k]
        if len(xs) == 1:
            out[:, k] = x + (ys[0] - xs[0])
            continue
        y = np.interp(x, xs, ys)
        low, high = x < xs[0], x > xs[-1]
        y[low] = x[low] + (ys[0] - xs[0])
        y[high] = x[high] + (ys[-1] - xs[-1])
        out[:, k] = y
    return out


class ConformalCalibrator:
    """Per model version: the recent relative residuals and the shifts they give."""

    def __init__(self, window: int = 500, min_count: int = 50) -> None:
        self.window = window
        self.min_count = min_count
        self._residuals: dict[str, deque[np.ndarray]] = {}
        self._shifts: dict[str, np.ndarray | None] = {}  # cache, dropped when residuals change

    def observe(self, pending: Any, realised: np.ndarray) -> None:
        """A realised forecast (a :class:`~daemon.scoring.online.PendingForecast`) joins the set."""
        if not (math.isfinite(pending.last_close) and pending.last_close > 0):
            return
        r = (np.asarray(realised, dtype=np.float64)[None, :] - pending.model_quantiles) / pending.last_close
        if not np.isfinite(r).all():
            return
        held = self._residuals.setdefault(pending.version, deque(maxlen=self.window))
        if held and held[-1].shape != r.shape:
            held.clear()  # the horizon or the levels changed
        held.append(r)
        self._shifts.pop(pending.version, None)

    def count(self, version: str) -> int:
        return len(self._residuals.get(version, ()))

    def shift(self, version: str, levels: tuple[float, ...], horizon: int) -> np.ndarray | None:
        """[Q, H] relative shifts, or None while fewer than ``min_count`` forecasts are realised."""
        if version not in self._shifts:
            held = self._residuals.get(version)
            if not held or len(held) < self.min_count:
                return None
            self._shifts[version] = conformal_shift(np.stack(held), levels)
        shift = self._shifts[version]
        if shift is None or shift.shape != (len(levels), horizon):
            return None
        return shift

    def apply(
        self, window: SeriesWindow, result: SeriesForecast, version: str
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrate ``result``'s close quantiles in place. Returns the model's own close quantiles
        [Q, H] and the sample paths mapped onto the calibrated ones [S, H] (None when unchanged)."""
        model_q = np.array(result.quantiles[:, :, CLOSE], dtype=np.float64)
        levels = tuple(result.quantile_levels)
        shift = self.shift(version, levels, model_q.shape[1])
        if shift is None:
            return model_q, None
        shift = shift * np.asarray([q != 0.5 for q in levels], dtype=np.float64)[:, None]  # median kept
        last = float(window.values[-1, CLOSE])
        calibrated = np.maximum.accumulate(model_q + shift * last, axis=0)  # levels stay ordered
        quantiles = np.array(result.quantiles, dtype=np.float64)
        quantiles[:, :, CLOSE] = calibrated
        result.quantiles = quantiles
        samples = result.samples
        paths = None
        if samples.ndim == 3 and len(samples):
            paths = map_paths(np.asarray(samples[:, :, CLOSE], dtype=np.float64), model_q, calibrated)
        return model_q, paths
