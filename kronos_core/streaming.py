"""Streaming forecasts: append a bar, get a forecast; exact and incremental semantics.

:class:`StreamingForecaster` implements the daemon's :class:`~kronos_core.stream_types.StreamForecaster`.

``exact``
    Every forecast is what ``KronosPredictor.predict`` gives on the same window: the last
    ``max_context - horizon`` bars (so generation never has to slide the window), normalised by
    their own mean/std, tokenised, prefilled, generated. Stateless: no token cache is kept.

``incremental``
    Per series the normalisation statistics are frozen at a *refresh* and the tokens of the
    bars since then stay valid, so a new bar costs one tokenizer-encoder step, one predictor step
    and one tokenizer-decoder step against warm KV caches, plus the horizon. A refresh (new
    statistics over the last ``max_context - horizon - refresh_every`` bars, re-encode, prefill)
    happens on a cold start, every ``refresh_every`` bars, when a new price leaves
    ``±drift_sigma`` standard deviations of the frozen statistics, or when the token window
    would no longer fit ``max_context`` with the horizon. The token cache travels as a
    :class:`~kronos_core.stream_types.TokenState` (the daemon keeps it in Redis); warm KV caches
    live in a :class:`~kronos_core.session_pool.SessionPool` here and are rebuilt from the token
    cache and the bars when missing (after a restart, an eviction, or on another replica), so
    results depend only on what is stored.

    A call is batched across series: all refreshes and rebuilds go through one encoder, predictor
    and decoder prefill; all new bars through one encoder, predictor and decoder step over the
    batch's run of pool slots (views, no copies of the caches); then one horizon for the batch.
    The pool holds at most ``max_sessions`` series and ``max_session_bytes`` bytes; larger batches
    run in chunks that fit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from kronos_core.engine import DecodeState, GenerationStats, KronosEngine, SamplingParams
from kronos_core.kv_cache import key_mask
from kronos_core.preprocess import PRICE_COLUMNS, STD_EPS, denormalize, normalize, time_features
from kronos_core.session_pool import PoolViews, SessionPool
from kronos_core.stream_types import ContextTokens, SeriesForecast, SeriesWindow, StreamMode, TokenState


@dataclass(frozen=True)
class StreamConfig:
    mode: StreamMode = "exact"
    sampling: SamplingParams = field(default_factory=SamplingParams)
    quantile_levels: tuple[float, ...] = (0.1, 0.5, 0.9)
    clip: float = 5.0
    refresh_every: int = 32
    drift_sigma: float = 4.0
    calendar_tz: str = "UTC"  # time features (minute, hour, ...) are taken in this zone
    max_sessions: int = 256  # warm incremental sessions kept in memory (slots of the session pool)
    max_session_bytes: int | None = None  # ... and at most this many bytes of warm caches (None: no bound)

    def __post_init__(self) -> None:
        if self.mode not in ("exact", "incremental"):
            raise ValueError(f"mode must be 'exact' or 'incremental', got {self.mode!r}")
        if not all(0.0 < q < 1.0 for q in self.quantile_levels):
            raise ValueError(f"quantile levels must lie in (0, 1), got {self.quantile_levels}")
        if self.refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {self.refresh_every}")
        if not self.drift_sigma > 0:
            raise ValueError(f"drift_sigma must be > 0, got {self.drift_sigma}")
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {self.max_sessions}")
        if self.max_session_bytes is not None and self.max_session_bytes < 1:
            raise ValueError(f"max_session_bytes must be >= 1 (or None), got {self.max_session_bytes}")

    def session_slots(self, slot_bytes: int) -> int:
        """Warm sessions that fit both bounds when one takes ``slot_bytes``."""
        if self.max_session_bytes is None:
            return self.max_sessions
        if self.max_session_bytes < slot_bytes:
            raise ValueError(
                f"max_session_bytes={self.max_session_bytes} is below one session's warm caches ({slot_bytes} bytes "
                "for this model and max_context); raise it, or lower max_context"
            )
        return min(self.max_sessions, self.max_session_bytes // slot_bytes)


def calendar_features(timestamps: np.ndarray, tz: str) -> np.ndarray:
    """Time features [T, 5] of UTC datetime64 timestamps, read in the calendar zone ``tz``."""
    idx = pd.DatetimeIndex(timestamps)
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    return time_features(idx.tz_convert(tz).tz_localize(None))


def calendar_features_many(timestamps: Sequence[np.ndarray], tz: str) -> list[np.ndarray]:
    """:func:`calendar_features` of several arrays at once: one pandas conversion over all of them
    (per window, the pandas calls cost about as much as the model on a CPU at batch 1000)."""
    if not timestamps:
        return []
    lengths = [len(t) for t in timestamps]
    every = np.concatenate([np.asarray(t, dtype="datetime64[ns]") for t in timestamps])
    feats = calendar_features(every, tz) if len(every) else np.zeros((0, 5), dtype=np.float32)
    return np.split(feats, np.cumsum(lengths)[:-1])


def _to_ns(ts: np.datetime64) -> int:
    return int(np.asarray(ts, dtype="datetime64[ns]").astype(np.int64))


@dataclass
class _Plan:
    """What one series needs in an incremental call (see ``StreamingForecaster._plan``)."""

    window: SeriesWindow
    state_in: TokenState | None  # the token cache the window came with, when it stays valid
    state: TokenState  # the token cache being built (final after the call)
    refresh: bool = False
    rebuild: bool = False  # no warm session matches ``state_in``: rebuild it from tokens and bars
    x: np.ndarray | None = None  # refresh: the normalised window to encode
    covered: np.ndarray | None = None  # bars behind ``state_in``'s tokens (mask over the window)
    new: np.ndarray | None = None  # bars after them (mask over the window)
    n_new: int = 0  # how many (``new.sum()``)
    row: int = -1  # the series' row in the batch (its pool slot minus the batch's first slot)


class StreamingForecaster:
    """Batched forecasts for a stream of bars, one :class:`SeriesWindow` per series and bar."""

    def __init__(self, engine: KronosEngine, config: StreamConfig | None = None, *, model_version: str) -> None:
        self.engine = engine
        self.config = config or StreamConfig()
        self.model_version = model_version
        self.mode: StreamMode = self.config.mode
        self.max_context = engine.max_context
        self.quantile_levels = tuple(self.config.quantile_levels)
        self._pool = SessionPool(engine, max_slots=1)
        self._pool.max_slots = self.config.session_slots(self._pool.slot_bytes)
        self.last_stats = GenerationStats()
        if self.mode == "exact":
            _ = engine.tokenizer_key  # digested now, not inside the first forecast call

    # ------------------------------------------------------------------ public

    def lookback(self, horizon: int) -> int:
        """Bars of context an exact forecast of ``horizon`` steps uses."""
        return max(1, self.max_context - horizon)

    def forecast(self, windows: Sequence[SeriesWindow], horizon: int) -> list[SeriesForecast]:
        if horizon < 1 or horizon >= self.max_context:
            raise ValueError(f"horizon must be in [1, max_context={self.max_context}), got {horizon}")
        for w in windows:
            if len(w.values) == 0 or len(w.values) != len(w.timestamps):
                raise ValueError(f"{w.series_id}: window needs as many timestamps as bars (and at least one bar)")
            if len(w.future_timestamps) != horizon:
                raise ValueError(f"{w.series_id}: {len(w.future_timestamps)} future timestamps for horizon {horizon}")
        if not windows:
            return []
        stats = GenerationStats()
        t0 = time.perf_counter()
        with torch.inference_mode():
            if self.mode == "exact":
                out = self._forecast_exact(windows, horizon, stats)
            else:
                out = self._forecast_incremental(windows, horizon, stats)
        model_ms = (time.perf_counter() - t0) * 1e3
        for f in out:
            f.timings_ms = {"model": model_ms, **{k: round(v, 3) for k, v in stats.timings_ms.items()}}
        self.last_stats = stats
        return out

    # ------------------------------------------------------------------ exact

    def _forecast_exact(self, windows: Sequence[SeriesWindow], horizon: int, stats: GenerationStats) -> list[SeriesForecast]:
        lb = self.lookback(horizon)
        xs, means, stds = [], [], []
        for w in windows:
            x, mean, std = normalize(np.asarray(w.values[-lb:], dtype=np.float64), self.config.clip)
            xs.append(x)
            means.append(mean)
            stds.append(std)
        feats = calendar_features_many(
            [w.timestamps[-lb:] for w in windows] + [w.future_timestamps for w in windows], self.config.calendar_tz
        )
        x_st, y_st = feats[: len(windows)], feats[len(windows) :]
        key = self.context_key(horizon)
        given = [
            (w.context_tokens.s1, w.context_tokens.s2)
            if w.context_tokens is not None and w.context_tokens.key == key and len(w.context_tokens.s1) == len(x)
            else None
            for w, x in zip(windows, xs, strict=True)
        ]
        state = self.engine.prefill(xs, x_st, y_st, horizon, stats, given_ids=given)
        l_max = max(len(x) for x in xs)
        ids = torch.stack([state.tok1[:, :l_max], state.tok2[:, :l_max]]).cpu().numpy()  # a copy: generation
        preds = self.engine.run_horizon(  # writes into tok1/tok2 after the contexts
            state, horizon, self.config.sampling, seeds=[w.seed for w in windows], stats=stats
        )
        out = []
        for i, w in enumerate(windows):
            result = self._result(w, preds[i], means[i], stds[i], None)
            n = len(xs[i])
            result.context_tokens = ContextTokens(key, ids[0, i, :n], ids[1, i, :n])
            out.append(result)
        return out

    def context_key(self, horizon: int) -> str:
        """The :attr:`ContextTokens.key` of this forecaster's exact forecasts of ``horizon`` steps."""
        return f"{self.engine.tokenizer_key}|lookback={self.lookback(horizon)}|clip={self.config.clip}"

    # ------------------------------------------------------------------ incremental

    def _forecast_incremental(
        self, windows: Sequence[SeriesWindow], horizon: int, stats: GenerationStats
    ) -> list[SeriesForecast]:
        """Chunks of distinct series that fit the pool, each run as one batch over pool views."""
        out: list[SeriesForecast] = []
        chunk: list[SeriesWindow] = []
        for w in windows:
            if len(chunk) == self._pool.max_slots or any(c.series_id == w.series_id for c in chunk):
                out += self._incremental_batch(chunk, horizon, stats)
                chunk = []
            chunk.append(w)
        return out + self._incremental_batch(chunk, horizon, stats)

    def _incremental_batch(
        self, windows: Sequence[SeriesWindow], horizon: int, stats: GenerationStats
    ) -> list[SeriesForecast]:
        pool, eng = self._pool, self.engine
        plans = [self._plan(w, horizon) for w in windows]
        moved = pool.counters.moved
        start = pool.place([w.series_id for w in windows])
        stats.sessions_moved += pool.counters.moved - moved
        rows = [pool.slot(w.series_id) - start for w in windows]
        for p, row in zip(plans, rows, strict=True):
            p.row = row
            # Popped, so that a call that fails half-way leaves these sessions to be rebuilt.
            warm = pool.fingerprints.pop(p.window.series_id, None)
            p.rebuild = not p.refresh and (p.state_in is None or warm != p.state_in.fingerprint())
        stats.series_refreshed += sum(p.refresh for p in plans)
        stats.series_rebuilt += sum(p.rebuild for p in plans)
        stats.series_warm += sum(not (p.refresh or p.rebuild) for p in plans)
        views = pool.views(start, len(windows))
        self._prefill([p for p in plans if p.refresh or p.rebuild], views, stats)
        self._append_new([p for p in plans if p.n_new], views, stats)

        by_row = sorted(range(len(plans)), key=lambda i: rows[i])  # batch rows run in slot order
        states = [plans[i].state for i in by_row]
        lengths = [len(s) for s in states]
        buf = max(lengths) + horizon
        tok1 = np.zeros((len(states), buf), dtype=np.int64)
        tok2 = np.zeros_like(tok1)
        stamps = np.zeros((len(states), buf, 5), dtype=np.float32)
        futures = calendar_features_many([windows[i].future_timestamps for i in by_row], self.config.calendar_tz)
        for r in range(len(by_row)):
            tok1[r, : lengths[r]], tok2[r, : lengths[r]] = states[r].s1, states[r].s2
            stamps[r, lengths[r] : lengths[r] + horizon] = futures[r]
        state = DecodeState(
            caches=views.pred, last_logits=views.logits, h_last=views.h_last, dep_k=views.dep_k, dep_v=views.dep_v,
            tok1=torch.from_numpy(tok1).to(eng.device), tok2=torch.from_numpy(tok2).to(eng.device),
            stamps=torch.from_numpy(stamps).to(eng.device), lengths=lengths,
        )
        preds = eng.run_horizon(
            state, horizon, self.config.sampling, seeds=[windows[i].seed for i in by_row], stats=stats,
            decoder_prefix=(views.dec, torch.tensor(lengths)) if views.dec else None,
        )
        for p in plans:
            pool.fingerprints[p.window.series_id] = p.state.fingerprint()
        return [
            self._result(w, preds[rows[i]], p.state.mean, p.state.std, p.state)
            for i, (w, p) in enumerate(zip(windows, plans, strict=True))
        ]

    def _plan(self, w: SeriesWindow, horizon: int) -> _Plan:
        """What the series needs: a refresh (new statistics, re-encoded window), or its token cache
        (rebuilt into the pool when no warm session matches it) plus the window's new bars."""
        cfg = self.config
        values = np.asarray(w.values, dtype=np.float64)
        ts_ns = np.asarray(w.timestamps, dtype="datetime64[ns]").astype(np.int64)
        state = w.token_state
        if state is not None:
            new = ts_ns > state.last_ts
            covered = (ts_ns >= state.anchor_ts) & ~new
            z_new = (values[new] - state.mean) / (state.std + STD_EPS)
            n_new = int(new.sum())
            if not (
                int(covered.sum()) != len(state)  # the window no longer holds the bars behind the tokens
                or state.bars_since_refresh + n_new > cfg.refresh_every
                or len(state) + n_new + horizon > self.max_context
                or bool((np.abs(z_new[:, : len(PRICE_COLUMNS)]) > cfg.drift_sigma).any())
            ):
                return _Plan(w, state, state, covered=covered, new=new, n_new=n_new)
        keep = max(1, self.max_context - horizon - cfg.refresh_every)
        x, mean, std = normalize(values[-keep:], cfg.clip)
        ts = np.asarray(w.timestamps)[-keep:]
        refreshed = TokenState(
            s1=np.zeros(0, dtype=np.int64), s2=np.zeros(0, dtype=np.int64),
            mean=np.asarray(mean, dtype=np.float64), std=np.asarray(std, dtype=np.float64),
            anchor_ts=_to_ns(ts[0]), last_ts=_to_ns(ts[-1]), refreshed_ts=_to_ns(ts[-1]), bars_since_refresh=0,
        )
        return _Plan(w, None, refreshed, refresh=True, x=x, covered=None, new=None)

    def _prefill(self, plans: list[_Plan], views: PoolViews, stats: GenerationStats) -> None:
        """Refreshed and rebuilt series in one batch: encode their windows (new tokens for a
        refresh; for a rebuild the stored tokens stay authoritative and the bars only refill the
        encoder cache), run the tokens through predictor and decoder, and write the caches into
        the series' pool slots."""
        if not plans:
            return
        eng, cfg = self.engine, self.config
        xs, stamp_rows = [], []
        for p in plans:
            ts = np.asarray(p.window.timestamps)
            if p.refresh:
                assert p.x is not None
                xs.append(p.x)
                stamp_rows.append(ts[-len(p.x) :])
            else:
                assert p.covered is not None
                values = np.asarray(p.window.values, dtype=np.float64)[p.covered]
                xs.append(np.clip((values - p.state.mean) / (p.state.std + STD_EPS), -cfg.clip, cfg.clip))
                stamp_rows.append(ts[p.covered])
        lengths = [len(x) for x in xs]
        n, l_max = len(plans), max(lengths)
        x_pad = np.zeros((n, l_max, 6), dtype=np.float32)
        stamps = np.zeros((n, l_max, 5), dtype=np.float32)
        for i, (x, feats) in enumerate(zip(xs, calendar_features_many(stamp_rows, cfg.calendar_tz), strict=True)):
            x_pad[i, : lengths[i]] = x
            stamps[i, : lengths[i]] = feats
        t0 = time.perf_counter()
        enc = eng.encoder_caches(n, l_max)  # right padding is harmless: every attention is causal
        s1, s2 = eng.encode(torch.from_numpy(x_pad).to(eng.device), positions=self._arange(l_max), caches=enc or None)
        stats.encode_tokens += sum(lengths)
        stats.add_time("encode", t0)
        s1_np, s2_np = s1.cpu().numpy(), s2.cpu().numpy()
        for i, p in enumerate(plans):
            if p.refresh:
                p.state.s1, p.state.s2 = s1_np[i, : lengths[i]].copy(), s2_np[i, : lengths[i]].copy()
            else:
                s1_np[i, : lengths[i]], s2_np[i, : lengths[i]] = p.state.s1, p.state.s2
        t1 = time.perf_counter()
        tok1, tok2 = torch.from_numpy(s1_np).to(eng.device), torch.from_numpy(s2_np).to(eng.device)
        pred = eng.predictor_caches(n, l_max)
        ctx = eng.transformer(eng.embed(tok1, tok2, torch.from_numpy(stamps).to(eng.device)), pred)  # [n, L, d]
        last = ctx[torch.arange(n, device=eng.device), torch.tensor(lengths, device=eng.device) - 1]  # [n, d]
        dep_k, dep_v = eng.dep_kv(ctx)  # [n, Hd, L, Dd]
        stats.prefill_tokens += sum(lengths)
        stats.add_time("prefill", t1)
        t2 = time.perf_counter()
        dec = eng.decoder_caches(n, l_max)
        eng.fill_decoder_caches(tok1, tok2, self._arange(l_max), dec)
        stats.decode_tokens += sum(lengths)
        stats.add_time("decode", t2)
        at = torch.tensor([p.row for p in plans], device=eng.device)
        for dst, src in zip([*views.enc, *views.pred, *views.dec], [*enc, *pred, *dec], strict=True):
            dst.k[at, :, :l_max], dst.v[at, :, :l_max] = src.k, src.v
        views.dep_k[at, :, :l_max], views.dep_v[at, :, :l_max] = dep_k, dep_v
        views.logits[at], views.h_last[at] = eng.head_s1(last), last

    def _append_new(self, plans: list[_Plan], views: PoolViews, stats: GenerationStats) -> None:
        """The new bars of every appending series in one encoder, one predictor and one decoder call
        over the batch's pool views. Rows run ``k_max`` (the most new bars of any series) tokens;
        rows with fewer, and rows not appending, feed padding at the last cache slot, which no
        series ever holds (a series keeps at most ``max_context - horizon`` tokens)."""
        if not plans:
            return
        eng, cfg = self.engine, self.config
        n_rows, k_max, spare = views.dep_k.shape[0], max(p.n_new for p in plans), self.max_context - 1
        x = np.zeros((n_rows, k_max, 6), dtype=np.float32)
        stamps = np.zeros((n_rows, k_max, 5), dtype=np.float32)
        pos = np.full((n_rows, k_max), spare, dtype=np.int64)
        new_feats = calendar_features_many([np.asarray(p.window.timestamps)[p.new] for p in plans], cfg.calendar_tz)
        for p, feats in zip(plans, new_feats, strict=True):
            assert p.new is not None
            k, n = p.n_new, len(p.state)
            values = np.asarray(p.window.values, dtype=np.float64)[p.new]
            x[p.row, :k] = np.clip((values - p.state.mean) / (p.state.std + STD_EPS), -cfg.clip, cfg.clip)
            stamps[p.row, :k] = feats
            pos[p.row, :k] = np.arange(n, n + k)
        positions = torch.from_numpy(pos).to(eng.device)  # [B, k_max]
        t0 = time.perf_counter()
        s1, s2 = eng.encode(
            torch.from_numpy(x).to(eng.device), positions=positions, caches=views.enc or None,
            attn_mask=key_mask(positions, self.max_context) if views.enc else None,
        )
        n_new = sum(p.n_new for p in plans)
        stats.encode_tokens += n_new
        stats.add_time("encode", t0)
        t1 = time.perf_counter()
        _, h, k_new, v_new = eng.step(s1, s2, torch.from_numpy(stamps).to(eng.device), positions, views.pred)
        rows = torch.tensor([p.row for p in plans], device=eng.device)
        ks = torch.tensor([p.n_new for p in plans], device=eng.device)
        last = h[rows, ks - 1]  # [A, d] each appending row's last new token
        views.logits[rows], views.h_last[rows] = eng.head_s1(last), last
        for p in plans:
            k, n = p.n_new, len(p.state)
            views.dep_k[p.row, :, n : n + k], views.dep_v[p.row, :, n : n + k] = k_new[p.row, :, :k], v_new[p.row, :, :k]
        stats.step_tokens += n_new
        stats.add_time("append", t1)
        if views.dec:
            eng.fill_decoder_caches(s1, s2, positions, views.dec, key_mask(positions, self.max_context))
        stats.decode_tokens += n_new
        s1_np, s2_np = s1.cpu().numpy(), s2.cpu().numpy()
        for p in plans:
            assert p.new is not None
            k, old = p.n_new, p.state
            p.state = TokenState(
                s1=np.concatenate([old.s1, s1_np[p.row, :k]]),
                s2=np.concatenate([old.s2, s2_np[p.row, :k]]),
                mean=old.mean,
                std=old.std,
                anchor_ts=old.anchor_ts,
                last_ts=_to_ns(np.asarray(p.window.timestamps)[p.new][-1]),
                refreshed_ts=old.refreshed_ts,
                bars_since_refresh=old.bars_since_refresh + k,
            )

    # ------------------------------------------------------------------ helpers

    def drop(self, series_ids: Sequence[str]) -> None:
        """Forget warm sessions (e.g. of partitions this replica no longer owns)."""
        self._pool.drop(series_ids)

    @property
    def warm_sessions(self) -> int:
        """Series whose warm caches are held (incremental mode)."""
        return len(self._pool)

    def _arange(self, n: int, start: int = 0) -> Tensor:
        return torch.arange(start, start + n, device=self.engine.device)

    def _result(
        self, w: SeriesWindow, preds: np.ndarray, mean: np.ndarray, std: np.ndarray, state: TokenState | None
    ) -> SeriesForecast:
        """preds [S, H, 6] normalised -> mean path (averaged before scaling, as upstream), samples, bands."""
        samples = denormalize(preds.astype(np.float64), mean, std)  # [S, H, 6]
        mean_path = denormalize(preds.astype(np.float64).mean(axis=0), mean, std)  # [H, 6]
        quantiles = np.quantile(samples, self.quantile_levels, axis=0)  # [Q, H, 6]
        return SeriesForecast(
            series_id=w.series_id,
            mean=mean_path,
            samples=samples,
            quantiles=quantiles,
            quantile_levels=self.quantile_levels,
            token_state=state,
        )
