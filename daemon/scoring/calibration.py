"""The published distribution in the daemon: calibrated per symbol, guarded by the rolling-volatility
walk (``KRONOS_SCORING__CALIBRATE``, on by default).

The state machine is :class:`kronos_core.evaluation.Publisher`, the same one ``kronos-stream backtest``
runs, so a backtest's figures are what the daemon publishes on the same bars. This module is its
daemon side:

- **Before publication** (:meth:`GuardedCalibrator.apply`): the model's close paths and the window's
  closes go through the publisher; the forecast's close quantiles and close mean become the published
  (guarded) ones, and the message gets the guard's weights and the probabilities
  (:func:`distribution_fields`). The model's own close quantiles stay in the message
  (``model_quantiles``) and are scored too (``{version}@model``).
- **Once realised** (:meth:`GuardedCalibrator.observe`): the forecast's ticket (a few numbers per step,
  kept in its pending record) and the realised closes update the symbol's state and the pooled one.
- **Storage**: the states live beside the pending forecasts in the score store (Redis:
  ``{prefix}:calibration:{symbol}`` and ``{prefix}:calibration-pooled``), written in the same step as
  the pending list that drops the realised forecasts, so a restart or another replica resumes them and
  no realised forecast is learnt twice. The state is per symbol, not per model version: a new version
  starts from the state the previous one left, and the adaptive update moves it to the new version's
  residuals. The pooled state is shared by replicas; the last writer wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from daemon.io.messages import quantile_key
from kronos_core.evaluation.distribution import quantiles_at
from kronos_core.evaluation.publisher import POOLED, Published, Publisher, PublisherConfig, Ticket
from kronos_core.stream_types import SeriesForecast, SeriesWindow

CLOSE = 3


def publisher_config(settings: Any) -> PublisherConfig:
    """The publisher of ``KRONOS_SCORING__*`` and the model's horizon."""
    s = settings.scoring
    return PublisherConfig(settings.model.horizon, min_symbol=s.calibration_min, vol_window=s.vol_window)


def build_calibrator(settings: Any) -> GuardedCalibrator | None:
    """The daemon's calibrator of ``KRONOS_SCORING__*``; None when calibration is off."""
    s = settings.scoring
    return GuardedCalibrator(publisher_config(settings), s.publish_paths) if s.calibrate else None


def distribution_fields(applied: Applied, levels: Sequence[float]) -> dict[str, Any]:
    """The message's fields beside the bands: the guard, the probabilities and the model's own close."""
    p, model_q, model_mean = applied.published, applied.model_quantiles, applied.model_mean
    expected, rq = p.returns(levels)
    fields = {
        "guard": {"model_weight": np.round(p.weights, 4).tolist(), "scope": p.scope},
        "probabilities": {
            "p_up": np.round(p.p_up, 4).tolist(),
            "expected_return": expected.tolist(),
            "return_quantiles": {quantile_key(q): rq[i].tolist() for i, q in enumerate(levels)},
        },
        "model_quantiles": {quantile_key(q): model_q[i].tolist() for i, q in enumerate(levels)},
        "model_mean": model_mean.tolist(),
    }
    if applied.paths is not None:
        fields["model_paths"] = applied.paths.tolist()
    return fields


class Applied(NamedTuple):
    model_quantiles: np.ndarray  # [Q, H] the model's own close quantiles
    model_mean: np.ndarray  # [H] the model's own close mean
    grid: np.ndarray  # [J, H] the published distribution (scored as an ensemble of J paths)
    published: Published
    paths: np.ndarray | None  # [P, H] the model's close paths for the message, or None


class GuardedCalibrator:
    """The daemon's :class:`Publisher`, with the states of the symbols it has seen."""

    def __init__(self, config: PublisherConfig, publish_paths: int = 0) -> None:
        self.publisher = Publisher(config)
        self.publish_paths = publish_paths  # the model's close paths put in the message (0: none)
        self._held: set[str] = set()  # symbols whose stored state has been read (or found missing)
        self._dirty: set[str] = set()

    @property
    def horizon(self) -> int:
        return self.publisher.config.horizon

    def missing(self, symbols: Iterable[str]) -> list[str]:
        """Symbols (and the pooled state) whose stored state has not been read yet."""
        wanted = [POOLED, *symbols]
        return [s for s in dict.fromkeys(wanted) if s not in self._held]

    def take(self, keys: Sequence[str], states: dict[str, dict[str, Any]]) -> None:
        """Stored states of ``keys`` (absent: none stored yet) join the publisher."""
        self.publisher.take(states)
        self._held.update(keys)

    def snapshot(self, keys: Iterable[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Read only (on-demand forecasts): the states held of ``keys``, as they would be stored, and
        the keys whose stored state has not been read yet."""
        wanted = list(dict.fromkeys(keys))
        return self.publisher.export([k for k in wanted if k in self._held]), [k for k in wanted if k not in self._held]

    def forget(self, symbols: Iterable[str]) -> None:
        """Symbols this replica no longer owns: their state is read again if they come back."""
        gone = [s for s in symbols if s != POOLED]
        self.publisher.forget(gone)
        self._held.difference_update(gone)
        self._dirty.difference_update(gone)

    def apply(self, window: SeriesWindow, result: SeriesForecast) -> Applied | None:
        """Publish ``result`` through the guard, in place (its close mean and quantiles); None when the
        forecast has no close sample paths or its horizon differs (published as the model made it)."""
        samples = result.samples
        if samples.ndim != 3 or not len(samples) or samples.shape[1] != self.horizon:
            return None
        closes = np.asarray(window.values[:, CLOSE], dtype=np.float64)
        published = self.publisher.publish(window.series_id, closes, np.asarray(samples[:, :, CLOSE], dtype=np.float64))
        levels = tuple(result.quantile_levels)
        model_q = np.array(result.quantiles[:, :, CLOSE], dtype=np.float64)
        quantiles = np.array(result.quantiles, dtype=np.float64)
        quantiles[:, :, CLOSE] = quantiles_at(published.quantiles, levels)
        mean = np.array(result.mean, dtype=np.float64)
        model_mean = mean[:, CLOSE].copy()
        mean[:, CLOSE] = published.quantiles.mean(axis=0)
        result.quantiles, result.mean = quantiles, mean
        paths = np.asarray(samples[: self.publish_paths, :, CLOSE], dtype=np.float64) if self.publish_paths else None
        return Applied(model_q, model_mean, published.quantiles, published, paths)

    def observe(self, ticket: Ticket, realised: np.ndarray) -> None:
        self.publisher.realise(ticket, realised)
        self._dirty.update((POOLED, ticket.symbol))

    def changed(self) -> dict[str, dict[str, Any]]:
        """The states changed since the last call (to be stored), and forgets that they changed."""
        out = self.publisher.export(sorted(self._dirty))
        self._dirty.clear()
        return out


__all__ = ["Applied", "GuardedCalibrator", "build_calibrator", "distribution_fields", "publisher_config"]
