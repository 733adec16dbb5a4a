"""Forecast scoring: one module for the trainer's evaluation gate and the daemon's online scores.

Everything is plain numpy on price units (no torch, no I/O). The quantities, per horizon step k:

- ``mae``: absolute error of the point forecast (the mean over sample paths) against the realised value;
- ``persistence_mae``: the same for persistence, which forecasts the last observed value at every step;
- ``crps``: the continuous ranked probability score of the sample paths, for the empirical
  distribution of the ``S`` paths: ``E|X - y| - 0.5 E|X - X'|`` (X, X' drawn with replacement).
  For a point forecast it equals the absolute error, so persistence's CRPS is its MAE;
- ``pinball``: the quantile (pinball) loss at each level, ``max(q (y - p), (q - 1) (y - p))``;
- ``coverage``: the share of realised values inside the outermost band (p10-p90 with the default
  levels), nominally ``levels[-1] - levels[0]``.

Skill is ``1 - model / persistence`` (positive: better than persistence).

:class:`ScoreAccumulator` keeps running sums, so the daemon can add forecasts as their horizon bars
arrive and the gate can add a whole held-out set at once; accumulators merge (replicas, batches) and
round-trip through JSON (Redis). :func:`score_paths` is the one-shot form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

DEFAULT_LEVELS: tuple[float, ...] = (0.1, 0.5, 0.9)


def crps_from_samples(samples: np.ndarray, observed: np.ndarray | float) -> np.ndarray:
    """CRPS of an ensemble. ``samples``: [S, ...] (S draws along axis 0); ``observed``: [...].

    Uses the sorted-sample identity ``E|X - X'| = 2 / S^2 * sum_i (2 i - S - 1) x_(i)`` (i from 1),
    so the cost is O(S log S) per point instead of O(S^2).
    """
    x = np.asarray(samples, dtype=np.float64)
    y = np.asarray(observed, dtype=np.float64)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError("samples must have at least one draw along axis 0")
    if x.shape[1:] != y.shape:
        raise ValueError(f"samples {x.shape} and observed {y.shape} disagree after the sample axis")
    s = x.shape[0]
    spread_to_obs = np.mean(np.abs(x - y[None]), axis=0)
    ordered = np.sort(x, axis=0)
    weights = (2.0 * np.arange(1, s + 1) - s - 1).reshape((s,) + (1,) * y.ndim)
    mean_pair_gap = 2.0 / (s * s) * np.sum(weights * ordered, axis=0)
    return np.asarray(spread_to_obs - 0.5 * mean_pair_gap)


def pinball_loss(quantiles: np.ndarray, observed: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Pinball loss per level. ``quantiles``: [Q, ...] ordered as ``levels``; ``observed``: [...]."""
    q = np.asarray(quantiles, dtype=np.float64)
    y = np.asarray(observed, dtype=np.float64)
    lv = np.asarray(levels, dtype=np.float64).reshape((-1,) + (1,) * y.ndim)
    if q.shape[0] != lv.shape[0] or q.shape[1:] != y.shape:
        raise ValueError(f"quantiles {q.shape} do not fit {len(levels)} levels and observed {y.shape}")
    diff = y[None] - q
    return np.asarray(np.maximum(lv * diff, (lv - 1.0) * diff))


def interval_coverage(lower: np.ndarray, upper: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """True where ``lower <= observed <= upper`` (element-wise)."""
    y = np.asarray(observed, dtype=np.float64)
    return np.asarray((np.asarray(lower) <= y) & (y <= np.asarray(upper)))


@dataclass
class ScoreReport:
    """Aggregated scores. Per-step lists have one entry per horizon step (None where no forecast
    reached that step); the scalars average over every scored (forecast, step) pair."""

    count: int  # forecasts scored (at least one step)
    horizon: int
    levels: tuple[float, ...]
    mae_per_step: list[float | None]
    persistence_mae_per_step: list[float | None]
    crps_per_step: list[float | None]
    coverage_per_step: list[float | None]
    mae: float | None
    persistence_mae: float | None
    crps: float | None  # None when no sample paths were given
    coverage: float | None
    pinball: dict[str, float | None]  # level -> mean loss
    skill_mae: float | None  # 1 - mae / persistence_mae
    skill_crps: float | None  # 1 - crps / persistence_mae (persistence's CRPS is its MAE)
    nominal_coverage: float
    all_finite: bool  # every forecast value that was added was finite

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "horizon": self.horizon,
            "levels": list(self.levels),
            "mae": self.mae,
            "persistence_mae": self.persistence_mae,
            "crps": self.crps,
            "coverage": self.coverage,
            "nominal_coverage": self.nominal_coverage,
            "skill_mae": self.skill_mae,
            "skill_crps": self.skill_crps,
            "pinball": dict(self.pinball),
            "all_finite": self.all_finite,
            "mae_per_step": list(self.mae_per_step),
            "persistence_mae_per_step": list(self.persistence_mae_per_step),
            "crps_per_step": list(self.crps_per_step),
            "coverage_per_step": list(self.coverage_per_step),
        }


