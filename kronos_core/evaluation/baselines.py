"""The honest baselines a forecast must beat, as grid quantiles (:mod:`~kronos_core.evaluation.distribution`).

- persistence: the last close at every step (a point forecast; its CRPS is its absolute error);
- ``rw_vol``: a random walk with rolling volatility, Gaussian on log returns with zero drift, sigma the
  standard deviation of the last ``window`` close-to-close log returns, scaled by sqrt(k) at step k;
- ``ewma_vol``: the same walk with an exponentially weighted variance (RiskMetrics, lambda 0.94).
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

from kronos_core.evaluation.distribution import GRID

Z_GRID = np.array([NormalDist().inv_cdf(float(u)) for u in GRID])
SIGMA_FLOOR = 1e-6  # log-return sigma used when the window holds no movement at all


def log_returns(closes: np.ndarray) -> np.ndarray:
    c = np.asarray(closes, dtype=np.float64)
    c = c[np.isfinite(c) & (c > 0)]
    return np.diff(np.log(c)) if len(c) > 1 else np.zeros(0)


def rolling_sigma(closes: np.ndarray, window: int = 100) -> float:
    r = log_returns(np.asarray(closes)[-(window + 1) :])
    return max(float(np.std(r, ddof=1)) if len(r) > 1 else 0.0, SIGMA_FLOOR)


def ewma_sigma(closes: np.ndarray, lam: float = 0.94, window: int = 500) -> float:
    r = log_returns(np.asarray(closes)[-(window + 1) :])
    if len(r) < 2:
        return SIGMA_FLOOR
    weights = lam ** np.arange(len(r))[::-1]
    return max(float(np.sqrt(np.sum(weights * r * r) / np.sum(weights))), SIGMA_FLOOR)


def walk_quantiles(last_close: float, sigma: float, horizon: int) -> np.ndarray:
    """Zero-drift log-normal walk: grid quantiles [J, H]."""
    steps = np.sqrt(np.arange(1, horizon + 1, dtype=np.float64))
    return np.asarray(last_close * np.exp(sigma * Z_GRID[:, None] * steps[None, :]))


def rw_vol_quantiles(closes: np.ndarray, horizon: int, window: int = 100) -> np.ndarray:
    return walk_quantiles(float(closes[-1]), rolling_sigma(closes, window), horizon)


def ewma_vol_quantiles(closes: np.ndarray, horizon: int, lam: float = 0.94) -> np.ndarray:
    return walk_quantiles(float(closes[-1]), ewma_sigma(closes, lam), horizon)


def persistence_quantiles(closes: np.ndarray, horizon: int) -> np.ndarray:
    return np.full((len(GRID), horizon), float(closes[-1]))
