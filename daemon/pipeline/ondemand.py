"""On-demand forecasts (``POST /v1/forecast``): a supplied history, forecast on the stream's model thread.

- **One model thread.** Requests wait in a bounded queue (``KRONOS_API__ONDEMAND_QUEUE``; a full queue
  answers 429 with Retry-After). A dispatcher takes the queued requests that share the first one's
  horizon, samples and quantile levels, up to ``KRONOS_API__ONDEMAND_BATCH``, and runs them as one
  batched model call through :meth:`~daemon.model.runner.ModelExecutor.run_when_idle`: only while no
  stream round waits for the model and the stream has made no call for ``KRONOS_API__ONDEMAND_QUIET_MS``
  (waited for at most ``KRONOS_API__ONDEMAND_MAX_DEFER_MS``), one such call at a time. The stream's
  bars come first; a round that arrives meanwhile waits for at most that one call.
- **The same forecast as the stream's, asked for.** The window is the history's last
  ``max_context - horizon`` bars (exact mode, whatever ``KRONOS_MODE``: no warm session of the stream
  is touched); the seed comes from (symbol, last bar, model version); the message has the topic's shape
  (:func:`~daemon.io.messages.build_forecast_message`), ``source.topic = "api"``, and an id that also
  names the history and the request (so it never equals a stream forecast's id).
- **Bands.** With calibration on and the model's horizon, the close bands are the published (guarded)
  distribution of the symbol's calibration state, or the pooled one while the symbol has too few
  realised forecasts of its own (``guard.scope``), read from memory or the store and never written:
  on-demand forecasts change no calibration state and no score. Without a state that has learnt
  anything (or another horizon), the bands are the model's (``bands = "model"``) and the probabilities
  are the model's own (share of paths above the last close, unshrunk).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from daemon.api.limits import (
    Ask,
    History,
    OnDemandError,
    OnDemandLimits,
    check_ask,
    check_history,
    setting_name,
)
from daemon.io.messages import (
    TS_MAX,
    ForecastContext,
    build_forecast_message,
    forecast_id,
    horizon_ns,
    infer_interval_ns,
    quantile_key,
    to_ns,
)
from daemon.model.runner import ModelExecutor
from daemon.model.swap import pin_forecaster
from daemon.pipeline.calendars import HorizonCalendar, build_calendar
from daemon.pipeline.features import Calibrated, Configured
from daemon.pipeline.ondemand_metrics import OnDemandMetrics
from daemon.scoring.calibration import CLOSE, GuardedCalibrator, distribution_fields
from kronos_core.evaluation.publisher import POOLED
from kronos_core.stream_types import SeriesForecast, SeriesWindow, StreamForecaster, derive_seed

log = structlog.get_logger("kronos.ondemand")

SOURCE_TOPIC = "api"  # source.topic of an on-demand forecast
_TS_MAX_NS = to_ns(TS_MAX)


def sampling_view(forecaster: StreamForecaster, samples: int, levels: tuple[float, ...]) -> StreamForecaster:
    """The forecaster in exact mode with ``samples`` paths and ``levels`` (a shallow copy: the model,
    and nothing of the stream's warm sessions, is shared). kronos_core's StreamingForecaster takes them
    through its config; another forecaster through ``sample_count`` and ``quantile_levels`` if it has them."""
    view = copy.copy(forecaster)
    config = forecaster.config if isinstance(forecaster, Configured) else None
    if dataclasses.is_dataclass(config) and hasattr(config, "sampling"):
        sampling = dataclasses.replace(config.sampling, sample_count=samples)  # type: ignore[type-var]
        view.config = dataclasses.replace(config, mode="exact", sampling=sampling, quantile_levels=levels)  # type: ignore[attr-defined,type-var]
        view.mode = "exact"
    elif hasattr(view, "sample_count"):
        view.sample_count = samples  # type: ignore[attr-defined]
    view.quantile_levels = levels
    return view


@dataclass
class _Job:
    history: History
    ask: Ask
    received_at: float  # wall clock
    future: asyncio.Future[dict[str, Any]] = field(repr=False)


class OnDemandService:
    """The queue, the dispatcher and the messages of on-demand forecasts (see the module docstring)."""

    def __init__(
        self,
        limits: OnDemandLimits,
        defaults: Ask,
        *,
        forecaster: Callable[[], StreamForecaster | None],
        scorer: Callable[[], Any] = lambda: None,
        base_seed: int = 0,
        default_interval_s: float = 60.0,
        exchange_calendar: tuple[str | None, Any] = (None, "end"),
        metrics: OnDemandMetrics | None = None,
    ) -> None:
        self.limits = limits
        self.defaults = defaults
        self._forecaster = forecaster
        self._scorer = scorer
        self._base_seed = base_seed
        self._default_interval_ns = int(default_interval_s * 1e9)
        self._executor: ModelExecutor | None = None
        self._calendar: HorizonCalendar | None = None
        self._calendar_name = exchange_calendar  # KRONOS_MODEL__EXCHANGE_CALENDAR, its bar label
        self._queue: list[_Job] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._call_s = 0.5  # a model call's duration, smoothed (for Retry-After)
        self.calls: deque[int] = deque(maxlen=1024)  # batch sizes of the latest model calls (tests)
        self.metrics = metrics or OnDemandMetrics()

    def attach(self, executor: ModelExecutor) -> None:
        """The stream's model thread, once the daemon has it; the horizon's calendar is the stream's."""
        name, label = self._calendar_name
        self._calendar = build_calendar(name, label) if name else None
        self._executor = executor

    def not_ready(self) -> str | None:
        """Why no forecast can be made now, or None."""
        if self._forecaster() is None:
            return "the model is not loaded yet"
        if self._executor is None:
            return "the daemon is starting (the model thread is not up yet)"
        return None

    @property
    def queued(self) -> int:
        return len(self._queue)

    def max_context(self) -> int:
        forecaster = self._forecaster()
        return int(forecaster.max_context) if forecaster is not None else 0

    async def forecast(self, history: History, ask: Ask) -> dict[str, Any]:
        """The forecast message of ``history`` (raises :class:`OnDemandError`)."""
        try:
            record = await self._forecast(history, ask)
        except OnDemandError as exc:
            outcome = {429: "queue_full", 503: "not_ready"}.get(exc.status, "invalid" if exc.status < 500 else "failed")
            self.metrics.requests.labels(outcome).inc()
            raise
        self.metrics.requests.labels("ok").inc()
        return record

    async def _forecast(self, history: History, ask: Ask) -> dict[str, Any]:
        reason = self.not_ready()
        if reason is not None:
            raise OnDemandError(503, f"no forecast now: {reason}; retry shortly", {"Retry-After": "5"})
        check_history(history, self.limits)
        check_ask(ask, self.limits, self.max_context())
        if len(self._queue) >= self.limits.ondemand_queue:
            wait_s = max(1, math.ceil(self._call_s * (len(self._queue) / self.limits.ondemand_batch + 1)))
            raise OnDemandError(
                429,
                f"the on-demand queue is full ({len(self._queue)} requests waiting, "
                f"{setting_name('ondemand_queue')}={self.limits.ondemand_queue}); retry after {wait_s} s",
                {"Retry-After": str(wait_s)},
            )
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._dispatch(), name="kronos-ondemand")
        job = _Job(history, ask, time.time(), asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self.metrics.queued.set(len(self._queue))
        self._wake.set()
        try:
            return await job.future
        finally:
            self.metrics.latency.observe(time.time() - job.received_at)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._fail(self._queue, OnDemandError(503, "the daemon is stopping; retry on another replica"))
        self._queue.clear()

    # -- the dispatcher ---------------------------------------------------------------------------

    def take(self) -> list[_Job]:
        """The next batch: queued requests with the first one's ask, in order, up to the batch cap."""
        self._queue = [j for j in self._queue if not j.future.done()]  # a client that went away
        if not self._queue:
            return []
        key = self._queue[0].ask
        batch = [j for j in self._queue if j.ask == key][: self.limits.ondemand_batch]
        taken = set(map(id, batch))
        self._queue = [j for j in self._queue if id(j) not in taken]
        self.metrics.queued.set(len(self._queue))
        return batch

    async def _dispatch(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(0)  # requests that arrive together join one call
            batch = self.take()
            if not batch:
                self._wake.clear()
                continue
            try:
                await self._serve(batch)
            except asyncio.CancelledError:  # closing: the batch in flight is answered too
                self._fail(batch, OnDemandError(503, "the daemon is stopping; retry on another replica"))
                raise
            except Exception as exc:  # never leave a request waiting
                log.error("on-demand batch failed", size=len(batch), error=repr(exc))
                failed = exc if isinstance(exc, OnDemandError) else None
                self._fail(batch, failed or OnDemandError(500, f"forecasting failed: {type(exc).__name__}: {exc}"))

    @staticmethod
    def _fail(batch: list[_Job], error: OnDemandError) -> None:
        for job in batch:
            if not job.future.done():
                job.future.set_exception(error)

    async def _serve(self, batch: list[_Job]) -> None:
        executor, forecaster = self._executor, self._forecaster()
        if executor is None or forecaster is None:
            raise OnDemandError(503, "the model is not ready; retry shortly")
        model = pin_forecaster(forecaster)  # one version for the whole call
        version, ask = model.model_version, batch[0].ask
        windows, contexts, jobs = [], [], []
        for job in batch:
            try:
                window, ctx = self._window(job, version, model.max_context)
            except OnDemandError as exc:
                job.future.set_exception(exc)
                continue
            windows.append(window)
            contexts.append(ctx)
            jobs.append(job)
        if not windows:
            return
        view = sampling_view(model, ask.samples, ask.levels)
        started = time.time()
        results: list[SeriesForecast | Exception]
        try:
            results = list(await executor.run_when_idle(_call, view, windows, ask.horizon, **self._pace()))
        except Exception as exc:  # each alone, so that one bad history fails only its own request
            log.warning("batched on-demand forecast failed; retrying one by one", size=len(windows), error=repr(exc))
            results = []
            for window in windows:
                try:
                    results += await executor.run_when_idle(_call, view, [window], ask.horizon, **self._pace())
                except Exception as one:
                    results.append(one)
        elapsed = time.time() - started
        self._call_s = 0.8 * self._call_s + 0.2 * elapsed
        self.calls.append(len(windows))
        self.metrics.batch_size.observe(len(windows))
        await self._bands(windows, results, contexts)
        now = time.time()
        for job, window, ctx, result in zip(jobs, windows, contexts, results, strict=True):
            if job.future.done():
                continue
            ctx.model_started_at, ctx.model_ms = started, elapsed * 1e3
            try:
                if isinstance(result, Exception):
                    raise result
                job.future.set_result(self._message(ctx, window, result, version, ask, now))
            except Exception as exc:
                job.future.set_exception(
                    OnDemandError(400, f"the model could not forecast this history: {type(exc).__name__}: {exc}")
                )

    def _pace(self) -> dict[str, float]:
        return {"quiet_s": self.limits.ondemand_quiet_ms / 1e3, "max_defer_s": self.limits.ondemand_max_defer_ms / 1e3}

    def _window(self, job: _Job, version: str, max_context: int) -> tuple[SeriesWindow, ForecastContext]:
        h, ask = job.history, job.ask
        keep = max(1, max_context - ask.horizon)  # exact mode's lookback
        ts, values = h.ts_ns[-keep:], np.asarray(h.values[-keep:], dtype=np.float64)
        interval = infer_interval_ns(ts, self._default_interval_ns)
        last = ts[-1]
        if last + interval * ask.horizon >= _TS_MAX_NS:
            raise OnDemandError(400, f"the horizon would run past {TS_MAX.date()}, the latest supported time")
        calendar = self._calendar
        future = (calendar.future if calendar else horizon_ns)(last, interval, ask.horizon)
        seed = derive_seed(h.symbol, last, version, self._base_seed)
        window = SeriesWindow(
            h.symbol, values, np.asarray(ts, dtype="datetime64[ns]"), np.asarray(future, dtype="datetime64[ns]"), seed
        )
        received_ms = int(job.received_at * 1e3)
        ctx = ForecastContext(h.symbol, last, interval, future, seed, len(ts), SOURCE_TOPIC, 0, 0, received_ms,
                              job.received_at)  # fmt: skip
        ctx.context_first_ns = ts[0]
        return window, ctx

    async def _bands(
        self, windows: Sequence[SeriesWindow], results: Sequence[SeriesForecast | Exception], contexts: list[ForecastContext]
    ) -> None:
        """The published (guarded) close bands where a calibration state applies (read only)."""
        scorer = self._scorer()
        cal: GuardedCalibrator | None = scorer.calibrator if isinstance(scorer, Calibrated) else None
        if cal is None or not windows or len(windows[0].future_timestamps) != cal.horizon:
            return
        version = cal.champion
        if version is None:
            return
        states, unread = cal.snapshot(version, [POOLED, *(w.series_id for w in windows)])
        if unread:
            try:
                stored = await scorer.store.calibration(cal.sources(version, unread))
                states.update(cal.resolve(version, unread, stored))
            except Exception as exc:
                log.warning("reading the calibration state failed; on-demand forecasts get the model's bands",
                            error=repr(exc))  # fmt: skip
                return
        min_symbol = cal.config.min_symbol
        for window, result, ctx in zip(windows, results, contexts, strict=True):
            if isinstance(result, Exception):
                continue
            own, pooled = states.get(window.series_id), states.get(POOLED)
            if not ((own and own.get("count", 0) >= min_symbol) or (pooled and pooled.get("count", 0) > 0)):
                continue  # no state has learnt anything: the model's bands
            temp = GuardedCalibrator(cal.config, cal.publish_paths)  # a throwaway: nothing is stored
            temp.serve(version)
            temp.publisher.take({k: v for k, v in ((POOLED, pooled), (window.series_id, own)) if v is not None})
            try:
                applied = temp.apply(window, result, version)
            except Exception as exc:  # calibration must never cost a forecast
                log.warning("calibrating an on-demand forecast failed; the model's bands", error=repr(exc))
                continue
            if applied is not None:
                ctx.bands = "guarded"
                ctx.distribution = distribution_fields(applied, tuple(result.quantile_levels))

    def _message(
        self, ctx: ForecastContext, window: SeriesWindow, result: SeriesForecast, version: str, ask: Ask, now: float
    ) -> dict[str, Any]:
        if tuple(result.quantile_levels) != ask.levels:  # a forecaster that keeps its own levels
            result.quantiles = np.quantile(result.samples, ask.levels, axis=0)
            result.quantile_levels = ask.levels
        record = build_forecast_message(ctx, result, version, "exact", now)
        record["id"] = forecast_id(
            ctx.symbol, ctx.ts_ns, version,
            f"{SOURCE_TOPIC}|{ctx.context_bars}@{ctx.context_first_ns}|h{ask.horizon}|s{ask.samples}|q{list(ask.levels)}",
        )  # fmt: skip
        if ctx.bands == "model" and result.samples.ndim == 3 and len(result.samples):
            last = float(window.values[-1, CLOSE])
            closes = result.samples[:, :, CLOSE]
            record["probabilities"] = {
                "p_up": np.round((closes > last).mean(axis=0), 4).tolist(),
                "expected_return": (result.mean[:, CLOSE] / last - 1.0).tolist(),
                "return_quantiles": {
                    quantile_key(q): (result.quantiles[i, :, CLOSE] / last - 1.0).tolist() for i, q in enumerate(ask.levels)
                },
            }
        return record


def _call(forecaster: StreamForecaster, windows: list[SeriesWindow], horizon: int) -> list[SeriesForecast]:
    results = list(forecaster.forecast(windows, horizon))
    if len(results) != len(windows):
        raise RuntimeError(f"the forecaster answered {len(results)} forecasts for {len(windows)} windows")
    return results




def build_ondemand(
    settings: Any, forecaster: Callable[[], StreamForecaster | None], scorer: Callable[[], Any], registry: Any = None
) -> OnDemandService:
    """The daemon's service from its settings (``KRONOS_API__*`` limits, the model's defaults)."""
    m = settings.model
    return OnDemandService(
        settings.api,
        Ask(m.horizon, m.sample_count, tuple(m.quantile_levels)),
        forecaster=forecaster,
        scorer=scorer,
        base_seed=m.base_seed,
        default_interval_s=settings.default_bar_interval_s,
        exchange_calendar=(m.exchange_calendar, m.calendar_bar_label),
        metrics=OnDemandMetrics(registry),
    )


__all__ = ["Ask", "History", "OnDemandError", "OnDemandService", "build_ondemand", "check_ask", "check_history"]
