"""A new model version's calibration, before it serves: a backtest of that version on the archive's
recent bars.

When the model follower (:mod:`daemon.model.follower`) has loaded and smoke-tested a new champion, and
before it swaps it in, :class:`Seeder` runs the walk-forward backtest
(:func:`kronos_core.evaluation.run_backtest`, the publisher the daemon runs) of the new version on the
last bars of the Parquet archive (``KRONOS_ARCHIVE__ROOT``) of the symbols this daemon serves:
``KRONOS_SCORING__SEED_ORIGINS`` consecutive origins per symbol, for at most
``KRONOS_SCORING__SEED_MAX_SYMBOLS`` symbols, within ``KRONOS_SCORING__SEED_BUDGET_S`` seconds. The
publisher's states at the end (each symbol's and the pooled one) are written as the new version's
calibration states (``{prefix}:calibration:{version}:{symbol}``) before the swap, so its first
forecasts are calibrated on its own residuals.

Failing that (seeding off, no archive, too few bars, an error, the budget spent) nothing is written and
the new version copies the champion's states on first use (:class:`~daemon.scoring.calibration.
GuardedCalibrator`). Either way the swap goes ahead: the path taken is logged (``calibration seeded``)
and counted (``kronos_calibration_seeds_total{path, reason}``). A symbol the archive holds too few
bars of is not seeded: it copies the champion's state.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import numpy as np
import structlog
from prometheus_client import CollectorRegistry, Counter

from daemon.scoring.calibration import publisher_config
from kronos_core.stream_types import StreamForecaster

log = structlog.get_logger("kronos.scoring")

RunBlocking = Callable[[Callable[[], Any]], Awaitable[Any]]


class SeedSkipped(Exception):
    """The backtest path was not taken; ``reason`` is the metric's label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class SeedMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.seeds = Counter(
            "kronos_calibration_seeds_total",
            "new model versions' calibration before a swap: path backtest (seeded from the archive) or champion "
            "(copies the champion's state); reason why",
            ["path", "reason"],
            registry=registry,
        )


def needed_bars(context: int, horizon: int, vol_window: int, origins: int) -> int:
    """Bars per symbol a seeding backtest of ``origins`` consecutive origins needs."""
    return max(context - 1, vol_window) + origins + horizon + 1


