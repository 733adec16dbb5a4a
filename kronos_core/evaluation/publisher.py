"""The published distribution: calibrated per symbol, guarded by the rolling-volatility walk.

One :class:`Publisher` holds the online state for every symbol and turns a model forecast into what is
published, then learns from each forecast once its horizon is realised. The backtest and the daemon
run this same state machine, so a backtest's figures are the ones the daemon would publish.

For each new forecast of a symbol (grid quantiles, :mod:`~kronos_core.evaluation.distribution`):

1. **Two bases.** The model's distribution (its sample paths) and the random walk with rolling
   volatility (:func:`~kronos_core.evaluation.baselines.rw_vol_quantiles`).
2. **Scale-free calibration of the model.** The model is read as a location (its median ``m_k``), and
   the realised close gives a residual scaled by the walk's spread ``s_k`` (the rolling volatility, so
   residuals of a calm and of a wild symbol are comparable and the pooled state fits both;
   ``residual_scale="spread"`` uses the model's own p10-p90 spread instead): ``z = (y_k - m_k) / s_k``.
   The calibrated model is ``m_k + s_k * theta[j, k]``: ``theta`` are the residuals' quantiles at the
   grid levels, learned by online quantile tracking, ``theta += lr * (level - 1{z < theta})`` for every
   level and step. The tracker is the adaptive part: whatever the market does, each level's long-run
   miss rate is pulled to its nominal value (the quantile tracker of conformal PID control).
   ``theta`` starts at the standard normal's quantiles. The walk enters the guard as it is
   (``calibrate_walk=True`` calibrates it the same way).
3. **The guard.** The calibrated model and the walk are averaged quantile by quantile with weights from an
   exponentially weighted aggregation of their realised CRPS (scale-free: divided by the walk's
   spread), per step, with forgetting: ``w_b ~ exp(-guard_lr * L_b)``, ``L_b <- decay * L_b + crps_b``.
   The CRPS is convex in the quantile function, so the average scores at most the weighted mean of
   the two, and the weights follow the better one: the published CRPS stays within a small regret of
   the better base, and beats both where their errors offset.
4. **A last calibration** of the average (the same tracker on its own residuals): averaging two
   bases whose errors differ narrows the errors more than the spread, which this takes back.
5. **P(up)** per step: ``freq + v * (p_dist - freq)``, where ``p_dist`` is the share of the published
   distribution above the last close and ``freq`` the running frequency of up-moves (the climatology).
   The weight ``v`` is learnt online as a one-sided test of skill: the least-squares weight of
   ``p_dist - freq`` on the outcome's ``up - freq`` (which minimises the Brier score in hindsight),
   from discounted sums over realised forecasts, less ``up_z`` (2) standard errors, clipped to [0, 1].
   The variance is multiplied by the step ``k``, because the step-``k`` outcomes of successive origins
   share up to ``k - 1`` returns. Where the distribution shows no significant skill ``v`` is 0 and the
   published P(up) *is* the frequency, so its Brier score equals the climatology's; where it does,
   ``v`` grows with the evidence.

Scopes: every realised forecast updates the pooled state and its symbol's; a symbol's own state (a
copy of the pooled state when it first appears) is used once ``min_symbol`` of its forecasts have been
realised, the pooled state before. The state serialises to plain JSON (:meth:`Publisher.to_dict`), so
it can be stored (Redis) and shared by replicas and model versions.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from kronos_core.evaluation.baselines import Z_GRID, rolling_sigma, walk_quantiles
from kronos_core.evaluation.distribution import (
    GRID,
    crps,
    from_samples,
    location_scale,
    prob_up,
    quantiles_at,
)

POOLED = "*"
STAGES = ("model", "rw", "published")
Z_CLIP = 20.0


@dataclass(frozen=True)
class PublisherConfig:
    horizon: int
    min_symbol: int = 50  # realised forecasts of a symbol before its own state is used
    tracker_lr: float = 0.02  # quantile tracking step, in units of the base's spread, once settled
    tracker_lr_start: float = 0.1  # ... and at a scope's first realised forecast (decays as 1/sqrt)
    tracker_settle: int = 25  # realised forecasts over which the step decays
    guard_lr: float = 1.0  # weight of the cumulative scale-free CRPS difference
    guard_decay: float = 0.99  # forgetting per realised forecast (memory about 100 forecasts)
    up_z: float = 2.0  # P(up) weight: its least-squares estimate less this many standard errors
    up_decay: float = 0.999  # forgetting of the P(up) evidence per realised forecast (memory about 1,000)
    up_overlap: bool = True  # the weight's variance times the step (outcomes of successive origins overlap)
    vol_window: int = 100  # returns in the walk's rolling volatility
    scale_floor: float = 0.05  # a base's spread is at least this share of the walk's
    calibrate_walk: bool = False  # the walk enters the guard as it is
    final_stage: bool = True
    # what residuals are scaled by: the rolling volatility ("walk", comparable across symbols, so the
    # pooled state fits a symbol of any volatility) or each distribution's own spread ("spread")
    residual_scale: Literal["walk", "spread"] = "walk"

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        if self.min_symbol < 0:
            raise ValueError(f"min_symbol must be >= 0, got {self.min_symbol}")
        if not (self.tracker_lr > 0 and self.guard_lr >= 0 and 0 < self.guard_decay <= 1):
            raise ValueError("tracker_lr > 0, guard_lr >= 0 and 0 < guard_decay <= 1 are required")
        if not (self.up_z >= 0 and 0 < self.up_decay <= 1):
            raise ValueError(f"up_z >= 0 and 0 < up_decay <= 1 are required, got {self.up_z} and {self.up_decay}")
        if self.vol_window < 2:
            raise ValueError(f"vol_window must be >= 2, got {self.vol_window}")


@dataclass
class _Scope:
    """The learned state of one symbol, or of all symbols pooled."""

    theta: np.ndarray  # [stages, J, H] residual quantiles per stage
    losses: np.ndarray  # [2, H] discounted scale-free CRPS of the calibrated model and walk
    up_stats: np.ndarray  # [4, H] discounted sums of 1, d^2, d e, e^2; d = P_dist - freq, e = up - freq
    ups: np.ndarray  # [H] realised up-moves
    count: int = 0  # realised forecasts

    @classmethod
    def fresh(cls, horizon: int) -> _Scope:
        theta = np.repeat(np.repeat(Z_GRID[None, :, None], horizon, axis=2), len(STAGES), axis=0)
        return cls(theta, np.zeros((2, horizon)), np.zeros((4, horizon)), np.zeros(horizon))

    def copy(self) -> _Scope:
        return _Scope(self.theta.copy(), self.losses.copy(), self.up_stats.copy(), self.ups.copy(), self.count)

    def weights(self, lr: float) -> np.ndarray:
        """[H] the model's weight in the guard."""
        diff = np.clip(lr * (self.losses[0] - self.losses[1]), -50, 50)
        return np.asarray(1.0 / (1.0 + np.exp(diff)))

    def up_shrinkage(self, z: float, overlap: bool) -> np.ndarray:
        """[H] the P(up) weight: the least-squares weight of ``P_dist - freq`` on ``up - freq`` less ``z``
        standard errors, in [0, 1] (0, the frequency itself, until the distribution shows skill)."""
        n, dd, de, ee = self.up_stats
        ok = (dd > 1e-12) & (n >= 2.0)
        v = np.where(ok, de / np.where(ok, dd, 1.0), 0.0)
        resid = np.maximum(ee - 2 * v * de + v * v * dd, 0.0) / np.maximum(n - 1.0, 1.0)
        var = resid / np.where(ok, dd, 1.0)
        if overlap:
            var = var * np.arange(1, len(v) + 1)
        return np.where(ok, np.clip(v - z * np.sqrt(var), 0.0, 1.0), 0.0)

    def frequency(self) -> np.ndarray:
        return np.asarray((self.ups + 1.0) / (self.count + 2.0))  # Laplace: 0.5 before any outcome

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON; arrays as base64 of little-endian float64 (a symbol's state is ~12 KB at horizon 12)."""
        return {
            "theta": b64_floats(self.theta), "losses": b64_floats(self.losses), "up_stats": b64_floats(self.up_stats),
            "ups": b64_floats(self.ups), "count": self.count, "shape": list(self.theta.shape),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> _Scope:
        stages, j, h = (int(x) for x in data["shape"])
        return cls(
            floats_from_b64(data["theta"], (stages, j, h)), floats_from_b64(data["losses"], (2, h)),
            # a state of an older release (its P(up) weight learnt otherwise) starts the evidence afresh
            floats_from_b64(data["up_stats"], (4, h)) if "up_stats" in data else np.zeros((4, h)),
            floats_from_b64(data["ups"], (h,)), int(data["count"]),
        )  # fmt: skip


def b64_floats(a: np.ndarray) -> str:
    """An array as base64 of little-endian float64 (compact JSON)."""
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f8").tobytes()).decode("ascii")


def floats_from_b64(text: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f8").reshape(shape).astype(np.float64)


@dataclass
class Ticket:
    """What the publisher needs back of one published forecast once its horizon is realised: a few
    numbers per step (small enough to wait in Redis beside the forecast)."""

    symbol: str
    last_close: float
    sigma: float  # the walk's log-return sigma
    locations: np.ndarray  # [stages, H] median of each base as published
    scales: np.ndarray  # [stages, H] spread of each base as published
    p_dist: np.ndarray  # [H] P(up) of the published distribution before shrinkage
    p_freq: np.ndarray  # [H] the climatological frequency it was shrunk towards

    def to_dict(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol, "last_close": self.last_close, "sigma": self.sigma,
            "locations": self.locations.tolist(), "scales": self.scales.tolist(),
            "p_dist": self.p_dist.tolist(), "p_freq": self.p_freq.tolist(),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Ticket:
        f = np.asarray
        return cls(
            str(d["symbol"]), float(d["last_close"]), float(d["sigma"]), f(d["locations"], dtype=np.float64),
            f(d["scales"], dtype=np.float64), f(d["p_dist"], dtype=np.float64), f(d["p_freq"], dtype=np.float64),
        )  # fmt: skip


@dataclass
class Published:
    """What is published for one forecast, and the ticket the publisher needs back when it is realised."""

    symbol: str
    last_close: float
    quantiles: np.ndarray  # [J, H] the published (guarded) distribution of the close
    model_calibrated: np.ndarray  # [J, H] the model's own distribution, calibrated
    model: np.ndarray  # [J, H] the model's distribution as it made it
    rw_vol: np.ndarray  # [J, H] the walk with rolling volatility, as it is
    p_up: np.ndarray  # [H] P(close_k > last close)
    weights: np.ndarray  # [H] the model's weight in the guard
    scope: str  # "symbol" or "pooled": whose state was used
    ticket: Ticket = field(repr=False, default=None)  # type: ignore[assignment]

    def returns(self, levels: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """(expected return [H], return quantiles at ``levels`` [L, H]) of the published close."""
        expected = self.quantiles.mean(axis=0) / self.last_close - 1.0
        return expected, quantiles_at(self.quantiles, levels) / self.last_close - 1.0


def _calibrate(
    q: np.ndarray, floor: np.ndarray, theta: np.ndarray, scale: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(calibrated grid [J, H], location [H], scale [H]) of base ``q`` with residual quantiles ``theta``;
    the residuals are scaled by ``scale`` when given (the walk's), else by the base's own spread."""
    m, s = location_scale(q, floor)
    if scale is not None:
        s = scale
    return m[None, :] + s[None, :] * np.sort(theta, axis=0), m, s


class Publisher:
    """Online calibration and guard for every symbol; see the module docstring."""

    def __init__(self, config: PublisherConfig) -> None:
        self.config = config
        self._scopes: dict[str, _Scope] = {POOLED: _Scope.fresh(config.horizon)}

    # ------------------------------------------------------------------ publishing

    def scope(self, symbol: str) -> tuple[_Scope, str]:
        own = self._scopes.get(symbol)
        if own is not None and own.count >= self.config.min_symbol:
            return own, "symbol"
        return self._scopes[POOLED], "pooled"

    def publish(self, symbol: str, closes: np.ndarray, samples: np.ndarray) -> Published:
        """A forecast of ``symbol`` from its closes so far (the last one is the newest bar) and the
        model's sample paths of the close [S, H]."""
        cfg = self.config
        closes = np.asarray(closes, dtype=np.float64)
        last = float(closes[-1])
        model = from_samples(samples)
        if model.shape[1] != cfg.horizon:
            raise ValueError(f"{symbol}: the forecast has {model.shape[1]} steps, the publisher {cfg.horizon}")
        sigma = rolling_sigma(closes, cfg.vol_window)
        walk = walk_quantiles(last, sigma, cfg.horizon)
        walk_scale = last * sigma * np.sqrt(np.arange(1, cfg.horizon + 1))
        floor = cfg.scale_floor * walk_scale
        state, scope = self.scope(symbol)
        by_walk = walk_scale if cfg.residual_scale == "walk" else None
        cal_m, m0, s0 = _calibrate(model, floor, state.theta[0], by_walk)
        cal_r, m1, s1 = _calibrate(walk, floor, state.theta[1])
        if not cfg.calibrate_walk:
            cal_r = walk
        w = state.weights(cfg.guard_lr)
        mix = w[None, :] * cal_m + (1.0 - w[None, :]) * cal_r
        published, m2, s2 = _calibrate(mix, floor, state.theta[2], by_walk)
        if not cfg.final_stage:
            published = mix
        p_dist = prob_up(published, last)
        p_freq = state.frequency()
        v = state.up_shrinkage(cfg.up_z, cfg.up_overlap)
        ticket = Ticket(symbol, last, sigma, np.stack([m0, m1, m2]), np.stack([s0, s1, s2]), p_dist, p_freq)
        return Published(
            symbol=symbol, last_close=last, quantiles=published, model_calibrated=cal_m, model=model,
            rw_vol=walk, p_up=v * p_dist + (1 - v) * p_freq, weights=w, scope=scope, ticket=ticket,
        )  # fmt: skip

    # ------------------------------------------------------------------ learning

    def realise(self, ticket: Ticket | Published, realised: np.ndarray) -> None:
        """Learn from a published forecast (its ticket) whose horizon closes are now known [H]."""
        t = ticket.ticket if isinstance(ticket, Published) else ticket
        y = np.asarray(realised, dtype=np.float64)
        if y.shape != (self.config.horizon,) or not np.isfinite(y).all():
            return
        if t.symbol not in self._scopes:
            fresh = self._scopes[POOLED].copy()
            fresh.count, fresh.ups = 0, np.zeros_like(fresh.ups)
            self._scopes[t.symbol] = fresh
        for key in (POOLED, t.symbol):
            self._learn(self._scopes[key], t, y)

    def _learn(self, state: _Scope, t: Ticket, y: np.ndarray) -> None:
        """One realised forecast: the guard's losses are the scale-free CRPS of the two bases as this
        scope calibrates them now (the ticket keeps each base's location and spread, not its grid),
        then the quantile trackers and the P(up) weight take their step."""
        cfg = self.config
        walk_scale = t.last_close * t.sigma * np.sqrt(np.arange(1, cfg.horizon + 1))
        z = np.clip((y[None, :] - t.locations) / t.scales, -Z_CLIP, Z_CLIP)  # [stages, H]
        grids = [t.locations[i][None, :] + t.scales[i][None, :] * np.sort(state.theta[i], axis=0) for i in (0, 1)]
        if not cfg.calibrate_walk:
            grids[1] = walk_quantiles(t.last_close, t.sigma, cfg.horizon)
        losses = np.stack([crps(g, y) for g in grids]) / walk_scale[None, :]
        state.losses = cfg.guard_decay * state.losses + losses
        below = (z[:, None, :] < state.theta).astype(np.float64)  # [stages, J, H]
        lr = max(cfg.tracker_lr, cfg.tracker_lr_start / np.sqrt(1.0 + state.count / cfg.tracker_settle))
        state.theta += lr * (GRID[None, :, None] - below)
        up = (y > t.last_close).astype(np.float64)
        d, e = t.p_dist - t.p_freq, up - t.p_freq
        state.up_stats = cfg.up_decay * state.up_stats + np.stack([np.ones_like(d), d * d, d * e, e * e])
        state.ups += up
        state.count += 1

    # ------------------------------------------------------------------ state

    def symbols(self) -> list[str]:
        return sorted(k for k in self._scopes if k != POOLED)

    def count(self, symbol: str = POOLED) -> int:
        s = self._scopes.get(symbol)
        return s.count if s is not None else 0

    def scope_keys(self) -> list[str]:
        return list(self._scopes)

    def export(self, keys: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """The states of ``keys`` (symbols, or POOLED; default all held) as plain JSON, each stamped with
        the horizon and grid it was made for."""
        wanted = self._scopes if keys is None else {k: self._scopes[k] for k in keys if k in self._scopes}
        return {k: {"horizon": self.config.horizon, "grid": len(GRID), **v.to_dict()} for k, v in wanted.items()}

    def take(self, states: dict[str, dict[str, Any]]) -> list[str]:
        """Take over stored states (another process's, or another version's); a state made for another
        horizon or grid is skipped. Returns the keys taken."""
        taken = []
        for key, data in states.items():
            if data.get("horizon") != self.config.horizon or data.get("grid") != len(GRID):
                continue
            self._scopes[key] = _Scope.from_dict(data)
            taken.append(key)
        return taken

    def forget(self, keys: Sequence[str]) -> None:
        """Drop the states of ``keys`` held in memory (the pooled one is kept)."""
        for key in keys:
            if key != POOLED:
                self._scopes.pop(key, None)

    def to_dict(self) -> dict[str, Any]:
        return {"horizon": self.config.horizon, "grid": len(GRID), "scopes": self.export()}

    def load(self, data: dict[str, Any]) -> None:
        """Take over a whole stored state (:meth:`to_dict`); one made for another horizon or grid is
        refused with ValueError."""
        if data.get("horizon") != self.config.horizon or data.get("grid") != len(GRID):
            raise ValueError(
                f"the stored publisher state is for horizon {data.get('horizon')} and {data.get('grid')} levels, "
                f"this publisher has horizon {self.config.horizon} and {len(GRID)}"
            )
        self._scopes = {POOLED: _Scope.fresh(self.config.horizon)}
        self.take(data["scopes"])
