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
    live in an LRU of sessions here and are rebuilt from the token cache and the bars when
    missing (after a restart or on another replica), so results depend only on what is stored.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from kronos_core.engine import DecodeState, GenerationStats, KronosEngine, SamplingParams
from kronos_core.kv_cache import KVCache, key_mask
from kronos_core.preprocess import PRICE_COLUMNS, STD_EPS, denormalize, normalize, time_features
from kronos_core.stream_types import SeriesForecast, SeriesWindow, StreamMode, TokenState


@dataclass(frozen=True)
class StreamConfig:
    mode: StreamMode = "exact"
    sampling: SamplingParams = field(default_factory=SamplingParams)
    quantile_levels: tuple[float, ...] = (0.1, 0.5, 0.9)
    clip: float = 5.0
    refresh_every: int = 32
    drift_sigma: float = 4.0
    calendar_tz: str = "UTC"  # time features (minute, hour, ...) are taken in this zone
    max_sessions: int = 256  # warm incremental sessions kept in memory (LRU)

    def __post_init__(self) -> None:
        if self.mode not in ("exact", "incremental"):
            raise ValueError(f"mode must be 'exact' or 'incremental', got {self.mode!r}")
        if not all(0.0 < q < 1.0 for q in self.quantile_levels):
            raise ValueError(f"quantile levels must lie in (0, 1), got {self.quantile_levels}")
        if self.refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {self.refresh_every}")
        if not self.drift_sigma > 0:
            raise ValueError(f"drift_sigma must be > 0, got {self.drift_sigma}")


def calendar_features(timestamps: np.ndarray, tz: str) -> np.ndarray:
    """Time features [T, 5] of UTC datetime64 timestamps, read in the calendar zone ``tz``."""
    idx = pd.DatetimeIndex(timestamps)
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    return time_features(idx.tz_convert(tz).tz_localize(None))


def _to_ns(ts: np.datetime64) -> int:
    return int(np.asarray(ts, dtype="datetime64[ns]").astype(np.int64))


@dataclass
class _Session:
    """Warm caches of one series in incremental mode (rebuildable from its TokenState and bars)."""

    state: TokenState
    fingerprint: str
    enc: list[KVCache]
    pred: list[KVCache]
    dec: list[KVCache]
    dep_k: Tensor  # [1, Hd, T, Dd]
    dep_v: Tensor
    last_logits: Tensor  # [1, V1]
    h_last: Tensor  # [1, d]


