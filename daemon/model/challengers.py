"""Shadow challengers: registry versions forecast and scored beside the champion, never served.

With ``KRONOS_MODEL__REGISTRY`` and ``KRONOS_CHALLENGERS__ENABLED``, :class:`ChallengerSet` reads the
registry's challengers (:mod:`kronos_contract.challengers`) every ``KRONOS_CHALLENGERS__POLL_S`` and
keeps the first ``KRONOS_CHALLENGERS__MAX`` of them loaded (fetched, verified, built and smoke-tested by
the champion's own path, :func:`daemon.model.swap.prepare_version` and ``build_version``); one that
leaves the list, or becomes the champion, is unloaded.

Per round of the loop:

1. the champion forecasts, publishes and stores the round as without challengers; the windows of the
   symbols a stable hash selects (``KRONOS_CHALLENGERS__SAMPLE_FRACTION``) join the challengers'
   backlog (:meth:`ChallengerSet.forecast_in_job`, :meth:`ChallengerSet.after_round`);
2. between rounds, on the model thread, each challenger forecasts them in chunks, with its own seed
   and its own token caches (:mod:`daemon.model.shadow_work`: in the gaps between the stream's bursts
   of rounds, in chunks sized from their measured cost so that a round does not wait behind them; a
   challenger that falls too far behind skips bars, counted);
3. then, still between rounds, the challengers' forecasts are calibrated and scored by the same online
   scorer under their own version, and sent to ``KRONOS_CHALLENGERS__SHADOW_TOPIC`` when it is set.
   They never reach the output topic nor the latest-forecast keys.

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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from daemon.io.messages import build_forecast_message, encode_json
from daemon.model.shadow_work import Entry, ShadowBacklog, ShadowState, selected
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
from kronos_core.stream_types import SeriesForecast, SeriesWindow, StreamForecaster, TokenState, derive_seed

log = structlog.get_logger("kronos.challengers")

def _resolve(future: asyncio.Future[list[SeriesForecast]], results: list[SeriesForecast]) -> None:
    if not future.done():
        future.set_result(results)


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
        self.skipped = Counter(
            "kronos_challenger_skipped_forecasts",
            "Bars a challenger did not forecast: it fell behind the stream (reason behind), the symbol was "
            "revoked, or the daemon stopped first.", ["model_version", "reason"], registry=registry,
        )  # fmt: skip
        self.shared_contexts = Counter(
            "kronos_challenger_shared_contexts",
            "Shadow forecasts that took the champion's context ids (the same tokenizer: exact mode) instead of "
            "encoding the window again.", ["model_version"], registry=registry,
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
        model_thread: Callable[[Callable[[], Any]], Awaitable[Any]] | None = None,
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
        self._round: list[SeriesWindow] = []  # this round's windows the challengers forecast
        self._early: asyncio.Future[list[SeriesForecast]] | None = None
        self._job: asyncio.Future[list[SeriesForecast]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.backlog = ShadowBacklog(self.config)
        self._score_s = 0.0  # seconds per shadow forecast scored (the last scoring's)
        self._worker: asyncio.Task[None] | None = None
        self._scoring = asyncio.Lock()  # the scorer serves one version at a time: not during a round
        self._tokens: dict[str, dict[str, TokenState]] = {}  # per version, its token caches (incremental)
        self._revoked: set[str] = set()
        self._shares_logged: set[str] = set()  # versions whose tokenizer sharing was logged
        self.horizon = settings.model.horizon
        self.mode: str = settings.mode
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
            self._tokens.pop(version, None)
            self._shares_logged.discard(version)
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
        for task in (self._task, self._worker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._skipped(self.backlog.clear(), "stopped")
        self.forecasters.clear()

    def drop(self, symbols: Sequence[str]) -> None:
        """Forget the warm sessions, token caches and waiting bars of revoked symbols."""
        self._skipped(self.backlog.drop(symbols), "revoked")
        self._revoked.update(symbols)  # forecast, not scored yet: not scored (another replica owns them)
        for tokens in self._tokens.values():
            for symbol in symbols:
                tokens.pop(symbol, None)
        for forecaster in self.forecasters.values():
            forget = getattr(forecaster, "drop", None)
            if callable(forget):
                forget(list(symbols))

    # -- one round --------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether any challenger is loaded, or its forecasts are being scored (else the loop's calls run
        as without challengers)."""
        return bool(self.forecasters) or self._scoring.locked()

    def begin_round(self, loop: asyncio.AbstractEventLoop | None) -> asyncio.Future[list[SeriesForecast]] | None:
        """A new round (forgetting what a round that failed before :meth:`after_round` left); returns the
        future the model thread resolves with the champion's forecasts as soon as they are made (None
        without ``loop``: the job's result is awaited whole)."""
        self._round = []
        self._job = None
        self._early = None if loop is None else loop.create_future()
        self.backlog.round_begins()
        return self._early

    def champion_done(self, results: list[SeriesForecast]) -> None:
        """On the model thread: the champion's forecasts of this job are made."""
        early = self._early
        if early is not None and not early.done():
            early.get_loop().call_soon_threadsafe(_resolve, early, results)

    async def champion_results(
        self, early: asyncio.Future[list[SeriesForecast]], job: asyncio.Future[list[SeriesForecast]]
    ) -> list[SeriesForecast]:
        """The champion's forecasts of a job, as soon as they are made; a scoring of challengers' forecasts
        under way ends first (the scorer serves one version at a time)."""
        await asyncio.wait({early, job}, return_when=asyncio.FIRST_COMPLETED)
        async with self._scoring:
            pass
        if early.done() and not early.cancelled():
            self._job = job
            return early.result()
        return await job  # the champion's call failed: its error; or the job ended first

    def forecast_in_job(
        self, windows: Sequence[SeriesWindow], results: Sequence[SeriesForecast], horizon: int
    ) -> None:
        """On the model thread, right after the champion's call on ``windows``: keep the windows of the
        selected symbols for the challengers (they forecast them between rounds: :mod:`daemon.model.shadow_work`),
        with the context ids the champion encoded (exact mode): a challenger whose tokenizer is the
        champion's (fine-tuned with it frozen) takes them instead of encoding the window again."""
        self.horizon = horizon
        if not self.forecasters:
            return
        self._round = [
            dataclasses.replace(w, context_tokens=getattr(r, "context_tokens", None))
            for w, r in zip(windows, results, strict=True)
            if selected(w.series_id, self.config.sample_fraction)
        ]

    async def after_round(self, stored: Sequence[tuple[Any, Any]], mode: str) -> None:
        """After the champion's round is stored: its windows join the challengers' backlog. ``stored``:
        (the symbol's state with the new bar, the champion's context)."""
        try:
            job, self._job = self._job, None
            if job is not None:
                with contextlib.suppress(Exception):  # the champion's part was taken already
                    await job
            windows, self._round = self._round, []
            if not windows or not self.forecasters:
                return
            self.mode = mode
            by_symbol = {state.symbol: (state, ctx) for state, ctx in stored}
            now = time.monotonic()
            entries = [Entry(w, *by_symbol[w.series_id], now) for w in windows if w.series_id in by_symbol]
            self._skipped(self.backlog.add(entries), "behind")
            if self._worker is None or self._worker.done():
                self._worker = asyncio.create_task(self._work_forever(), name="kronos-challengers-shadow")
        finally:
            self.backlog.round_ends()

    def _skipped(self, entries: list[Entry], reason: str) -> None:
        if entries:
            for version in self.forecasters:
                self.metrics.skipped.labels(version, reason).inc(len(entries))
            log.warning("shadow forecasts skipped", reason=reason, bars=len(entries), versions=self.versions)

    async def _work_forever(self) -> None:
        made: list[tuple[str, list[Entry], list[SeriesWindow], list[SeriesForecast | Exception]]] = []
        while True:
            try:
                chunk = await self.backlog.next_chunk(calls=max(1, len(self.forecasters)))
                for version, forecaster in list(self.forecasters.items()):
                    result = await self._forecast(version, forecaster, chunk)
                    if result is not None:
                        made.append((version, chunk, *result))
                if made and (not len(self.backlog) or len(made) >= 8):
                    await self._score(made)
                    made = []
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never stop the challengers for one failure
                made = []
                self.metrics.errors.labels("score").inc()
                log.warning("a challenger chunk failed; its forecasts are not scored", error=repr(exc))

    async def _forecast(
        self, version: str, forecaster: StreamForecaster, chunk: list[Entry]
    ) -> tuple[list[SeriesWindow], list[SeriesForecast | Exception]] | None:
        base, tokens = self.settings.model.base_seed, self._tokens.setdefault(version, {})
        windows = []
        for e in chunk:
            w = e.window
            ts = int(w.timestamps[-1].astype("datetime64[ns]").astype("int64"))
            seed = derive_seed(w.series_id, ts, version, base)
            windows.append(dataclasses.replace(w, token_state=tokens.get(w.series_id), seed=seed))
        shared = self._shared_contexts(version, forecaster, windows)

        took = [0.0]

        def call() -> list[SeriesForecast]:
            t0 = time.perf_counter()
            try:
                return list(forecaster.forecast(windows, self.horizon))
            finally:
                took[0] = time.perf_counter() - t0
                self.metrics.model_seconds.inc(took[0])

        try:
            run = self._model_thread
            results: list[SeriesForecast | Exception] = list(await (run(call) if run else asyncio.to_thread(call)))
            if len(results) != len(windows):
                raise ValueError(f"{len(results)} forecasts for {len(windows)} windows")
            self.backlog.cost.observe(len(windows), took[0])  # sizes the next chunks
            self.metrics.shared_contexts.labels(version).inc(shared)
        except Exception as exc:
            self.metrics.errors.labels("forecast").inc()
            log.warning("challenger forecast failed; these bars are skipped", version=version, error=repr(exc))
            return None
        for w, r in zip(windows, results, strict=True):  # its own token caches (incremental mode)
            token_state = getattr(r, "token_state", None)
            if token_state is not None:
                tokens[w.series_id] = token_state
        return windows, results

    def _shared_contexts(self, version: str, forecaster: StreamForecaster, windows: list[SeriesWindow]) -> int:
        """How many of ``windows`` carry context ids this challenger takes (its tokenizer is the
        champion's); logged once per version whether it does."""
        context_key = getattr(forecaster, "context_key", None)
        key = context_key(self.horizon) if callable(context_key) else None
        offered = [w.context_tokens for w in windows if w.context_tokens is not None]
        shared = sum(1 for t in offered if t.key == key)
        if offered and version not in self._shares_logged:
            self._shares_logged.add(version)
            if shared:
                log.info("challenger shares the champion's tokenizer: it takes the champion's context ids",
                         version=version)  # fmt: skip
            else:
                log.info("challenger's tokenizer differs from the champion's: it encodes every window itself",
                         version=version)  # fmt: skip
        return shared

    async def _score(
        self, made: list[tuple[str, list[Entry], list[SeriesWindow], list[SeriesForecast | Exception]]]
    ) -> None:
        """Score (and publish to the shadow topic) the challengers' forecasts, between the loop's rounds."""
        count = sum(len(chunk) for _, chunk, _, _ in made)
        await self.backlog.until_free(self._score_s * count)  # not into the next burst of rounds
        started = time.monotonic()
        async with self._scoring:
            for version, chunk, windows, results in made:
                items, contexts = [], []
                for e, w, r in zip(chunk, windows, results, strict=True):
                    if isinstance(r, Exception) or e.window.series_id in self._revoked:
                        continue
                    shadow_ctx = copy.copy(e.ctx)
                    shadow_ctx.seed = w.seed
                    items.append((ShadowState(e.state, version), w, r))
                    contexts.append(shadow_ctx)
                if items:
                    await self._score_version(version, items, contexts)
            self._revoked.clear()
        self._score_s = (time.monotonic() - started) / max(1, count)

    async def _score_version(self, version: str, items: list[tuple[Any, Any, Any]], contexts: list[Any]) -> None:
        self.metrics.forecasts.labels(version).inc(len(items))
        try:
            if self.scorer is not None:
                windows_, results_ = [w for _, w, _ in items], [r for _, _, r in items]
                await self.scorer.adjust(windows_, results_, version, contexts, champion=False)
            if self.config.shadow_topic and self.bus_out is not None:
                await self._publish(version, items, contexts, self.mode)
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