def recent_bars(
    root: str, symbols: Iterable[str], want: int, storage_options: Mapping[str, Any] | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The last ``want`` bars ({symbol: Bars}) of each of ``symbols`` the archive holds (fewer where it
    holds fewer): the newest dates first, the span read doubling until every symbol has enough."""
    from kronos_contract.archive import list_files, read_bars
    from kronos_core.evaluation.data import Bars, frame_to_bars

    opts = dict(storage_options or {})
    wanted = sorted(set(symbols))
    days = sorted({p.rsplit("/date=", 1)[-1].split("/", 1)[0] for p in list_files(root, storage_options=opts)})
    if not days:
        raise SeedSkipped("no_archive", f"the archive {root} holds no bars")
    last = np.datetime64(days[-1], "D") + 1
    span = 1
    while True:
        start = last - span
        frame = read_bars(root, start=str(start), end=str(last), symbols=wanted, storage_options=opts)
        counts = {str(k): int(v) for k, v in frame.groupby("symbol").size().items()} if len(frame) else {}
        enough = all(counts.get(s, 0) >= want for s in wanted)
        if enough or str(start) <= days[0]:
            break
        if deadline is not None and time.monotonic() > deadline:
            raise SeedSkipped("over_budget", "the time budget was spent reading the archive")
        span *= 2
    if not len(frame):
        raise SeedSkipped("too_few_bars", f"the archive {root} holds no bars of the symbols served")
    bars = frame_to_bars(frame, "archive", "UTC", "ts")
    return {s: Bars(b.symbol, b.timestamps[-want:], b.values[-want:]) for s, b in bars.items()}


def seed_states(
    settings: Any, forecaster: StreamForecaster, symbols: Iterable[str], deadline: float
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """(the publisher's states after a backtest of ``forecaster`` on the archive's recent bars of
    ``symbols``, the symbols seeded). Blocking; raises :class:`SeedSkipped` when it cannot."""
    from kronos_core.evaluation import BacktestConfig, run_backtest

    s, h = settings.scoring, settings.model.horizon
    if forecaster.mode != "exact":
        raise SeedSkipped("incremental", "the seeding backtest runs the model in exact mode")
    lookback = getattr(forecaster, "lookback", None)
    context = lookback(h) if callable(lookback) else forecaster.max_context - h
    want = needed_bars(context, h, s.vol_window, s.seed_origins)
    chosen = sorted(set(symbols))[: s.seed_max_symbols]
    if not chosen:
        raise SeedSkipped("no_symbols", "the daemon serves no symbol yet")
    a = settings.archive
    held = recent_bars(a.root, chosen, want, a.storage_options, deadline)
    bars = {k: b for k, b in held.items() if len(b) >= want}
    if not bars:
        raise SeedSkipped(
            "too_few_bars",
            f"no symbol served has {want} bars in the archive {a.root} (context {context}, volatility window "
            f"{s.vol_window}, {s.seed_origins} origins, horizon {h})",
        )
    cfg = BacktestConfig(
        horizon=h, origins=s.seed_origins, stride=1, warmup=0, context=context, batch=settings.batch.max_batch_size,
        vol_window=s.vol_window, publisher=publisher_config(settings), fan_charts=0,
        levels=tuple(settings.model.quantile_levels),
    )  # fmt: skip

    def check_budget(done: int, total: int) -> None:
        if time.monotonic() > deadline:
            raise SeedSkipped("over_budget", f"the time budget was spent after {done} of {total} forecasts")

    try:
        result = run_backtest(forecaster, bars, cfg, progress=check_budget)
    finally:
        forget = getattr(forecaster, "drop", None)
        if callable(forget):
            forget(list(bars))
    assert result.publisher is not None
    return result.publisher.export(), sorted(bars)


class Seeder:
    """The follower's hook (``ModelFollower(seed=...)``): seeds a new version's calibration states."""

    def __init__(
        self,
        settings: Any,
        scorer: Callable[[], Any],
        symbols: Callable[[], Iterable[str]],
        registry: CollectorRegistry,
    ) -> None:
        self.settings = settings
        self._scorer = scorer  # the daemon's OnlineScorer (built after the follower), or None
        self._symbols = symbols
        self.metrics = SeedMetrics(registry)

    async def __call__(self, version: str, forecaster: StreamForecaster, run_blocking: RunBlocking) -> str | None:
        """Seed ``version``; returns the path taken ("backtest" or "champion"), None when not calibrating."""
        scorer = self._scorer()
        if scorer is None or scorer.calibrator is None:
            return None
        s = self.settings.scoring
        t0 = time.monotonic()
        symbols = list(self._symbols())
        try:
            if s.seed_origins == 0:
                raise SeedSkipped("off", "KRONOS_SCORING__SEED_ORIGINS is 0")
            deadline = t0 + s.seed_budget_s
            states, seeded = await run_blocking(lambda: seed_states(self.settings, forecaster, symbols, deadline))
            await scorer.store.commit(
                {}, {}, cap=scorer.cap, now=time.time(), calibration={(version, k): v for k, v in states.items()}
            )
            scorer.calibrator.drop(version)  # read again: the seeded states
        except Exception as exc:
            reason = exc.reason if isinstance(exc, SeedSkipped) else "error"
            self.metrics.seeds.labels("champion", reason).inc()
            log_at = log.warning if reason in ("error", "over_budget", "too_few_bars") else log.info
            log_at(
                "calibration seeded",
                version=version,
                path="champion",
                reason=reason,
                detail=str(exc) if isinstance(exc, SeedSkipped) else f"{type(exc).__name__}: {exc}",
                elapsed_s=round(time.monotonic() - t0, 3),
            )
            return "champion"
        self.metrics.seeds.labels("backtest", "ok").inc()
        log.info(
            "calibration seeded",
            version=version,
            path="backtest",
            symbols=len(seeded),
            of=len(symbols),
            origins=s.seed_origins,
            elapsed_s=round(time.monotonic() - t0, 3),
        )
        return "backtest"


__all__ = ["SeedMetrics", "SeedSkipped", "Seeder", "needed_bars", "recent_bars", "seed_states"]