class StreamingForecaster:
    """Batched forecasts for a stream of bars, one :class:`SeriesWindow` per series and bar."""

    def __init__(self, engine: KronosEngine, config: StreamConfig | None = None, *, model_version: str) -> None:
        self.engine = engine
        self.config = config or StreamConfig()
        self.model_version = model_version
        self.mode: StreamMode = self.config.mode
        self.max_context = engine.max_context
        self.quantile_levels = tuple(self.config.quantile_levels)
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self.last_stats = GenerationStats()

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
        xs, x_st, y_st, means, stds = [], [], [], [], []
        for w in windows:
            x, mean, std = normalize(np.asarray(w.values[-lb:], dtype=np.float64), self.config.clip)
            xs.append(x)
            means.append(mean)
            stds.append(std)
            x_st.append(calendar_features(w.timestamps[-lb:], self.config.calendar_tz))
            y_st.append(calendar_features(w.future_timestamps, self.config.calendar_tz))
        state = self.engine.prefill(xs, x_st, y_st, horizon, stats)
        preds = self.engine.run_horizon(
            state, horizon, self.config.sampling, seeds=[w.seed for w in windows], stats=stats
        )
        return [self._result(w, preds[i], means[i], stds[i], None) for i, w in enumerate(windows)]

    # ------------------------------------------------------------------ incremental

    def _forecast_incremental(
        self, windows: Sequence[SeriesWindow], horizon: int, stats: GenerationStats
    ) -> list[SeriesForecast]:
        sessions = [self._advance(w, horizon, stats) for w in windows]
        eng, n = self.engine, len(sessions)
        lengths = [len(s.state) for s in sessions]
        buf = max(lengths) + horizon
        tok1 = torch.zeros(n, buf, dtype=torch.long, device=eng.device)
        tok2 = torch.zeros_like(tok1)
        stamps = torch.zeros(n, buf, 5, device=eng.device)
        for i, (s, w) in enumerate(zip(sessions, windows, strict=True)):
            tok1[i, : lengths[i]] = torch.as_tensor(s.state.s1, device=eng.device)
            tok2[i, : lengths[i]] = torch.as_tensor(s.state.s2, device=eng.device)
            future = calendar_features(w.future_timestamps, self.config.calendar_tz)
            stamps[i, lengths[i] : lengths[i] + horizon] = torch.as_tensor(future, device=eng.device)
        state = DecodeState(
            caches=[_stack([s.pred[layer] for s in sessions]) for layer in range(len(sessions[0].pred))],
            last_logits=torch.cat([s.last_logits for s in sessions]),
            h_last=torch.cat([s.h_last for s in sessions]),
            dep_k=torch.cat([s.dep_k for s in sessions]),
            dep_v=torch.cat([s.dep_v for s in sessions]),
            tok1=tok1,
            tok2=tok2,
            stamps=stamps,
            lengths=lengths,
        )
        dec = [_stack([s.dec[layer] for s in sessions]) for layer in range(len(sessions[0].dec))]
        preds = eng.run_horizon(
            state,
            horizon,
            self.config.sampling,
            seeds=[w.seed for w in windows],
            stats=stats,
            decoder_prefix=(dec, torch.tensor(lengths)) if dec else None,
        )
        return [
            self._result(w, preds[i], s.state.mean, s.state.std, s.state)
            for i, (w, s) in enumerate(zip(windows, sessions, strict=True))
        ]

    def _advance(self, w: SeriesWindow, horizon: int, stats: GenerationStats) -> _Session:
        """The series' session after taking in the window's new bars (refreshing when due)."""
        cfg = self.config
        ts_ns = np.asarray(w.timestamps, dtype="datetime64[ns]").astype(np.int64)
        state = w.token_state
        if state is None:
            return self._refresh(w, horizon, stats)
        new = ts_ns > state.last_ts
        n_new = int(new.sum())
        covered = (ts_ns >= state.anchor_ts) & ~new
        z_new = (np.asarray(w.values, dtype=np.float64)[new] - state.mean) / (state.std + STD_EPS)
        if (
            int(covered.sum()) != len(state)  # the window no longer holds the bars behind the tokens
            or state.bars_since_refresh + n_new > cfg.refresh_every
            or len(state) + n_new + horizon > self.max_context
            or bool((np.abs(z_new[:, : len(PRICE_COLUMNS)]) > cfg.drift_sigma).any())
        ):
            return self._refresh(w, horizon, stats)

        session = self._sessions.get(w.series_id)
        fingerprint = state.fingerprint()
        if session is None or session.fingerprint != fingerprint:
            session = self._rebuild(w, state, covered, stats)
        if n_new:
            session = self._append(session, w, new, stats)
        self._remember(w.series_id, session)
        return session

    def _refresh(self, w: SeriesWindow, horizon: int, stats: GenerationStats) -> _Session:
        cfg = self.config
        keep = max(1, self.max_context - horizon - cfg.refresh_every)
        values, ts = np.asarray(w.values, dtype=np.float64)[-keep:], np.asarray(w.timestamps)[-keep:]
        x, mean, std = normalize(values, cfg.clip)
        t0 = time.perf_counter()
        enc = self.engine.encoder_caches(1, self.max_context)
        s1, s2 = self.engine.encode(
            torch.as_tensor(x, device=self.engine.device)[None], positions=self._arange(len(x)), caches=enc or None
        )
        stats.encode_tokens += len(x)
        stats.add_time("encode", t0)
        state = TokenState(
            s1=s1[0].cpu().numpy(),
            s2=s2[0].cpu().numpy(),
            mean=np.asarray(mean, dtype=np.float64),
            std=np.asarray(std, dtype=np.float64),
            anchor_ts=_to_ns(ts[0]),
            last_ts=_to_ns(ts[-1]),
            refreshed_ts=_to_ns(ts[-1]),
            bars_since_refresh=0,
        )
        session = self._prefill_tokens(state, ts, enc, stats)
        self._remember(w.series_id, session)
        return session

    def _rebuild(self, w: SeriesWindow, state: TokenState, covered: np.ndarray, stats: GenerationStats) -> _Session:
        """Warm caches from a stored token cache (tokens are authoritative; bars refill the encoder cache)."""
        values = np.asarray(w.values, dtype=np.float64)[covered]
        x = np.clip((values - state.mean) / (state.std + STD_EPS), -self.config.clip, self.config.clip)
        t0 = time.perf_counter()
        enc = self.engine.encoder_caches(1, self.max_context)
        if enc:
            self.engine.encode(
                torch.as_tensor(x, dtype=torch.float32, device=self.engine.device)[None],
                positions=self._arange(len(x)),
                caches=enc,
            )
        stats.encode_tokens += len(x)
        stats.add_time("encode", t0)
        return self._prefill_tokens(state, np.asarray(w.timestamps)[covered], enc, stats)

    def _prefill_tokens(self, state: TokenState, ts: np.ndarray, enc: list[KVCache], stats: GenerationStats) -> _Session:
        eng, n = self.engine, len(state)
        t0 = time.perf_counter()
        s1 = torch.as_tensor(state.s1, device=eng.device)[None]
        s2 = torch.as_tensor(state.s2, device=eng.device)[None]
        stamp = torch.as_tensor(calendar_features(ts, self.config.calendar_tz), device=eng.device)[None]
        pred = eng.predictor_caches(1, self.max_context)
        ctx = eng.transformer(eng.embed(s1, s2, stamp), pred)  # [1, n, d]
        k, v = eng.dep_kv(ctx)
        dep_k = k.new_zeros(1, k.shape[1], self.max_context, k.shape[3])
        dep_v = torch.zeros_like(dep_k)
        dep_k[:, :, :n], dep_v[:, :, :n] = k, v
        stats.prefill_tokens += n
        stats.add_time("prefill", t0)
        t1 = time.perf_counter()
        dec = eng.decoder_caches(1, self.max_context)
        eng.fill_decoder_caches(s1, s2, self._arange(n), dec)
        stats.decode_tokens += n
        stats.add_time("decode", t1)
        return _Session(
            state=state,
            fingerprint=state.fingerprint(),
            enc=enc,
            pred=pred,
            dec=dec,
            dep_k=dep_k,
            dep_v=dep_v,
            last_logits=eng.head_s1(ctx[:, -1]),
            h_last=ctx[:, -1],
        )

    def _append(self, session: _Session, w: SeriesWindow, new: np.ndarray, stats: GenerationStats) -> _Session:
        """One encoder, predictor and decoder step per new bar against the warm caches."""
        eng, state = self.engine, session.state
        n, k = len(state), int(new.sum())
        values = np.asarray(w.values, dtype=np.float64)[new]
        x = np.clip((values - state.mean) / (state.std + STD_EPS), -self.config.clip, self.config.clip)
        pos = self._arange(k, start=n)[None]  # [1, k]
        t0 = time.perf_counter()
        enc_mask = key_mask(pos, session.enc[0].max_len) if session.enc else None
        s1, s2 = eng.encode(
            torch.as_tensor(x, dtype=torch.float32, device=eng.device)[None],
            positions=pos,
            caches=session.enc or None,
            attn_mask=enc_mask,
        )
        stats.encode_tokens += k
        stats.add_time("encode", t0)
        t1 = time.perf_counter()
        ts_new = np.asarray(w.timestamps)[new]
        stamp = torch.as_tensor(calendar_features(ts_new, self.config.calendar_tz), device=eng.device)[None]
        logits, h, kk, vv = eng.step(s1, s2, stamp, pos, session.pred)
        session.dep_k[:, :, n : n + k], session.dep_v[:, :, n : n + k] = kk, vv
        session.last_logits, session.h_last = logits, h[:, -1]
        stats.step_tokens += k
        stats.add_time("append", t1)
        if session.dec:
            eng.fill_decoder_caches(s1, s2, pos, session.dec, key_mask(pos, session.dec[0].max_len))
        stats.decode_tokens += k
        session.state = TokenState(
            s1=np.concatenate([state.s1, s1[0].cpu().numpy()]),
            s2=np.concatenate([state.s2, s2[0].cpu().numpy()]),
            mean=state.mean,
            std=state.std,
            anchor_ts=state.anchor_ts,
            last_ts=_to_ns(ts_new[-1]),
            refreshed_ts=state.refreshed_ts,
            bars_since_refresh=state.bars_since_refresh + k,
        )
        session.fingerprint = session.state.fingerprint()
        return session

    # ------------------------------------------------------------------ helpers

    def _remember(self, series_id: str, session: _Session) -> None:
        self._sessions[series_id] = session
        self._sessions.move_to_end(series_id)
        while len(self._sessions) > self.config.max_sessions:
            self._sessions.popitem(last=False)

    def drop(self, series_ids: Sequence[str]) -> None:
        """Forget warm sessions (e.g. of partitions this replica no longer owns)."""
        for sid in series_ids:
            self._sessions.pop(sid, None)

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


def _stack(caches: list[KVCache]) -> KVCache:
    out = KVCache.__new__(KVCache)
    out.k = torch.cat([c.k for c in caches])
    out.v = torch.cat([c.v for c in caches])
    return out
