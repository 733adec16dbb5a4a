"""The streaming session API: exact mode equals predict on the same window; incremental mode
keeps its token cache, refreshes on schedule and on drift, and survives a restart."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from kronos_core import KronosPredictor
from kronos_core.engine import KronosEngine, SamplingParams
from kronos_core.session_pool import SessionPool
from kronos_core.stream_types import SeriesWindow, TokenState, derive_seed
from kronos_core.streaming import StreamConfig, StreamingForecaster

COLUMNS = ["open", "high", "low", "close", "volume", "amount"]
GREEDY = SamplingParams(T=1.0, top_k=1, top_p=1.0)
MAX_CONTEXT, HORIZON = 64, 8


@pytest.fixture(scope="module")
def arrays(bars):
    return bars[COLUMNS].to_numpy(np.float64), bars["timestamps"].to_numpy("datetime64[ns]")


@pytest.fixture(scope="module")
def engine(tiny_model, tiny_tokenizer) -> KronosEngine:
    return KronosEngine(tiny_model, tiny_tokenizer, device="cpu", max_context=MAX_CONTEXT)


def _stream(forecaster, arrays, first: int, last: int, *, restart_every: int | None = None, symbol: str = "S"):
    values, ts = arrays
    state, out = None, []
    for i in range(first, last):
        lo = max(0, i + 1 - MAX_CONTEXT)
        if restart_every and i % restart_every == 0:
            forecaster.drop([symbol])  # a new process: only what the store kept survives
            state = None if state is None else TokenState.from_dict(state.to_dict())
        window = SeriesWindow(symbol, values[lo : i + 1], ts[lo : i + 1], ts[i + 1 : i + 1 + HORIZON],
                              seed=derive_seed(symbol, int(ts[i].astype(np.int64)), "test"), token_state=state)
        (f,) = forecaster.forecast([window], HORIZON)
        state = f.token_state
        out.append(f)
    return out


def test_exact_stream_equals_predict_on_the_same_window(engine, arrays, bars, tiny_model, tiny_tokenizer) -> None:
    fc = StreamingForecaster(engine, StreamConfig(mode="exact", sampling=GREEDY), model_version="t")
    out = _stream(fc, arrays, 100, 104)
    predictor = KronosPredictor(tiny_model, tiny_tokenizer, device="cpu", max_context=MAX_CONTEXT)
    lookback = fc.lookback(HORIZON)
    for k, i in enumerate(range(100, 104)):
        ctx = bars.iloc[i + 1 - lookback : i + 1]
        fut = bars["timestamps"].iloc[i + 1 : i + 1 + HORIZON]
        ref = predictor.predict(ctx[COLUMNS], ctx["timestamps"], fut, HORIZON, top_k=1, top_p=1.0, verbose=False)
        np.testing.assert_allclose(out[k].mean, ref.to_numpy(), rtol=1e-4, atol=1e-5)
        assert out[k].token_state is None


def test_incremental_keeps_tokens_and_refreshes_on_schedule(engine, arrays) -> None:
    fc = StreamingForecaster(engine, StreamConfig(mode="incremental", sampling=GREEDY, refresh_every=10),
                             model_version="t")
    out = _stream(fc, arrays, 200, 235)
    states = [f.token_state for f in out]
    assert all(s is not None for s in states)
    refreshes = [k for k, s in enumerate(states) if s.bars_since_refresh == 0]
    assert refreshes[0] == 0 and all(b - a == 11 for a, b in zip(refreshes, refreshes[1:], strict=False))
    for prev, cur in zip(states, states[1:], strict=False):
        if cur.bars_since_refresh:  # appended: earlier tokens unchanged, one more token
            np.testing.assert_array_equal(cur.s1[:-1], prev.s1)
            np.testing.assert_array_equal(cur.s2[:-1], prev.s2)
            np.testing.assert_array_equal(cur.mean, prev.mean)
            assert len(cur) == len(prev) + 1
    assert all(len(s) + HORIZON <= MAX_CONTEXT for s in states)


def test_incremental_after_restart_equals_warm(engine, arrays) -> None:
    cfg = StreamConfig(mode="incremental", sampling=SamplingParams(sample_count=3), refresh_every=12)
    warm = _stream(StreamingForecaster(engine, cfg, model_version="t"), arrays, 300, 330)
    cold = _stream(StreamingForecaster(engine, cfg, model_version="t"), arrays, 300, 330, restart_every=4)
    for a, b in zip(warm, cold, strict=True):
        np.testing.assert_array_equal(a.token_state.s1, b.token_state.s1)
        np.testing.assert_allclose(a.samples, b.samples, rtol=1e-5)


def test_incremental_refreshes_when_prices_drift(engine, arrays) -> None:
    values, ts = arrays
    fc = StreamingForecaster(engine, StreamConfig(mode="incremental", sampling=GREEDY, refresh_every=50,
                                                  drift_sigma=3.0), model_version="t")
    lo, i = 400, 440
    (f,) = fc.forecast([SeriesWindow("D", values[lo:i], ts[lo:i], ts[i : i + HORIZON], seed=1)], HORIZON)
    jumped = values[lo : i + 1].copy()
    jumped[-1, :4] *= 1.5  # a 50% jump is far outside 3 sigma of the frozen statistics
    (g,) = fc.forecast(
        [SeriesWindow("D", jumped, ts[lo : i + 1], ts[i + 1 : i + 1 + HORIZON], seed=2, token_state=f.token_state)],
        HORIZON,
    )
    assert g.token_state.bars_since_refresh == 0
    assert not np.allclose(g.token_state.mean, f.token_state.mean)


def test_incremental_tracks_exact_on_real_bars(engine, arrays) -> None:
    exact = _stream(StreamingForecaster(engine, StreamConfig(mode="exact", sampling=GREEDY), model_version="t"),
                    arrays, 500, 530)
    incr = _stream(StreamingForecaster(engine, StreamConfig(mode="incremental", sampling=GREEDY),
                                       model_version="t"), arrays, 500, 530)
    close_exact = np.array([f.mean[:, 3] for f in exact])
    close_incr = np.array([f.mean[:, 3] for f in incr])
    level = np.abs(close_exact).mean()
    assert np.abs(close_exact - close_incr).mean() < 0.05 * level  # same ballpark, not identical


def test_results_carry_bands_in_order(engine, arrays) -> None:
    fc = StreamingForecaster(engine, StreamConfig(mode="exact", sampling=SamplingParams(sample_count=8),
                                                  quantile_levels=(0.1, 0.5, 0.9)), model_version="t")
    (f,) = _stream(fc, arrays, 700, 701)
    assert f.samples.shape == (8, HORIZON, 6) and f.quantiles.shape == (3, HORIZON, 6)
    assert (np.diff(f.quantiles, axis=0) >= 0).all()
    assert "model" in f.timings_ms


def test_token_state_round_trips_and_rejects_bad_records() -> None:
    state = TokenState(s1=np.array([1, 2, 3]), s2=np.array([4, 5, 6]), mean=np.arange(6.0), std=np.ones(6),
                       anchor_ts=10, last_ts=30, refreshed_ts=20, bars_since_refresh=1)
    back = TokenState.from_dict(state.to_dict())
    np.testing.assert_array_equal(back.s1, state.s1)
    assert back.fingerprint() == state.fingerprint()
    with pytest.raises(ValueError, match="lacks the field"):
        TokenState.from_dict({"s1": ""})
    with pytest.raises(ValueError, match="inconsistent"):
        TokenState(s1=np.array([1]), s2=np.array([1, 2]), mean=np.zeros(6), std=np.ones(6),
                   anchor_ts=0, last_ts=0, refreshed_ts=0)


def test_bad_horizon_and_windows_are_rejected(engine, arrays) -> None:
    values, ts = arrays
    fc = StreamingForecaster(engine, StreamConfig(), model_version="t")
    w = SeriesWindow("X", values[:10], ts[:10], ts[10:14], seed=0)
    with pytest.raises(ValueError, match="horizon"):
        fc.forecast([w], 0)
    with pytest.raises(ValueError, match="future timestamps"):
        fc.forecast([w], 5)
    with pytest.raises(ValueError, match="mode"):
        StreamConfig(mode="fast")  # type: ignore[arg-type]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["exact", "incremental"])
def test_cuda_stream_samples_what_the_cpu_stream_samples(engine, arrays, tiny_model, tiny_tokenizer, mode) -> None:
    """Both modes on CUDA (graphed loop, paths sharing the context cache) against the CPU engine."""
    cuda_engine = KronosEngine(copy.deepcopy(tiny_model), copy.deepcopy(tiny_tokenizer), device="cuda",
                               max_context=MAX_CONTEXT)
    cfg = StreamConfig(mode=mode, sampling=SamplingParams(sample_count=4))
    on_cpu = _stream(StreamingForecaster(engine, cfg, model_version="t"), arrays, 400, 420)
    on_cuda = _stream(StreamingForecaster(cuda_engine, cfg, model_version="t"), arrays, 400, 420)
    assert cuda_engine._graphs is not None and cuda_engine._graphs.captures >= 1
    same = np.mean([np.allclose(a.samples, b.samples, rtol=1e-4, atol=1e-5) for a, b in zip(on_cpu, on_cuda, strict=True)])
    assert same >= 0.9  # float rounding differs between devices; a rare sample may flip


def _staggered_calls(arrays, n_series: int, steps: int, seed: int = 0):
    """Per step, the windows of the series that got bars: series start at different bars, windows
    have different lengths, some steps skip a series (its next window then brings two new bars)."""
    values, ts = arrays
    rng = np.random.default_rng(seed)
    at = {f"S{j}": 150 + 41 * j for j in range(n_series)}
    calls = []
    for _ in range(steps):
        call = []
        for sid in at:
            if rng.random() < 0.2:
                continue
            at[sid] += 1 if rng.random() < 0.8 else 2
            i = at[sid]
            lo = max(0, i + 1 - MAX_CONTEXT + int(rng.integers(0, 12)))
            call.append((sid, lo, i))
        calls.append(call)
    return calls


def _run_calls(forecaster, arrays, calls, *, one_by_one: bool):
    values, ts = arrays
    states: dict[str, TokenState | None] = {}
    out = []
    for call in calls:
        windows = [SeriesWindow(sid, values[lo : i + 1], ts[lo : i + 1], ts[i + 1 : i + 1 + HORIZON],
                                seed=derive_seed(sid, int(ts[i].astype(np.int64)), "t"), token_state=states.get(sid))
                   for sid, lo, i in call]
        results = [r for w in windows for r in forecaster.forecast([w], HORIZON)] if one_by_one else \
            forecaster.forecast(windows, HORIZON)
        for r in results:
            states[r.series_id] = r.token_state
        out.append(results)
    return out


def _assert_same_forecasts(a, b) -> None:
    for call_a, call_b in zip(a, b, strict=True):
        for x, y in zip(call_a, call_b, strict=True):
            assert x.series_id == y.series_id
            np.testing.assert_array_equal(x.token_state.s1, y.token_state.s1)
            np.testing.assert_array_equal(x.token_state.s2, y.token_state.s2)
            assert x.token_state.bars_since_refresh == y.token_state.bars_since_refresh
            np.testing.assert_allclose(x.samples, y.samples, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sampling", [GREEDY, SamplingParams(sample_count=3)], ids=["greedy", "3paths"])
def test_incremental_batched_equals_one_by_one(engine, arrays, sampling) -> None:
    """One batched call per step (refreshes, rebuilds and appends of one or two bars mixed, windows
    of different lengths) gives the tokens and samples of one call per series."""
    cfg = StreamConfig(mode="incremental", sampling=sampling, refresh_every=6)
    calls = _staggered_calls(arrays, n_series=6, steps=24)
    batched_fc = StreamingForecaster(engine, cfg, model_version="t")
    batched = _run_calls(batched_fc, arrays, calls, one_by_one=False)
    single = _run_calls(StreamingForecaster(engine, cfg, model_version="t"), arrays, calls, one_by_one=True)
    _assert_same_forecasts(batched, single)
    states = [r.token_state for call in batched for r in call]
    assert any(s.bars_since_refresh == 0 for s in states[6:])  # refreshes happened after the first call ...
    assert any(s.bars_since_refresh >= 2 for s in states)  # ... and appends on warm caches


def test_incremental_batches_larger_than_the_session_pool(engine, arrays) -> None:
    """A byte budget of two sessions: batches of six run in chunks, evicted sessions are rebuilt
    from their token caches, and the forecasts stay those of an unbounded pool."""
    unbounded = StreamingForecaster(engine, StreamConfig(mode="incremental", sampling=GREEDY, refresh_every=6),
                                    model_version="t")
    slot = unbounded._pool.slot_bytes
    cfg = StreamConfig(mode="incremental", sampling=GREEDY, refresh_every=6, max_session_bytes=int(2.5 * slot))
    bounded = StreamingForecaster(engine, cfg, model_version="t")
    assert bounded._pool.max_slots == 2
    calls = _staggered_calls(arrays, n_series=6, steps=10, seed=1)
    _assert_same_forecasts(_run_calls(bounded, arrays, calls, one_by_one=False),
                           _run_calls(unbounded, arrays, calls, one_by_one=False))
    assert len(bounded._pool) <= 2 and bounded._pool.counters.evicted > 0
    with pytest.raises(ValueError, match="max_session_bytes"):
        StreamingForecaster(engine, StreamConfig(mode="incremental", max_session_bytes=slot - 1), model_version="t")


def test_incremental_steady_batches_run_over_pool_views(engine, arrays) -> None:
    """The same series bar after bar: no session is moved or copied; the batch's caches are views
    of the pool. A batch of another composition moves only the series outside its run of slots."""
    values, ts = arrays
    fc = StreamingForecaster(engine, StreamConfig(mode="incremental", sampling=GREEDY), model_version="t")
    states: dict[str, TokenState | None] = {}

    def step(sids, i):
        ws = [SeriesWindow(s, values[i - 40 : i + 1], ts[i - 40 : i + 1], ts[i + 1 : i + 1 + HORIZON], seed=1,
                           token_state=states.get(s)) for s in sids]
        for r in fc.forecast(ws, HORIZON):
            states[r.series_id] = r.token_state

    for i in range(300, 305):
        step(["A", "B", "C", "D"], i)
        assert fc.last_stats.sessions_moved == 0
    views = fc._pool.views(fc._pool.slot("A"), 4)
    assert views.pred[0].k.untyped_storage().data_ptr() == fc._pool.pred[0].k.untyped_storage().data_ptr()
    step(["E", "A", "F"], 305)  # placed next to A: at most A moves
    assert fc.last_stats.sessions_moved <= 1
    slots = sorted(fc._pool.slot(s) for s in "EAF")
    assert slots == list(range(slots[0], slots[0] + 3))


def test_session_pool_moves_keep_caches_and_evict_outsiders(engine) -> None:
    pool = SessionPool(engine, max_slots=4)
    assert pool.place(["a", "b"]) == 0
    pool.dep_k[pool.slot("b")] = 7.0
    start = pool.place(["c", "d", "b"])
    assert sorted(pool.slot(s) for s in "cdb") == [start, start + 1, start + 2]
    assert bool((pool.dep_k[pool.slot("b")] == 7.0).all())  # a moved session keeps its caches
    pool.place(["e", "f", "g", "b"])  # the pool is full: the others are evicted
    assert "b" in pool and "a" not in pool and "c" not in pool and pool.counters.evicted >= 2
    assert bool((pool.dep_k[pool.slot("b")] == 7.0).all())
    with pytest.raises(ValueError, match="does not fit"):
        pool.place(list("vwxyz"))
    with pytest.raises(ValueError, match="twice"):
        pool.place(["a", "a"])


def test_calendar_features_of_many_arrays_at_once_equal_one_by_one() -> None:
    from kronos_core.streaming import calendar_features, calendar_features_many

    rng = np.random.default_rng(0)
    start = np.datetime64("2024-03-09T15:00", "ns")  # spans New York's switch to summer time
    arrays = [
        start + np.sort(rng.integers(0, 3 * 86_400, size=n)).astype("timedelta64[s]") for n in (5, 0, 1, 64, 17)
    ]
    for tz in ("UTC", "Asia/Shanghai", "America/New_York"):
        many = calendar_features_many(arrays, tz)
        assert len(many) == len(arrays)
        for got, ts in zip(many, arrays, strict=True):
            assert got.dtype == np.float32 and got.shape == (len(ts), 5)
            if len(ts):
                np.testing.assert_array_equal(got, calendar_features(ts, tz))
    assert calendar_features_many([], "UTC") == []


def test_a_full_pool_swaps_sessions_instead_of_evicting_them(engine) -> None:
    """Every series has a warm session and the pool is full; a batch of scattered series is made
    contiguous by swapping slots with the series in the way, which keep their sessions (nothing is
    evicted, so nothing needs a rebuild). Only a new series in a full pool evicts one."""
    pool = SessionPool(engine, max_slots=6)
    pool.place(list("abcdef"))
    for i, s in enumerate("abcdef"):
        pool.dep_k[pool.slot(s)] = float(i)
    for batch in (["a", "c", "e"], ["f", "b"], ["d", "a", "f", "c"], ["e", "b", "d"]):
        start = pool.place(batch)
        assert sorted(pool.slot(s) for s in batch) == list(range(start, start + len(batch)))
        assert all(s in pool for s in "abcdef") and pool.counters.evicted == 0
        for i, s in enumerate("abcdef"):
            assert bool((pool.dep_k[pool.slot(s)] == float(i)).all()), s  # every session kept its caches
    pool.place(["g", "a"])  # a new series in a full pool: one other series makes room
    assert "g" in pool and "a" in pool and len(pool) == 6 and pool.counters.evicted == 1


def test_generation_stats_say_how_each_incremental_series_was_served(engine, arrays) -> None:
    """Cold start: refreshed; the next bar: warm; a token cache from another process (no warm
    session here): rebuilt. The daemon exports these as kronos_incremental_series_total{served}."""
    values, ts = arrays

    def window(sid: str, i: int, state: TokenState | None) -> SeriesWindow:
        return SeriesWindow(sid, values[i - 40 : i + 1], ts[i - 40 : i + 1], ts[i + 1 : i + 1 + HORIZON], seed=1,
                            token_state=state)

    first = StreamingForecaster(engine, StreamConfig(mode="incremental", sampling=GREEDY), model_version="t")
    states = {r.series_id: r.token_state for r in first.forecast([window(s, 300, None) for s in "AB"], HORIZON)}
    assert (first.last_stats.series_refreshed, first.last_stats.series_warm, first.last_stats.series_rebuilt) == (2, 0, 0)
    again = first.forecast([window(s, 301, states[s]) for s in "AB"], HORIZON)
    assert (first.last_stats.series_warm, first.last_stats.series_rebuilt) == (2, 0)
    other = StreamingForecaster(engine, StreamConfig(mode="incremental", sampling=GREEDY), model_version="t")
    other.forecast([window(r.series_id, 302, r.token_state) for r in again], HORIZON)
    assert (other.last_stats.series_rebuilt, other.last_stats.series_warm) == (2, 0)