def _ratio(num: np.ndarray, den: np.ndarray) -> list[float | None]:
    return [float(n / d) if d > 0 else None for n, d in zip(num, den, strict=True)]


def _mean(num: np.ndarray, den: np.ndarray) -> float | None:
    total = float(np.sum(den))
    return float(np.sum(num)) / total if total > 0 else None


def _skill(model: float | None, base: float | None) -> float | None:
    if model is None or base is None or base <= 0:
        return None
    return 1.0 - model / base


def level_key(level: float) -> str:
    """``0.1`` -> ``"p10"``, ``0.025`` -> ``"p2.5"``."""
    pct = round(level * 100, 6)
    return f"p{int(pct)}" if pct == int(pct) else f"p{pct:g}"


@dataclass
class ScoreAccumulator:
    """Running sums of the scores per horizon step; see the module docstring for the quantities."""

    horizon: int
    levels: tuple[float, ...] = DEFAULT_LEVELS
    forecasts: int = 0
    nonfinite: int = 0
    n: np.ndarray = field(init=False)  # [H] (forecast, step) pairs with a realised value
    abs_err: np.ndarray = field(init=False)
    persist_err: np.ndarray = field(init=False)
    inside: np.ndarray = field(init=False)
    crps_n: np.ndarray = field(init=False)  # [H] pairs that had sample paths
    crps: np.ndarray = field(init=False)
    pinball: np.ndarray = field(init=False)  # [Q, H]
    _SUMS: ClassVar[tuple[str, ...]] = ("n", "abs_err", "persist_err", "inside", "crps_n", "crps", "pinball")

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"horizon must be at least 1, got {self.horizon}")
        self.levels = tuple(float(q) for q in self.levels)
        if not self.levels or list(self.levels) != sorted(set(self.levels)):
            raise ValueError(f"levels must be increasing without repeats, got {self.levels}")
        h, q = self.horizon, len(self.levels)
        self.n, self.abs_err, self.persist_err = np.zeros(h), np.zeros(h), np.zeros(h)
        self.inside, self.crps_n, self.crps = np.zeros(h), np.zeros(h), np.zeros(h)
        self.pinball = np.zeros((q, h))

    def add(
        self,
        realised: np.ndarray,
        last_value: np.ndarray | float,
        *,
        paths: np.ndarray | None = None,
        mean: np.ndarray | None = None,
        quantiles: np.ndarray | None = None,
    ) -> ScoreAccumulator:
        """Add forecasts. Shapes (N forecasts, S paths, H steps, Q levels), a single forecast may drop N:

        - ``realised``: [N, H] the values that came true; NaN where not (yet) known (that step is skipped);
        - ``last_value``: [N] the last observed value (persistence);
        - ``paths``: [N, S, H] sample paths (gives CRPS, and mean/quantiles when not given);
        - ``mean``: [N, H] point forecast; ``quantiles``: [N, Q, H] ordered as ``levels``.

        A forecast with a non-finite value is counted in ``nonfinite`` (so ``all_finite`` turns false)
        and not scored.
        """
        real = np.asarray(realised, dtype=np.float64)
        single = real.ndim == 1
        real = real[None] if single else real
        n_fc = real.shape[0]
        if real.shape[1] != self.horizon:
            raise ValueError(f"realised has {real.shape[1]} steps, the accumulator {self.horizon}")
        last = np.broadcast_to(np.asarray(last_value, dtype=np.float64).reshape(-1), (n_fc,))
        p = None if paths is None else np.asarray(paths, dtype=np.float64)
        if p is not None and single:
            p = p[None]
        if p is not None and (p.ndim != 3 or p.shape[0] != n_fc or p.shape[2] != self.horizon):
            raise ValueError(f"paths must be [N, S, {self.horizon}], got {p.shape}")
        if mean is None:
            if p is None:
                raise ValueError("give sample paths or a mean forecast")
            mu = p.mean(axis=1)
        else:
            mu = np.asarray(mean, dtype=np.float64).reshape(n_fc, self.horizon)
        if quantiles is None:
            if p is None:
                raise ValueError("give sample paths or quantiles")
            qs = np.moveaxis(np.quantile(p, self.levels, axis=1), 0, 1)  # [N, Q, H]
        else:
            qs = np.asarray(quantiles, dtype=np.float64).reshape(n_fc, len(self.levels), self.horizon)

        finite = np.isfinite(mu).all(axis=1) & np.isfinite(qs).all(axis=(1, 2)) & np.isfinite(last)
        if p is not None:
            finite &= np.isfinite(p).all(axis=(1, 2))
        self.nonfinite += int((~finite).sum())
        known = np.isfinite(real) & finite[:, None]  # [N, H]
        if not known.any():
            return self
        self.forecasts += int(known.any(axis=1).sum())
        y = np.where(known, real, 0.0)
        w = known.astype(np.float64)
        self.n += w.sum(axis=0)
        self.abs_err += (np.abs(np.where(known, mu, 0.0) - y) * w).sum(axis=0)
        self.persist_err += (np.abs(np.where(known, last[:, None], 0.0) - y) * w).sum(axis=0)
        lo, hi = qs[:, 0], qs[:, -1]
        self.inside += (interval_coverage(lo, hi, y) * w).sum(axis=0)
        safe_q = np.where(known[:, None, :], qs, 0.0)
        loss = pinball_loss(np.moveaxis(safe_q, 1, 0), y, self.levels)  # [Q, N, H]
        self.pinball += (loss * w[None]).sum(axis=1)
        if p is not None:
            safe_p = np.where(known[:, None, :], p, 0.0)
            self.crps += (crps_from_samples(np.moveaxis(safe_p, 1, 0), y) * w).sum(axis=0)
            self.crps_n += w.sum(axis=0)
        return self

    def merge(self, other: ScoreAccumulator) -> ScoreAccumulator:
        if other.horizon != self.horizon or other.levels != self.levels:
            raise ValueError("only accumulators of the same horizon and levels merge")
        self.forecasts += other.forecasts
        self.nonfinite += other.nonfinite
        for name in self._SUMS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def report(self) -> ScoreReport:
        mae = _mean(self.abs_err, self.n)
        base = _mean(self.persist_err, self.n)
        crps = _mean(self.crps, self.crps_n)
        total = float(self.n.sum())
        return ScoreReport(
            count=self.forecasts,
            horizon=self.horizon,
            levels=self.levels,
            mae_per_step=_ratio(self.abs_err, self.n),
            persistence_mae_per_step=_ratio(self.persist_err, self.n),
            crps_per_step=_ratio(self.crps, self.crps_n),
            coverage_per_step=_ratio(self.inside, self.n),
            mae=mae,
            persistence_mae=base,
            crps=crps,
            coverage=_mean(self.inside, self.n),
            pinball={
                level_key(q): (float(self.pinball[i].sum()) / total if total > 0 else None)
                for i, q in enumerate(self.levels)
            },
            skill_mae=_skill(mae, base),
            skill_crps=_skill(crps, base),
            nominal_coverage=self.levels[-1] - self.levels[0],
            all_finite=self.nonfinite == 0,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready sums (for Redis); :meth:`from_dict` restores them exactly."""
        return {
            "horizon": self.horizon,
            "levels": list(self.levels),
            "forecasts": self.forecasts,
            "nonfinite": self.nonfinite,
            **{name: getattr(self, name).tolist() for name in self._SUMS},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoreAccumulator:
        acc = cls(horizon=int(data["horizon"]), levels=tuple(data["levels"]))
        acc.forecasts = int(data["forecasts"])
        acc.nonfinite = int(data["nonfinite"])
        for name in cls._SUMS:
            value = np.asarray(data[name], dtype=np.float64)
            if value.shape != getattr(acc, name).shape:
                raise ValueError(f"{name} has shape {value.shape}, expected {getattr(acc, name).shape}")
            setattr(acc, name, value)
        return acc


def score_paths(
    paths: np.ndarray,
    realised: np.ndarray,
    last_value: np.ndarray,
    levels: Sequence[float] = DEFAULT_LEVELS,
) -> ScoreReport:
    """One-shot scores of ``paths`` [N, S, H] against ``realised`` [N, H] and persistence ``last_value`` [N]."""
    p = np.asarray(paths, dtype=np.float64)
    acc = ScoreAccumulator(horizon=p.shape[-1], levels=tuple(levels))
    return acc.add(realised, last_value, paths=p).report()
