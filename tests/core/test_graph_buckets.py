"""Batch-size buckets of the graphed decode loop: padding and chunking give the real rows exactly
what the unpadded fixed loop gives (checked on CPU through ``decode_loop="fixed"`` with buckets,
which steps the same padded buffers eagerly); warm-up captures every bucket (CUDA only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kronos_core.engine import GenerationStats, KronosEngine, SamplingParams
from kronos_core.graphed_decode import DEFAULT_GRAPH_BUCKETS, bucket_chunks, validate_buckets
from kronos_core.stream_types import SeriesWindow, derive_seed
from kronos_core.streaming import StreamConfig, StreamingForecaster
from tests.core.test_engine import _inputs, _random_pair

HORIZON = 8


@pytest.mark.parametrize(
    ("n", "buckets", "want"),
    [
        (1, (1, 8, 32), [(0, 1, 1)]),
        (2, (1, 8, 32), [(0, 2, 8)]),
        (8, (1, 8, 32), [(0, 8, 8)]),
        (9, (1, 8, 32), [(0, 9, 32)]),
        (70, (1, 8, 32), [(0, 32, 32), (32, 32, 32), (64, 6, 8)]),
        (64, (4, 32), [(0, 32, 32), (32, 32, 32)]),
        (3, (4,), [(0, 3, 4)]),
    ],
)
def test_bucket_choice_and_chunks(n, buckets, want) -> None:
    assert bucket_chunks(n, buckets) == want


@pytest.mark.parametrize(
    ("buckets", "message"),
    [
        ((), "at least one batch size"),
        ((0, 8), "positive whole numbers"),
        ((1, -8), "positive whole numbers"),
        ((1, 2.5), "positive whole numbers"),
        ((8, 8), "increasing without repeats"),
        ((8, 1), "increasing without repeats"),
    ],
)
def test_bad_bucket_lists_are_refused(buckets, message) -> None:
    with pytest.raises(ValueError, match=message):
        validate_buckets(buckets)
    tok, model = _random_pair(1)
    with pytest.raises(ValueError, match=message):
        KronosEngine(model, tok, device="cpu", max_context=64, decode_loop="fixed", graph_buckets=buckets)


def test_default_buckets_are_valid_and_ignored_off_the_fixed_loop() -> None:
    assert validate_buckets(DEFAULT_GRAPH_BUCKETS) == DEFAULT_GRAPH_BUCKETS
    tok, model = _random_pair(1)
    for loop in ("auto", "dynamic"):  # on CPU: no padding, whatever the buckets
        assert KronosEngine(model, tok, device="cpu", decode_loop=loop, graph_buckets=(1, 4)).graph_buckets is None
    assert KronosEngine(model, tok, device="cpu", decode_loop="fixed").graph_buckets is None
    assert KronosEngine(model, tok, device="cpu", decode_loop="fixed", graph_buckets=(1, 4)).graph_buckets == (1, 4)


def _run(engine: KronosEngine, lengths: list[int], params: SamplingParams, seed: int = 8):
    xs, x_st, y_st = _inputs(np.random.default_rng(seed), lengths, HORIZON)
    stats = GenerationStats()
    with torch.inference_mode():
        state = engine.prefill(xs, x_st, y_st, HORIZON, stats)
        preds, tokens = engine.run_horizon_tokens(
            state, HORIZON, params, seeds=[11 * i + 1 for i in range(len(lengths))], stats=stats
        )
    return preds, tokens, stats.decode_loops


@pytest.mark.parametrize("paths", [1, 3])  # 3 paths: the shared-prefix layout (context kept once per series)
@pytest.mark.parametrize(
    ("lengths", "buckets"),
    [
        ([30, 9, 21], (1, 4)),  # padded 3 -> 4
        ([17], (1, 4)),  # an exact fit, no padding
        ([30, 9, 21, 12, 5, 40], (1, 4)),  # chunked: 4 + (2 padded to 4)
        ([30, 9, 21, 12, 5, 40, 7], (2, 3)),  # chunked: 3 + 3 + (1 padded to 2)
        ([56, 3], (8,)),  # longest context that fits (56 + 8 = max_context), padded 2 -> 8
    ],
)
def test_padded_and_chunked_rows_equal_the_unpadded_call(lengths, buckets, paths) -> None:
    tok, model = _random_pair(8)
    params = SamplingParams(top_p=0.9, sample_count=paths)
    plain = KronosEngine(model, tok, device="cpu", max_context=64, decode_loop="fixed")
    padded = KronosEngine(model, tok, device="cpu", max_context=64, decode_loop="fixed", graph_buckets=buckets)
    want_preds, want_tokens, want_loops = _run(plain, lengths, params)
    got_preds, got_tokens, got_loops = _run(padded, lengths, params)
    assert got_loops == [want_loops[0] + "+bucketed"]
    np.testing.assert_array_equal(got_tokens, want_tokens)
    np.testing.assert_array_equal(got_preds, want_preds)
    # The static buffers are reused: a second call of another size still gives the unpadded answer.
    again_preds, _, _ = _run(padded, lengths[:1], params, seed=9)
    np.testing.assert_array_equal(again_preds, _run(plain, lengths[:1], params, seed=9)[0])


def test_incremental_sessions_through_the_padded_loop(tiny_model, tiny_tokenizer, bars) -> None:
    """Incremental mode (pool views as the state) through the padded buffers: the same forecasts."""
    values = bars[["open", "high", "low", "close", "volume", "amount"]].to_numpy(np.float64)
    ts = bars["timestamps"].to_numpy("datetime64[ns]")
    cfg = StreamConfig(mode="incremental", sampling=SamplingParams(sample_count=2), refresh_every=6)
    runs = []
    for kw in ({}, {"graph_buckets": (2, 4)}):
        engine = KronosEngine(tiny_model, tiny_tokenizer, device="cpu", max_context=64, decode_loop="fixed", **kw)
        fc = StreamingForecaster(engine, cfg, model_version="t")
        states: dict[str, object] = {}
        out = []
        for step in range(10):
            symbols = [f"S{j}" for j in range(5) if (step + j) % 4]  # 3 or 4 symbols per call
            windows = []
            for j, sid in enumerate(symbols):
                i = 200 + 37 * j + step
                windows.append(SeriesWindow(
                    sid, values[i - 50 : i + 1], ts[i - 50 : i + 1], ts[i + 1 : i + 1 + HORIZON],
                    seed=derive_seed(sid, int(ts[i].astype(np.int64)), "t"), token_state=states.get(sid),  # type: ignore[arg-type]
                ))
            results = fc.forecast(windows, HORIZON)
            states.update({r.series_id: r.token_state for r in results})
            out.append([r.samples for r in results])
        runs.append(out)
    for plain_call, padded_call in zip(*runs, strict=True):
        for a, b in zip(plain_call, padded_call, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("paths", [1, 4])
def test_warm_up_captures_every_bucket_and_later_calls_capture_nothing(paths) -> None:
    tok, model = _random_pair(10)
    params = SamplingParams(top_p=0.9, sample_count=paths)
    buckets = (1, 4, 16)
    graphed = KronosEngine(model, tok, device="cuda", max_context=64, decode_loop="graphed", graph_buckets=buckets)
    fixed = KronosEngine(model, tok, device="cuda", max_context=64, decode_loop="fixed")
    assert graphed.warm_up(HORIZON, params) == len(buckets)
    assert graphed.graph_captures == graphed.graph_captures_at_warm_up == len(buckets)
    for n in (1, 2, 4, 5, 16, 17, 40):  # every size, padded and chunked (40 = 16 + 16 + 8 -> 16)
        lengths = [10 + (7 * i) % 45 for i in range(n)]
        got_preds, got_tokens, loops = _run(graphed, lengths, params, seed=n)
        want_preds, want_tokens, _ = _run(fixed, lengths, params, seed=n)
        assert loops[0].startswith("graphed") and loops[0].endswith("+bucketed")
        assert (got_tokens == want_tokens).mean() > 0.97  # float rounding differs between kernels
    assert graphed.graph_captures == len(buckets)
