"""The walk-forward backtest: a model's forecasts from rolling origins on a user's bars, published
through the same :class:`~kronos_core.evaluation.publisher.Publisher` as the daemon, scored with
the baselines.

1. **Origins.** Per symbol, the bar indices ``t`` a forecast is made after (bar ``t`` is the newest
   bar the forecast sees; bars ``t+1 .. t+H`` are the outcome). They end ``horizon`` bars before the
   last bar and are spaced ``stride`` bars apart (default: spread so that ``origins`` are scored).
   The first ``warmup`` origins only feed the publisher (as the daemon's state would be filled by
   the bars before a forecast is published); the rest are scored.
2. **Forecasts.** Every origin's window (``context`` bars ending at ``t``, the real timestamps of the
   next ``horizon`` bars) goes to the forecaster's ``forecast`` in batches across origins and
   symbols; forecasts do not depend on the publisher's state, so they are all made first.
3. **Publishing in time order.** Origins of all symbols are replayed in the order of their bars'
   times; before each one, every earlier forecast whose horizon has been realised by then is handed
   back to the publisher (``realise``), exactly as the daemon's online scorer does. Nothing from the
   future of an origin reaches its forecast.
4. **Scores** of the scored origins: :mod:`~kronos_core.evaluation.scores`.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kronos_core.evaluation.baselines import ewma_vol_quantiles, persistence_quantiles
from kronos_core.evaluation.data import Bars
from kronos_core.evaluation.distribution import quantiles_at
from kronos_core.evaluation.publisher import Published, Publisher, PublisherConfig
from kronos_core.evaluation.scores import LEVELS, Scores
from kronos_core.exceptions import InputError
from kronos_core.scoring import ScoreAccumulator
from kronos_core.stream_types import SeriesWindow, StreamForecaster, derive_seed

CLOSE = 3


@dataclass(frozen=True)
class BacktestConfig:
    horizon: int = 12
    origins: int = 300  # scored origins per symbol (fewer where the bars do not hold them)
    stride: int | None = None  # bars between origins (default: spread ``origins`` over the tail)
    warmup: int = 100  # origins before the scored ones that only feed the publisher
    context: int | None = None  # bars of context per forecast (default: the forecaster's lookback)
    start: np.datetime64 | None = None  # no origin before this time (UTC), e.g. a model's holdout
    batch: int = 64  # windows per forecaster call
    vol_window: int = 100
    publisher: PublisherConfig | None = None  # default: PublisherConfig(horizon, vol_window=vol_window)
    fan_charts: int = 3  # origins of the first symbol whose distributions are kept for the chart
    min_history: int | None = None  # bars an origin needs (default: a whole context and the volatility window)
    levels: tuple[float, ...] = (0.1, 0.5, 0.9)  # the daemon's published levels (for ``online_scorer``)

    def __post_init__(self) -> None:
        for name in ("horizon", "origins", "batch", "vol_window"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.stride is not None and self.stride < 1:
            raise InputError(f"stride must be >= 1, got {self.stride}")
        if self.warmup < 0:
            raise InputError(f"warmup must be >= 0, got {self.warmup}")
        if self.context is not None and self.context < 2:
            raise InputError(f"context must be >= 2 bars, got {self.context}")
        if self.min_history is not None and self.min_history < 1:
            raise InputError(f"min_history must be >= 1 bar, got {self.min_history}")


@dataclass
class BacktestResult:
    summary: dict[str, Any]  # what backtest.json holds
    fans: list[dict[str, Any]] = field(default_factory=list)  # kept origins for the fan chart
    publisher: Publisher | None = None  # the publisher's state after the run (a new version's start)


def _context(forecaster: StreamForecaster, cfg: BacktestConfig) -> int:
    lookback = getattr(forecaster, "lookback", None)
    default = lookback(cfg.horizon) if callable(lookback) else forecaster.max_context - cfg.horizon
    ctx = cfg.context or default
    if ctx + cfg.horizon > forecaster.max_context:
        raise InputError(
            f"context {ctx} + horizon {cfg.horizon} exceeds the model's max_context {forecaster.max_context}"
        )
    return ctx


def plan_origins(bars: Bars, cfg: BacktestConfig, context: int) -> tuple[list[int], int]:
    """(origin indices in time order, how many of the first are warm-up) for one symbol."""
    first = max(context - 1, cfg.vol_window) if cfg.min_history is None else cfg.min_history - 1
    if cfg.start is not None:
        first = max(first, int(np.searchsorted(bars.timestamps, np.asarray(cfg.start).astype("datetime64[ns]"))))
    last = len(bars) - cfg.horizon - 1
    if last < first:
        raise InputError(
            f"{bars.symbol}: {len(bars)} bars hold no origin: each needs {first} bars before it "
            f"(context {context}, volatility window {cfg.vol_window}) and {cfg.horizon} after it"
        )
    span = last - first + 1
    stride = cfg.stride or max(1, span // (cfg.origins + cfg.warmup))
    origins = list(range(last, first - 1, -stride))[::-1][-(cfg.origins + cfg.warmup) :]
    warm = max(0, len(origins) - cfg.origins) if cfg.warmup else 0
    return origins, min(warm, cfg.warmup)


def _windows(bars: Bars, origins: list[int], context: int, horizon: int, version: str) -> list[SeriesWindow]:
    out = []
    for t in origins:
        lo = max(0, t - context + 1)
        out.append(
            SeriesWindow(
                series_id=bars.symbol,
                values=bars.values[lo : t + 1],
                timestamps=bars.timestamps[lo : t + 1],
                future_timestamps=bars.timestamps[t + 1 : t + 1 + horizon],
                seed=derive_seed(bars.symbol, int(bars.timestamps[t].astype("int64")), version),
            )
        )
    return out


def forecast_all(
    forecaster: StreamForecaster,
    windows: list[SeriesWindow],
    horizon: int,
    batch: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[np.ndarray]:
    """Close sample paths [S, H] per window, batched; ``progress(done, total)`` after each batch."""
    out: list[np.ndarray] = []
    for i in range(0, len(windows), batch):
        chunk = windows[i : i + batch]
        out += [np.asarray(f.samples[:, :, CLOSE], dtype=np.float64) for f in forecaster.forecast(chunk, horizon)]
        if progress is not None:
            progress(len(out), len(windows))
    return out


def run_backtest(
    forecaster: StreamForecaster,
    bars: Mapping[str, Bars],
    config: BacktestConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    publisher: Publisher | None = None,
) -> BacktestResult:
    """Walk-forward backtest of ``forecaster`` on ``bars`` ({symbol: Bars}); see the module docstring.
    ``publisher``: a state to start from (default: a fresh one)."""
    cfg = config or BacktestConfig()
    if not bars:
        raise InputError("no bars to backtest")
    if forecaster.mode != "exact":
        raise InputError("the backtest runs the model in exact mode; build the forecaster with mode='exact'")
    context = _context(forecaster, cfg)
    pub_cfg = cfg.publisher or PublisherConfig(cfg.horizon, vol_window=cfg.vol_window)
    if pub_cfg.horizon != cfg.horizon:
        raise InputError(f"the publisher's horizon {pub_cfg.horizon} differs from the backtest's {cfg.horizon}")
    pub = publisher or Publisher(pub_cfg)

    plans = {s: plan_origins(b, cfg, context) for s, b in bars.items()}
    windows: list[SeriesWindow] = []
    for s, (origins, _) in plans.items():
        windows += _windows(bars[s], origins, context, cfg.horizon, forecaster.model_version)
    t0 = time.perf_counter()
    paths = forecast_all(forecaster, windows, cfg.horizon, cfg.batch, progress)
    model_s = time.perf_counter() - t0

    # Replay in time order: (time of the origin's bar, symbol, index, paths, scored?)
    events = []
    i = 0
    for s, (origins, warm) in plans.items():
        for n, t in enumerate(origins):
            events.append((bars[s].timestamps[t], s, t, i, n >= warm))
            i += 1
    events.sort(key=lambda e: (e[0], e[1]))
    scores = Scores(cfg.horizon, list(bars))
    online = {name: ScoreAccumulator(cfg.horizon, cfg.levels) for name in ("published", "model")}
    pending: list[tuple[np.datetime64, int, Any, np.ndarray]] = []
    fans: list[dict[str, Any]] = []
    first_symbol = next(iter(plans))
    fan_every = max(1, (len(plans[first_symbol][0]) - plans[first_symbol][1]) // max(1, cfg.fan_charts))
    t1 = time.perf_counter()
    for seq, (when, s, t, i, scored) in enumerate(events):
        while pending and pending[0][0] < when:  # as in the daemon: a round publishes, then scores
            _, _, ticket, realised = heapq.heappop(pending)
            pub.realise(ticket, realised)
        b = bars[s]
        closes = windows[i].values[:, CLOSE]  # what the daemon has too: the forecast's window
        published = pub.publish(s, closes, paths[i])
        realised = b.closes[t + 1 : t + 1 + cfg.horizon]
        heapq.heappush(pending, (b.timestamps[t + cfg.horizon], seq, published.ticket, realised))
        if scored:
            history = b.closes[: t + 1]
            extra = {
                "ewma_vol": ewma_vol_quantiles(history, cfg.horizon),
                "persistence": persistence_quantiles(history, cfg.horizon),
            }
            scores.add(s, published, extra, realised)
            grid = published.quantiles  # scored as the daemon scores it: the grid as an ensemble
            online["published"].add(realised, published.last_close, paths=grid, mean=grid.mean(axis=0),
                                    quantiles=quantiles_at(grid, cfg.levels))  # fmt: skip
            online["model"].add(realised, published.last_close, paths=paths[i], mean=paths[i].mean(axis=0),
                                quantiles=np.quantile(paths[i], cfg.levels, axis=0))  # fmt: skip
            if s == first_symbol and len(fans) < cfg.fan_charts and scores.count(s) % fan_every == 1 % fan_every:
                fans.append({
                    "symbol": s, "history_ts": b.timestamps[max(0, t - 3 * cfg.horizon) : t + 1],
                    "history": history[-(3 * cfg.horizon + 1) :], "future_ts": b.timestamps[t + 1 : t + 1 + cfg.horizon],
                    "realised": realised, "published": published.quantiles, "model": published.model,
                })  # fmt: skip
    while pending:  # the last forecasts' outcomes are known too: the state ends up as the daemon's would
        _, _, ticket, realised = heapq.heappop(pending)
        pub.realise(ticket, realised)
    publish_s = time.perf_counter() - t1

    summary = scores.summary(LEVELS)
    # the daemon's online scorer (kronos_core.scoring, price units) on the same forecasts
    summary["online_scorer"] = {name: acc.report().to_dict() for name, acc in online.items()}
    n_forecasts = len(windows)
    summary["run"] = {
        "model_version": forecaster.model_version,
        "symbols": {s: {"bars": len(bars[s]), "origins": len(o) - w, "warmup": w} for s, (o, w) in plans.items()},
        "horizon": cfg.horizon, "context": context, "warmup": cfg.warmup, "stride": cfg.stride,
        "samples": int(paths[0].shape[0]) if paths else 0, "vol_window": cfg.vol_window,
        "publisher": {k: getattr(pub_cfg, k) for k in pub_cfg.__dataclass_fields__},
        "forecasts": n_forecasts, "model_s": round(model_s, 3), "publish_s": round(publish_s, 3),
        "forecasts_per_s": round(n_forecasts / max(model_s + publish_s, 1e-9), 2),
        "model_forecasts_per_s": round(n_forecasts / max(model_s, 1e-9), 2),
    }  # fmt: skip
    return BacktestResult(summary=summary, fans=fans, publisher=pub)


def predict_distribution(
    forecaster: StreamForecaster,
    bars: Bars,
    horizon: int = 12,
    publisher: Publisher | None = None,
    future_timestamps: np.ndarray | None = None,
) -> Published:
    """The published distribution of the next ``horizon`` closes after ``bars``: calibrated quantiles,
    P(up) per step, expected return and return quantiles (:meth:`Published.returns`), the guard's weights.

    ``publisher``: a trained state, e.g. ``run_backtest(...).publisher`` on the same symbol's past, so
    that the calibration and the guard have learnt from realised forecasts (a fresh one starts from the
    prior: the model's median with the walk's spread, and equal weights). ``future_timestamps``: the
    horizon bars' times (default: the last bar interval repeated)."""
    pub = publisher or Publisher(PublisherConfig(horizon))
    if pub.config.horizon != horizon:
        raise InputError(f"the publisher's horizon {pub.config.horizon} differs from {horizon}")
    context = forecaster.max_context - horizon
    if len(bars) < 2:
        raise InputError(f"{bars.symbol}: at least 2 bars are needed, got {len(bars)}")
    ts = bars.timestamps[-context:]
    if future_timestamps is None:
        step = np.diff(bars.timestamps[-2:])[0]
        future_timestamps = bars.timestamps[-1] + step * np.arange(1, horizon + 1)
    last_ns = int(np.asarray(ts[-1:]).astype("datetime64[ns]").astype("int64")[0])
    window = SeriesWindow(
        series_id=bars.symbol, values=bars.values[-context:], timestamps=ts,
        future_timestamps=np.asarray(future_timestamps, dtype="datetime64[ns]"),
        seed=derive_seed(bars.symbol, last_ns, forecaster.model_version),
    )  # fmt: skip
    paths = forecast_all(forecaster, [window], horizon, 1)[0]
    return pub.publish(bars.symbol, window.values[:, CLOSE], paths)
