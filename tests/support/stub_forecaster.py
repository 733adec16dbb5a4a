"""A small deterministic StreamForecaster for the daemon's tests, until the real engine is wired in.

Persistence plus seeded noise: every sample path starts at the window's last bar and drifts by a
random walk drawn from ``np.random.default_rng(window.seed)``. A forecast is a pure function of the
window and its seed, as the contract demands, so replays give the same numbers. In incremental mode
it returns a token cache and checks that the one it receives belongs to the bar before the new one.

Subprocess daemons load it with the repository root on ``PYTHONPATH`` and
``KRONOS_MODEL__FACTORY=tests.support.stub_forecaster:build``;
``STUB_FORECASTER_DELAY_MS`` slows each call (to kill a daemon mid-stream).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from kronos_core.stream_types import SeriesForecast, SeriesWindow, StreamMode, TokenState


class StubForecaster:
    def __init__(
        self,
        mode: StreamMode = "exact",
        max_context: int = 64,
        quantile_levels: tuple[float, ...] = (0.1, 0.5, 0.9),
        sample_count: int = 4,
        model_version: str = "stub-1",
        delay_ms: float = 0.0,
        fail_symbols: Sequence[str] = (),
    ) -> None:
        self.mode: StreamMode = mode
        self.max_context = max_context
        self.quantile_levels = tuple(quantile_levels)
        self.sample_count = sample_count
        self.model_version = model_version
        self.delay_ms = delay_ms
        self.fail_symbols = set(fail_symbols)
        self.calls: list[list[str]] = []  # series ids of every call, for assertions
        self._lock = threading.Lock()

    def forecast(self, windows: Sequence[SeriesWindow], horizon: int) -> list[SeriesForecast]:
        with self._lock:
            self.calls.append([w.series_id for w in windows])
        if self.delay_ms:
            time.sleep(self.delay_ms / 1e3)
        bad = [w.series_id for w in windows if w.series_id in self.fail_symbols]
        if bad:
            raise RuntimeError(f"stub forecaster told to fail for {bad}")
        return [self._one(w, horizon) for w in windows]

    def _one(self, w: SeriesWindow, horizon: int) -> SeriesForecast:
        assert w.values.ndim == 2 and w.values.shape[1] == 6, w.values.shape
        assert len(w.values) == len(w.timestamps) <= self.max_context
        assert len(w.future_timestamps) == horizon and w.future_timestamps[0] > w.timestamps[-1]
        rng = np.random.default_rng(w.seed)
        steps = rng.normal(0.0, 0.001, size=(self.sample_count, horizon, 6))  # [S, H, 6]
        samples = w.values[-1] * np.exp(np.cumsum(steps, axis=1))  # [S, H, 6]
        quantiles = np.quantile(samples, self.quantile_levels, axis=0)  # [Q, H, 6]
        return SeriesForecast(
            series_id=w.series_id,
            mean=samples.mean(axis=0),
            samples=samples,
            quantiles=quantiles,
            quantile_levels=self.quantile_levels,
            token_state=self._tokens(w) if self.mode == "incremental" else None,
            timings_ms={"total": 0.0},
        )

    def _tokens(self, w: SeriesWindow) -> TokenState:
        ts = w.timestamps.astype("datetime64[ns]").astype(np.int64)
        prev = w.token_state
        if prev is not None and len(ts) > 1 and prev.last_ts != int(ts[-2]):
            raise ValueError(
                f"token cache ends at {prev.last_ts}, the window's previous bar is at {int(ts[-2])}"
            )
        ids = (np.round(w.values[:, 3] * 100).astype(np.int64)) % 1024  # [L]
        return TokenState(
            s1=ids,
            s2=ids[::-1].copy(),
            mean=w.values.mean(axis=0),
            std=w.values.std(axis=0) + 1e-5,
            anchor_ts=int(ts[0]),
            last_ts=int(ts[-1]),
            refreshed_ts=int(ts[0]) if prev is None else prev.refreshed_ts,
            bars_since_refresh=0 if prev is None else prev.bars_since_refresh + 1,
        )


def build(settings: Any) -> StubForecaster:
    """The KRONOS_MODEL__FACTORY entry point: a stub shaped by the daemon's settings."""
    return StubForecaster(
        mode=settings.mode,
        max_context=settings.model.max_context,
        quantile_levels=settings.model.quantile_levels,
        sample_count=min(settings.model.sample_count, 8),
        delay_ms=float(os.environ.get("STUB_FORECASTER_DELAY_MS", "0")),
    )


class SlowedForecaster:
    """A real forecaster whose calls take ``delay_ms`` longer: lets a test land a kill mid-batch."""

    def __init__(self, inner: Any, delay_ms: float) -> None:
        self.inner, self.delay_ms = inner, delay_ms
        self.model_version, self.mode = inner.model_version, inner.mode
        self.max_context, self.quantile_levels = inner.max_context, inner.quantile_levels

    def forecast(self, windows: Sequence[SeriesWindow], horizon: int) -> list[SeriesForecast]:
        if self.delay_ms:
            time.sleep(self.delay_ms / 1e3)
        result: list[SeriesForecast] = self.inner.forecast(windows, horizon)
        return result


def build_engine(settings: Any) -> SlowedForecaster:
    """KRONOS_MODEL__FACTORY entry point: kronos_core's engine over KRONOS_MODEL__*_DIR, slowed by
    STUB_FORECASTER_DELAY_MS (0: not at all)."""
    from daemon.model.build import build_engine_forecaster

    return SlowedForecaster(
        build_engine_forecaster(settings), float(os.environ.get("STUB_FORECASTER_DELAY_MS", "0"))
    )
