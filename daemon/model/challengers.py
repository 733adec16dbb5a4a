"""Shadow challengers: registry versions forecast and scored beside the champion, never served.

With ``KRONOS_MODEL__REGISTRY`` and ``KRONOS_CHALLENGERS__ENABLED``, :class:`ChallengerSet` reads the
registry's challengers (:mod:`kronos_contract.challengers`) every ``KRONOS_CHALLENGERS__POLL_S`` and
keeps the first ``KRONOS_CHALLENGERS__MAX`` of them loaded (fetched, verified, built and smoke-tested by
the champion's own path, :func:`daemon.model.swap.prepare_version` and ``build_version``); one that
leaves the list, or becomes the champion, is unloaded.

Per round of the loop:

1. in the same model-thread job as the champion's call, right after it, each challenger forecasts the
   same windows (the symbols a stable hash selects, ``KRONOS_CHALLENGERS__SAMPLE_FRACTION``) with its
   own seed and no token cache of another version (:meth:`ChallengerSet.forecast_in_job`). The
   champion's forecasts are handed to the loop as soon as they are made (:meth:`champion_done`), so
   they are published while the challengers' calls run;
2. once the champion's forecasts are published and stored, the challengers' are calibrated and scored
   by the same online scorer under their own version (:meth:`ChallengerSet.after_round`), and sent to
   ``KRONOS_CHALLENGERS__SHADOW_TOPIC`` when it is set. They never reach the output topic nor the
   latest-forecast keys.

A challenger's pending forecasts are kept as those of the series ``{symbol}~{version}``, apart from the
champion's; it is calibrated with its own state, per version (:mod:`daemon.scoring.calibration`,
starting from a copy of the champion's); its per-forecast losses name the real symbol, so they pair
with the champion's (:mod:`daemon.scoring.paired`). A failing challenger costs nothing to
the champion's forecasts: its error is logged and counted, and the round goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import functools
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from daemon.io.messages import build_forecast_message, encode_json
from daemon.model.vetting import (
    LoadDeferred,
    LoadedModel,
    LoadRefused,
    build_version,
    prepare_version,
    uses_cuda,
)
from daemon.settings import Settings
from daemon.state.base import SymbolState
from kronos_core.stream_types import SeriesForecast, SeriesWindow, StreamForecaster, derive_seed

log = structlog.get_logger("kronos.challengers")

SEPARATOR = "~"  # a challenger's pending forecasts of a symbol: {symbol}~{version}


def selected(symbol: str, fraction: float) -> bool:
    """Whether challengers forecast ``symbol``: a stable hash, the same on every replica and restart."""
    return fraction >= 1.0 or zlib.crc32(symbol.encode()) / 2**32 < fraction


def _resolve(future: asyncio.Future[list[SeriesForecast]], results: list[SeriesForecast]) -> None:
    if not future.done():
        future.set_result(results)


class ShadowState:
    """A symbol's state as the scorer sees it for one challenger: its own pending list and calibration
    (``symbol``), the real symbol for pairing losses (``pair_symbol``), the same bars."""

    __slots__ = ("symbol", "pair_symbol", "timestamps", "rows")

    def __init__(self, state: Any, version: str) -> None:
        self.pair_symbol = state.symbol
        self.symbol = f"{state.symbol}{SEPARATOR}{version}"
        self.timestamps = state.timestamps
        self.rows = state.rows


class ChallengerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.loaded = Gauge("kronos_challengers_loaded", "Challenger versions loaded and scored.", registry=registry)
        self.loads = Counter(
            "kronos_challenger_loads", "Challenger versions the daemon tried to load, by result.",
            ["result"], registry=registry,
        )  # fmt: skip
        self.forecasts = Counter(
            "kronos_challenger_forecasts", "Shadow forecasts made by challengers.", ["model_version"],
            registry=registry,
        )  # fmt: skip
        self.errors = Counter(
            "kronos_challenger_errors", "Challenger rounds that failed (logged; the champion is not affected).",
            ["stage"], registry=registry,
        )  # fmt: skip
        self.model_seconds = Counter(
            "kronos_challenger_model_seconds", "Model-thread seconds spent on challenger forecasts.",
            registry=registry,
        )  # fmt: skip


class ChallengerSet:
    """The loaded challengers, their shadow forecasts and their scoring."""

    def __init__(
        self,
        settings: Settings,
        registry: Any,
        metrics: ChallengerMetrics,
        *,
        cache_root: Path,
        states: Callable[[], Mapping[str, SymbolState]] = dict,
        model_thread: Callable[[Callable[[], LoadedModel]], Awaitable[LoadedModel]] | None = None,
        public_key: Any | None = None,
    ) -> None:
        self.settings = settings
        self.config = settings.challengers
        self.registry = registry
        self.metrics = metrics
        self.cache_root = cache_root
        self._states = states
        self._model_thread = model_thread
        self.public_key = public_key
        self.scorer: Any = None  # the loop's OnlineScorer (set by the app)
        self.bus_out: Any = None  # the producer, for the shadow topic
        self.forecasters: dict[str, StreamForecaster] = {}
        self._failures: dict[str, tuple[int, float]] = {}
        self._round: list[tuple[str, list[SeriesWindow], list[SeriesForecast | Exception]]] = []
        self._early: asyncio.Future[list[SeriesForecast]] | None = None
        self._job: asyncio.Future[list[SeriesForecast]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.checks = 0

    @property
    def versions(self) -> list[str]:
        return list(self.forecasters)

    # -- following the registry -------------------------------------------------------------------

    async def check(self) -> None:
        """Load the challengers the registry lists (up to ``max``), unload the others."""
        from kronos_contract import challengers as listing

        self.checks += 1
        champion = await asyncio.to_thread(self.registry.champion)
        listed = await asyncio.to_thread(listing.challengers, self.registry)
        wanted = [v for v in listed if v != champion][: self.config.max]
        for version in [v for v in self.forecasters if v not in wanted]:
            self.forecasters.pop(version)
            log.info("challenger unloaded", version=version, champion=champion)
        for version in wanted:
            if version in self.forecasters:
                continue
            refusals, next_try = self._failures.get(version, (0, 0.0))
            if time.monotonic() < next_try:
                continue
            try:
                loaded = await self._load(version)
            except (LoadRefused, LoadDeferred) as exc:
                result = exc.result if isinstance(exc, LoadRefused) else "deferred"
                self.metrics.loads.labels(result).inc()
                delay = min(self.settings.model.registry_retry_s * 2**refusals, self.settings.model.registry_retry_max_s)
                self._failures[version] = (refusals + 1, time.monotonic() + delay)
                log.error("challenger refused", version=version, result=result, reason=str(exc), retry_in_s=delay)
                continue
            self._failures.pop(version, None)
            self.metrics.loads.labels("ok").inc()
            self.forecasters[version] = loaded.forecaster
            log.info("challenger loaded", version=version, load_s=round(loaded.load_s, 3))
        self.metrics.loaded.set(len(self.forecasters))

    async def _load(self, version: str) -> LoadedModel:
        states = dict(self._states())
        prepared = await asyncio.to_thread(
            prepare_version, self.registry, version, self.settings, self.cache_root, self.public_key
        )
        build = functools.partial(build_version, prepared, self.settings, states)
        if self._model_thread is not None and uses_cuda(self.settings):
            return await self._model_thread(build)
        return await asyncio.to_thread(build)

    def run_in_background(self) -> None:
        self._task = asyncio.create_task(self._poll_forever(), name="kronos-challengers-poll")

    def wake(self) -> None:
        self._wake.set()

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the registry unreachable: keep what is loaded, try again
                log.warning("reading the registry's challengers failed; retrying", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.config.poll_s)
            self._wake.clear()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self.forecasters.clear()

    def drop(self, symbols: Sequence[str]) -> None:
        """Forget the warm sessions of revoked symbols."""
        for forecaster in self.forecasters.values():
            forget = getattr(forecaster, "drop", None)
            if callable(forget):
                forget(list(symbols))

    # -- one round --------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether any challenger is loaded (else the loop's calls run as without challengers)."""
        return bool(self.forecasters)

    def begin_round(self, loop: asyncio.AbstractEventLoop | None) -> asyncio.Future[list[SeriesForecast]] | None:
        """A new round (forgetting what a round that failed before :meth:`after_round` left); returns the
        future the model thread resolves with the champion's forecasts as soon as they are made (None
        without ``loop``: the job's result is awaited whole)."""
        self._round = []
        self._job = None
        self._early = None if loop is None else loop.create_future()
        return self._early

    def champion_done(self, results: list[SeriesForecast]) -> None:
        """On the model thread: the champion's forecasts of this job are made (the challengers' follow)."""
        early = self._early
        if early is not None and not early.done():
            early.get_loop().call_soon_threadsafe(_resolve, early, results)

    async def champion_results(
        self, early: asyncio.Future[list[SeriesForecast]], job: asyncio.Future[list[SeriesForecast]]
    ) -> list[SeriesForecast]:
        """The champion's forecasts of a job, as soon as they are made: the loop publishes them while the
        model thread goes on with the challengers' calls of the same job (awaited in :meth:`after_round`)."""
        await asyncio.wait({early, job}, return_when=asyncio.FIRST_COMPLETED)
        if early.done() and not early.cancelled():
            self._job = job
            return early.result()
        return await job  # the champion's call failed: its error; or the job ended first

    def forecast_in_job(self, windows: Sequence[SeriesWindow], horizon: int) -> None:
        """On the model thread, right after the champion's call on ``windows``: each challenger's
        forecasts of the selected symbols (kept for :meth:`after_round`)."""
        if not self.forecasters:
            return
        t0 = time.perf_counter()
        base = self.settings.model.base_seed
        for version, forecaster in list(self.forecasters.items()):
            mine = []
            for w in windows:
                if not selected(w.series_id, self.config.sample_fraction):
                    continue
                ts = int(w.timestamps[-1].astype("datetime64[ns]").astype("int64"))
                mine.append(dataclasses.replace(w, token_state=None, seed=derive_seed(w.series_id, ts, version, base)))
            if not mine:
                continue
            try:
                results: list[SeriesForecast | Exception] = list(forecaster.forecast(mine, horizon))
                if len(results) != len(mine):
                    raise ValueError(f"{len(results)} forecasts for {len(mine)} windows")
            except Exception as exc:
                self.metrics.errors.labels("forecast").inc()
                log.warning("challenger forecast failed; its round is skipped", version=version, error=repr(exc))
                continue
            self._round.append((version, mine, results))
        self.metrics.model_seconds.inc(time.perf_counter() - t0)

    async def after_round(self, stored: Sequence[tuple[Any, Any]], mode: str) -> None:
        """After the champion's round is stored: score (and publish to the shadow topic) the challengers'
        forecasts of it. ``stored``: (the symbol's state with the new bar, the champion's context)."""
        job, self._job = self._job, None
        if job is not None:  # the challengers' calls of this round's job
            with contextlib.suppress(Exception):  # the champion's part was taken already; theirs are caught
                await job
        made, self._round = self._round, []
        by_symbol = {state.symbol: (state, ctx) for state, ctx in stored}
        for version, windows, results in made:
            items, contexts = [], []
            for w, r in zip(windows, results, strict=True):
                symbol = w.series_id
                if symbol not in by_symbol or isinstance(r, Exception):
                    continue  # not stored (refused by the store) or failed
                state, ctx = by_symbol[symbol]
                shadow_ctx = copy.copy(ctx)
                shadow_ctx.seed = w.seed
                items.append((ShadowState(state, version), w, r))
                contexts.append(shadow_ctx)
            if not items:
                continue
            self.metrics.forecasts.labels(version).inc(len(items))
            try:
                if self.scorer is not None:
                    windows_, results_ = [w for _, w, _ in items], [r for _, _, r in items]
                    await self.scorer.adjust(windows_, results_, version, contexts, champion=False)
                if self.config.shadow_topic and self.bus_out is not None:
                    await self._publish(version, items, contexts, mode)
                if self.scorer is not None:
                    await self.scorer.stored(items, version)
            except Exception as exc:
                self.metrics.errors.labels("score").inc()
                log.warning("scoring a challenger's round failed", version=version, error=repr(exc))

    async def _publish(self, version: str, items: list[tuple[Any, Any, Any]], contexts: list[Any], mode: str) -> None:
        records = []
        now = time.time()
        for (state, _, result), ctx in zip(items, contexts, strict=True):
            record = build_forecast_message(ctx, result, version, mode, now)
            record["shadow"] = True
            records.append((state.pair_symbol.encode(), encode_json(record)))
        try:
            await self.bus_out.send_batch(self.config.shadow_topic, records)
        except Exception as exc:
            self.metrics.errors.labels("publish").inc()
            log.warning("publishing shadow forecasts failed", version=version, error=repr(exc))
