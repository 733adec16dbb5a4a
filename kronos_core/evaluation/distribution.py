"""A forecast distribution of one series' close, as quantiles on a fixed grid of levels.

Every distribution the project compares or publishes (the model's sample paths, the baselines, the
calibrated and the guarded one) is held the same way: ``q[j, k]``, the close at level ``GRID[j]`` for
horizon step ``k``, with ``GRID`` the midpoints ``(j + 0.5) / J`` of ``J`` equal slices of (0, 1).
The points ``q[:, k]`` are then an equal-weight ensemble of the distribution, so its CRPS is the
ensemble CRPS of :func:`kronos_core.scoring.crps_from_samples` (the scorer the daemon uses), and any
other level is read by linear interpolation between grid points (:func:`quantiles_at`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kronos_core.scoring import crps_from_samples

J = 40
GRID: np.ndarray = (np.arange(J) + 0.5) / J  # 0.0125, 0.0375, ..., 0.9875


def from_samples(samples: np.ndarray) -> np.ndarray:
    """Sample paths of the close [S, H] -> grid quantiles [J, H]."""
    return np.quantile(np.asarray(samples, dtype=np.float64), GRID, axis=0)


def quantiles_at(q: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Grid quantiles [J, H] -> quantiles at ``levels`` [L, H] (linear between grid points, the
    outer grid points beyond them)."""
    out = np.empty((len(levels), q.shape[1]), dtype=np.float64)
    for k in range(q.shape[1]):
        out[:, k] = np.interp(levels, GRID, q[:, k])
    return out


def cdf_at(q: np.ndarray, values: np.ndarray) -> np.ndarray:
    """P(close_k <= values[k]) per step, read off grid quantiles [J, H]: the PIT of ``values``.

    Between grid points the quantile function is linear; below the lowest point the PIT is taken as
    half the lowest level, above the highest as half-way from the highest level to 1; on a flat
    stretch (several levels at one value) it is the middle of the stretch.
    """
    out = np.empty(q.shape[1], dtype=np.float64)
    for k in range(q.shape[1]):
        col = np.maximum.accumulate(q[:, k])
        x = float(values[k])
        lo = int(np.searchsorted(col, x, side="left"))
        hi = int(np.searchsorted(col, x, side="right"))
        if hi > lo:
            out[k] = (GRID[lo] + GRID[hi - 1]) / 2
        elif lo == 0:
            out[k] = GRID[0] / 2
        elif lo == len(col):
            out[k] = (1 + GRID[-1]) / 2
        else:
            t = (x - col[lo - 1]) / (col[lo] - col[lo - 1])
            out[k] = GRID[lo - 1] + t * (GRID[lo] - GRID[lo - 1])
    return out


def prob_up(q: np.ndarray, last_close: float) -> np.ndarray:
    """P(close_k > last close) per step: the share of grid points strictly above it [H]."""
    return np.asarray(np.mean(q > last_close, axis=0), dtype=np.float64)


def crps(q: np.ndarray, realised: np.ndarray) -> np.ndarray:
    """CRPS per step of grid quantiles [J, H] against the realised closes [H]."""
    return crps_from_samples(q, np.asarray(realised, dtype=np.float64))


def location_scale(q: np.ndarray, floor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per step: the median and a sigma-equivalent spread ((p90 - p10) / 2.563), at least ``floor``."""
    p10, p50, p90 = quantiles_at(q, (0.1, 0.5, 0.9))
    return p50, np.maximum((p90 - p10) / 2.5631031310892, floor)
