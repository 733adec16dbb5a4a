"""Greedy forecasts equal upstream's (forecasts.json), plus sampling and batching behaviour."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from kronos_core import KronosPredictor

COLUMNS = ["open", "high", "low", "close", "volume", "amount"]


def _case_inputs(bars: pd.DataFrame, start: int, context_len: int, pred_len: int, dropped=()):
    window = bars.iloc[start : start + context_len]
    df = window[[c for c in COLUMNS if c not in dropped]]
    future = bars["timestamps"].iloc[start + context_len : start + context_len + pred_len]
    return df, window["timestamps"], future


def _assert_forecast(actual: pd.DataFrame, expected, y_timestamp: pd.Series) -> None:
    assert list(actual.columns) == COLUMNS
    assert list(actual.index) == list(y_timestamp)
    # rtol 1e-4 as asked by the fixture; atol covers the zero-filled volume/amount columns
    # (values like -4e-06 that are rounded to 6 decimals in the fixture).
    np.testing.assert_allclose(actual.to_numpy(), np.asarray(expected), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def single_cases(forecasts):
    return forecasts["single"]


def test_fixture_has_sliding_window_case(forecasts) -> None:
    assert any(c["context_len"] + c["pred_len"] > c["max_context"] for c in forecasts["single"])


ENGINES = ("fast", "recompute")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("index", range(5))
def test_single_forecast_matches_upstream(index, engine, single_cases, bars, tiny_model, tiny_tokenizer) -> None:
    case = single_cases[index]
    predictor = KronosPredictor(
        tiny_model, tiny_tokenizer, device="cpu", max_context=case["max_context"], engine=engine
    )
    df, x_ts, y_ts = _case_inputs(bars, case["start_row"], case["context_len"], case["pred_len"],
                                  case["dropped_columns"])
    out = predictor.predict(
        df, x_ts, y_ts, case["pred_len"], T=case["T"], top_k=case["top_k"], top_p=case["top_p"],
        sample_count=case["sample_count"], verbose=False,
    )
    _assert_forecast(out, case["expected"], y_ts)


@pytest.mark.parametrize("engine", ENGINES)
def test_batch_forecast_matches_upstream(engine, forecasts, bars, tiny_model, tiny_tokenizer) -> None:
    case = forecasts["batch"]
    predictor = KronosPredictor(
        tiny_model, tiny_tokenizer, device="cpu", max_context=case["max_context"], engine=engine
    )
    inputs = [_case_inputs(bars, s, case["context_len"], case["pred_len"]) for s in case["start_rows"]]
    outs = predictor.predict_batch(
        [i[0] for i in inputs], [i[1] for i in inputs], [i[2] for i in inputs], case["pred_len"],
        T=1.0, top_k=1, top_p=1.0, sample_count=1, verbose=False,
    )
    assert len(outs) == len(case["start_rows"])
    for out, expected, inp in zip(outs, case["expected"], inputs, strict=True):
        _assert_forecast(out, expected, inp[2])


def test_predict_batch_accepts_different_lengths(bars, tiny_model, tiny_tokenizer) -> None:
    predictor = KronosPredictor(tiny_model, tiny_tokenizer, device="cpu", max_context=64)
    specs = [(100, 30), (400, 50), (900, 30)]
    inputs = [_case_inputs(bars, s, n, 6) for s, n in specs]
    batch = predictor.predict_batch(
        [i[0] for i in inputs], [i[1] for i in inputs], [i[2] for i in inputs], 6, top_k=1, verbose=False
    )
    for out, inp in zip(batch, inputs, strict=True):
        single = predictor.predict(inp[0], inp[1], inp[2], 6, top_k=1, verbose=False)
        np.testing.assert_allclose(out.to_numpy(), single.to_numpy(), rtol=1e-5)


def test_sampling_is_reproducible_with_a_generator(bars, tiny_model, tiny_tokenizer) -> None:
    predictor = KronosPredictor(tiny_model, tiny_tokenizer, device="cpu", max_context=64)
    df, x_ts, y_ts = _case_inputs(bars, 10, 32, 5)

    def run(seed: int) -> pd.DataFrame:
        return predictor.predict(df, x_ts, y_ts, 5, T=1.0, top_p=0.9, sample_count=3, verbose=False,
                                 generator=torch.Generator().manual_seed(seed))

    first, again, other = run(1), run(1), run(2)
    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first.to_numpy(), other.to_numpy())


def test_datetimeindex_timestamps_are_accepted(bars, tiny_model, tiny_tokenizer) -> None:
    predictor = KronosPredictor(tiny_model, tiny_tokenizer, device="cpu", max_context=64)
    df, x_ts, y_ts = _case_inputs(bars, 0, 40, 8)
    from_series = predictor.predict(df, x_ts, y_ts, 8, top_k=1, verbose=False)
    from_index = predictor.predict(df, pd.DatetimeIndex(x_ts), pd.DatetimeIndex(y_ts), 8, top_k=1, verbose=False)
    np.testing.assert_array_equal(from_series.to_numpy(), from_index.to_numpy())
