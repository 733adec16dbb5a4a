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
    outer grid points beyond them). Every step shares the grid, so this is two rows' blend per level."""
    lv = np.clip(np.asarray(levels, dtype=np.float64), GRID[0], GRID[-1])
    hi = np.clip(np.searchsorted(GRID, lv, side="right"), 1, len(GRID) - 1)
    lo = hi - 1
    w = ((lv - GRID[lo]) / (GRID[hi] - GRID[lo]))[:, None]
    return np.asarray(q[lo] * (1.0 - w) + q[hi] * w, dtype=np.float64)


def cdf_at(q: np.ndarray, values: np.ndarray) -> np.ndarray:
    """P(close_k <= values[k]) per step, read off grid quantiles [J, H]: the PIT of ``values``.

    Between grid points the quantile function is linear; below the lowest point the PIT is taken as
    half the lowest level, above the highest as half-way from the highest level to 1; on a flat
    stretch (several levels at one value) it is the middle of the stretch.
    """
    col = np.maximum.accumulate(np.asarray(q, dtype=np.float64), axis=0)  # [J, H]
    x = np.asarray(values, dtype=np.float64)[None, :]
    lo = (col < x).sum(axis=0)  # searchsorted left, per step
    hi = (col <= x).sum(axis=0)  # searchsorted right
    steps = np.arange(col.shape[1])
    flat = (GRID[np.clip(lo, 0, len(GRID) - 1)] + GRID[np.clip(hi - 1, 0, len(GRID) - 1)]) / 2
    a, b = np.clip(lo - 1, 0, len(GRID) - 1), np.clip(lo, 0, len(GRID) - 1)
    span = col[b, steps] - col[a, steps]
    t = np.divide(x[0] - col[a, steps], span, out=np.zeros_like(span), where=span > 0)
    inner = GRID[a] + t * (GRID[b] - GRID[a])
    out = np.where(lo == 0, GRID[0] / 2, np.where(lo == len(GRID), (1 + GRID[-1]) / 2, inner))
    return np.asarray(np.where(hi > lo, flat, out), dtype=np.float64)


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
