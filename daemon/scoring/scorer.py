"""Online scoring: every published forecast is scored once its horizon bars have arrived.

How it works, per processed bar (a hook of the loop, after the bar and its forecast are stored):

1. the symbol's pending forecasts (oldest first) are read from the store; each one whose ``horizon``
   bars after its ``as_of`` bar are in the symbol's bar ring is scored against them with
   :mod:`kronos_core.scoring` (the module the trainer's gate uses too): per-step absolute error of the
   close mean, CRPS of the close sample paths, pinball loss at the quantile levels, coverage of the
   outermost band (p10-p90), and the same error for persistence (the last close);
2. the new forecast's close paths, mean and quantiles join the pending list.

Realised bars are matched by count (step k = the k-th bar after the forecast's bar), which is what the
model forecasts whatever the calendar; a forecast whose bar has left the ring before its horizon was
complete is dropped and counted (``kronos_scoring_expired_forecasts_total``). Scoring never stops the
loop: a failure is logged and counted (``kronos_scoring_errors_total``).

The pending forecasts and the hourly sums live in a score store (:mod:`daemon.scoring.store`; its
Redis keys: :mod:`daemon.scoring.store_redis`). The hourly sums merge into rolling aggregates over any window (``kronos-stream scores --hours 24``).
A version's bands with and without calibration (:mod:`daemon.scoring.calibration`) are both kept: the
published ones under ``{version}``, the model's own under ``{version}@model`` (only when calibration
is on). Prometheus gets the same sums, labelled by model version and horizon step only (no symbol).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import structlog
from prometheus_client import CollectorRegistry

from daemon.scoring.calibration import GuardedCalibrator, build_calibrator, distribution_fields
from daemon.scoring.metrics import ScoreMetrics
from daemon.scoring.paired import LossRow, loss_row
from daemon.scoring.pending import CLOSE, PendingForecast, pending_from, realised_closes
from daemon.scoring.store import MemoryScoreStore, ScoreStore
from daemon.scoring.store_redis import RedisScoreStore
from daemon.state.redis_access import explain
from kronos_core.evaluation.publisher import Ticket
from kronos_core.scoring import ScoreAccumulator
from kronos_core.stream_types import SeriesForecast, SeriesWindow

log = structlog.get_logger("kronos.scoring")

MODEL_BANDS_SUFFIX = "@model"  # scores of the model's own bands, when calibration changes the published ones


def _forecast_key(version: str, window: SeriesWindow) -> tuple[str, str, int]:
    """Which forecast of a round: (model version, symbol, the window's last bar in ns)."""
    return version, window.series_id, int(np.asarray(window.timestamps[-1:], dtype="datetime64[ns]").astype(np.int64)[0])


class OnlineScorer:
    """Scores forecasts as their horizons complete; ``calibrator`` (optional, a
    :class:`~daemon.scoring.calibration.GuardedCalibrator`) publishes the calibrated, guarded
    distribution before publication and learns from each forecast once it is realised."""

    def __init__(
        self,
        store: ScoreStore,
        metrics: ScoreMetrics,
        horizon: int,
        calibrator: GuardedCalibrator | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.cap = horizon + 2
        self.calibrator = calibrator
        self.vol_window = 100  # returns in the walk of the per-forecast losses (KRONOS_SCORING__VOL_WINDOW)
        # (version, symbol, as-of ns) -> (the model's close quantiles, the published grid, the ticket) of
        # this round's calibrated forecasts, from adjust() to stored() (a round holds one bar per symbol)
        self._extra: dict[tuple[str, str, int], tuple[np.ndarray, np.ndarray, dict[str, Any]]] = {}

    async def adjust(
        self,
        windows: Sequence[SeriesWindow],
        results: Sequence[SeriesForecast | Exception],
        version: str,
        contexts: Sequence[Any] | None = None,
        *,
        champion: bool = True,
    ) -> None:
        """Before publication: the published distribution replaces the model's close bands (when a
        calibrator is set); the model's own are kept. A context (``ForecastContext``) of such a
        forecast gets ``bands = "guarded"`` and the message's extra fields (``distribution``).
        ``version`` calibrates with its own state (``champion``: it is the version in service, else one
        tried beside it, whose state starts as a copy of the champion's)."""
        self._extra.clear()  # leftovers of a round that failed before it was stored
        cal = self.calibrator
        if cal is None:
            return
        cal.serve(version, champion)
        try:
            await cal.load(self.store, version, [w.series_id for w in windows])
        except Exception as exc:  # the store is out: publish the model's bands this round
            self.metrics.errors.inc()
            log.warning(
                "reading the calibration state failed; publishing the model's bands",
                error=explain(exc, getattr(self.store, "acl_user", None)),
            )
            return
        for i, (window, result) in enumerate(zip(windows, results, strict=True)):
            if isinstance(result, Exception):
                continue
            try:
                done = cal.apply(window, result, version)
            except Exception as exc:  # calibration must never cost a forecast
                self.metrics.errors.inc()
                log.warning("calibrating a forecast failed; publishing the model's bands", error=repr(exc))
                continue
            if done is None:
                continue
            ticket = {**done.published.ticket.to_dict(), "p_up": done.published.p_up.tolist()}  # P(up) as published
            self._extra[_forecast_key(version, window)] = (done.model_quantiles, done.grid, ticket)
            if contexts is not None:
                contexts[i].bands = "guarded"
                contexts[i].distribution = distribution_fields(done, tuple(result.quantile_levels))

    async def stored(
        self,
        items: Sequence[tuple[Any, SeriesWindow, SeriesForecast]],
        version: str,
        now: float | None = None,
    ) -> None:
        """After the round's bars and forecasts are stored: score what is complete, queue the new ones.
        ``items``: (the symbol's state with the new bar appended, its window, its forecast)."""
        extras = [self._extra.pop(_forecast_key(version, window), None) for _, window, _ in items]
        if not items:
            return
        now = time.time() if now is None else now
        try:
            await self._stored(items, extras, version, now)
        except Exception as exc:
            self.metrics.errors.inc()
            if self.calibrator is not None:  # what it learnt this round was not stored: read it again
                self.calibrator.forget(state.symbol for state, _, _ in items)
            log.warning(
                "scoring failed for this round; its forecasts stay unscored",
                error=explain(exc, getattr(self.store, "acl_user", None)),
            )

    async def _stored(
        self,
        items: Sequence[tuple[Any, SeriesWindow, SeriesForecast]],
        extras: Sequence[tuple[np.ndarray, np.ndarray, dict[str, Any]] | None],
        version: str,
        now: float,
    ) -> None:
        pending = await self.store.pending([state.symbol for state, _, _ in items])
        sums: dict[str, ScoreAccumulator] = {}
        changes: dict[str, tuple[int, bytes]] = {}
        complete: list[tuple[PendingForecast, np.ndarray]] = []
        losses: list[LossRow] = []
        for (state, window, result), extra in zip(items, extras, strict=True):
            timestamps, closes = list(state.timestamps), [row[CLOSE] for row in state.rows]
            drop = 0
            for raw in pending.get(state.symbol, []):
                p = PendingForecast.decode(raw)
                realised = realised_closes(timestamps, closes, p)
                if realised is None:
                    break
                drop += 1
                if isinstance(realised, str):
                    self.metrics.expired.inc()
                    continue
                complete.append((p, realised))
                row = loss_row(getattr(state, "pair_symbol", state.symbol), p, realised, timestamps, closes, self.vol_window)
                if row is not None:
                    losses.append(row)
            model_q, grid, ticket = extra if extra is not None else (None, None, None)
            record = pending_from(window, result, version, model_q, grid, ticket)
            changes[state.symbol] = (drop, record.encode())
        if self.calibrator is not None:  # the states of the versions that made the realised forecasts
            await self.calibrator.load_made(self.store, [(p.version, p.ticket) for p, _ in complete])
        self._score_all(sums, complete)
        calibration = self.calibrator.changed() if self.calibrator is not None else None
        await self.store.commit(changes, sums, cap=self.cap, now=now, calibration=calibration, losses=losses)
        for name, acc in sums.items():
            if name.endswith(MODEL_BANDS_SUFFIX):
                self.metrics.add(name[: -len(MODEL_BANDS_SUFFIX)], acc, bands="model")
            else:
                self.metrics.add(name, acc)

    def learn(self, done: Sequence[tuple[PendingForecast, np.ndarray]]) -> None:
        """The calibration learns from realised forecasts (those published through it)."""
        if self.calibrator is None:
            return
        for p, realised in done:
            if p.ticket is not None:
                self.calibrator.observe(Ticket.from_dict(p.ticket), realised, p.version)

    def _score_all(self, sums: dict[str, ScoreAccumulator], done: Sequence[tuple[PendingForecast, np.ndarray]]) -> None:
        """Score forecasts whose horizon came true: the published bands under the version's name, the
        model's own under ``version + MODEL_BANDS_SUFFIX`` (when calibrating, or when they differ).

        Forecasts of the same shapes go through one vectorised ``ScoreAccumulator.add`` (one call per
        forecast costs ~0.1 ms of array calls: 0.1 s for a burst of 1,000)."""
        Row = tuple[np.ndarray, float, np.ndarray | None, np.ndarray, np.ndarray]  # realised, last, paths, mean, q
        groups: dict[tuple[Any, ...], list[Row]] = {}

        def add(name: str, p: PendingForecast, realised: np.ndarray, paths: np.ndarray | None, q: np.ndarray,
                mean: np.ndarray) -> None:  # fmt: skip
            key = (name, p.horizon, p.levels, None if paths is None else paths.shape)
            groups.setdefault(key, []).append((realised, p.last_close, paths, mean, q))

        for p, realised in done:
            guarded = p.calibrated_paths is not None
            add(p.version, p, realised, p.calibrated_paths if guarded else p.paths, p.quantiles, p.mean)
            if self.calibrator is not None or guarded:
                own = p.paths.mean(axis=0) if guarded and p.paths is not None else p.mean  # the model's mean
                add(p.version + MODEL_BANDS_SUFFIX, p, realised, p.paths, p.model_quantiles, own)
            if p.ticket is not None and "p_up" in p.ticket:  # P(up): its Brier score and reliability
                self.metrics.add_up(p.version, np.asarray(p.ticket["p_up"]), realised > p.last_close)
        self.learn(done)
        for (name, horizon, levels, paths_shape), rows in groups.items():
            held = sums.get(name)
            if held is None or (held.horizon, held.levels) != (horizon, levels):
                held = sums[name] = ScoreAccumulator(horizon, levels)
            realised_, last, paths, mean, quantiles = zip(*rows, strict=True)
            held.add(
                np.stack(realised_),
                np.array(last, dtype=np.float64),
                paths=None if paths_shape is None else np.stack(paths),  # type: ignore[arg-type]
                mean=np.stack(mean),
                quantiles=np.stack(quantiles),
            )

    async def close(self) -> None:
        try:
            await self.store.close()
        except Exception as exc:  # closing must not hide the daemon's own shutdown
            log.warning("closing the score store failed", error=repr(exc))


def build_scorer(settings: Any, state_store: Any, registry: CollectorRegistry) -> OnlineScorer | None:
    """The daemon's scorer from ``KRONOS_SCORING__*``: beside Redis when the state is in Redis, in
    memory otherwise (demo, tests); None when scoring is off."""
    s = settings.scoring
    if not s.enabled:
        return None
    from daemon.state.memory import MemoryStateStore

    store: ScoreStore
    if isinstance(state_store, MemoryStateStore):
        store = MemoryScoreStore()
    else:
        store = RedisScoreStore.from_settings(settings)
    calibrator = build_calibrator(settings)
    scorer = OnlineScorer(store, ScoreMetrics(registry), settings.model.horizon, calibrator)
    scorer.vol_window = s.vol_window
    return scorer
