"""The warm-session cache of incremental mode is bounded in bytes, not only in count, and an evicted
session costs a rebuild, never a different forecast."""

from __future__ import annotations

import numpy as np
import pytest

from kronos_core.engine import KronosEngine, SamplingParams
from kronos_core.stream_types import SeriesWindow
from kronos_core.streaming import StreamConfig, StreamingForecaster

COLUMNS = ["open", "high", "low", "close", "volume", "amount"]
GREEDY = SamplingParams(T=1.0, top_k=1, top_p=1.0)
MAX_CONTEXT, HORIZON = 64, 4


@pytest.fixture(scope="module")
def engine(tiny_model, tiny_tokenizer) -> KronosEngine:
    return KronosEngine(tiny_model, tiny_tokenizer, device="cpu", max_context=MAX_CONTEXT)


def _run(fc: StreamingForecaster, bars, symbols: int, steps: int) -> list[np.ndarray]:
    values = bars[COLUMNS].to_numpy(np.float64)
    ts = bars["timestamps"].to_numpy("datetime64[ns]")
    states: dict[str, object] = {}
    means = []
    for i in range(100, 100 + steps):
        windows = []
        for k in range(symbols):
            lo, hi = i - 40 + 7 * k, i + 1 + 7 * k  # each symbol its own stretch of the series
            windows.append(
                SeriesWindow(f"S{k}", values[lo:hi], ts[lo:hi], ts[hi : hi + HORIZON], seed=k, token_state=states.get(f"S{k}"))
            )
        for f in fc.forecast(windows, HORIZON):
            states[f.series_id] = f.token_state
            means.append(f.mean)
    return means


def test_sessions_stay_within_the_byte_bound_and_forecasts_do_not_change(engine, bars) -> None:
    unbounded = StreamingForecaster(engine, StreamConfig(mode="incremental", sampling=GREEDY), model_version="t")
    reference = _run(unbounded, bars, symbols=6, steps=3)
    assert unbounded.warm_sessions == 6
    one = unbounded.session_bytes // 6
    assert one > 0 and unbounded.session_bytes == 6 * one  # every session of a shape weighs the same

    cfg = StreamConfig(mode="incremental", sampling=GREEDY, max_session_bytes=int(2.5 * one))
    bounded = StreamingForecaster(engine, cfg, model_version="t")
    means = _run(bounded, bars, symbols=6, steps=3)
    assert bounded.warm_sessions == 2 and bounded.session_bytes <= cfg.max_session_bytes
    for a, b in zip(reference, means, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5)  # a rebuilt session: the same numbers up to float rounding
    bounded.drop([f"S{k}" for k in range(6)])
    assert bounded.warm_sessions == 0 and bounded.session_bytes == 0


def test_the_byte_bound_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="max_session_bytes"):
        StreamConfig(mode="incremental", max_session_bytes=-1)
