"""Bad input raises ValueError saying what is wrong and what to do."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kronos_core import KronosPredictor

COLUMNS = ["open", "high", "low", "close", "volume", "amount"]


@pytest.fixture(scope="module")
def predictor(tiny_model, tiny_tokenizer) -> KronosPredictor:
    return KronosPredictor(tiny_model, tiny_tokenizer, device="cpu", max_context=64)


@pytest.fixture
def inputs(bars):
    ctx = bars.iloc[:30]
    return ctx[COLUMNS].copy(), ctx["timestamps"], bars["timestamps"].iloc[30:34]


def _predict(predictor, df, x_ts, y_ts, pred_len=4, **kw):
    return predictor.predict(df, x_ts, y_ts, pred_len, top_k=1, verbose=False, **kw)


def test_not_a_dataframe(predictor, inputs) -> None:
    df, x_ts, y_ts = inputs
    with pytest.raises(ValueError, match="expected a pandas DataFrame of bars, got ndarray"):
        _predict(predictor, df.to_numpy(), x_ts, y_ts)


def test_missing_price_columns(predictor, inputs) -> None:
    df, x_ts, y_ts = inputs
    with pytest.raises(ValueError, match=r"missing price columns \['low'\]; it needs"):
        _predict(predictor, df.drop(columns=["low"]), x_ts, y_ts)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf(predictor, inputs, bad) -> None:
    df, x_ts, y_ts = inputs
    df.iloc[7, df.columns.get_loc("close")] = bad
    with pytest.raises(ValueError, match=r"NaN or infinite values in \['close'\] \(first at row 7\); drop or fill"):
        _predict(predictor, df, x_ts, y_ts)


def test_timestamps_not_matching_rows(predictor, inputs) -> None:
    df, x_ts, y_ts = inputs
    with pytest.raises(ValueError, match="x_timestamp has 29 entries but the DataFrame has 30 rows; pass one"):
        _predict(predictor, df, x_ts.iloc[:-1], y_ts)


def test_y_timestamp_length_differs_from_pred_len(predictor, inputs) -> None:
    df, x_ts, y_ts = inputs
    with pytest.raises(ValueError, match="y_timestamp has 4 entries but pred_len=5; pass one future timestamp"):
        _predict(predictor, df, x_ts, y_ts, pred_len=5)


def test_empty_context(predictor, inputs) -> None:
    df, x_ts, y_ts = inputs
    with pytest.raises(ValueError, match="has no rows; pass at least one bar of context"):
        _predict(predictor, df.iloc[:0], x_ts.iloc[:0], y_ts)


@pytest.mark.parametrize(
    ("device", "message"),
    [("tpu", "unknown device 'tpu'"), ("cuda:7", "cuda:7"), ("meta", "unsupported device 'meta'")],
)
def test_unknown_device(tiny_model, tiny_tokenizer, device, message) -> None:
    with pytest.raises(ValueError, match=message):
        KronosPredictor(tiny_model, tiny_tokenizer, device=device)


def test_timestamps_that_are_not_dates(predictor, inputs) -> None:
    df, _, y_ts = inputs
    with pytest.raises(ValueError, match="x_timestamp could not be read as timestamps"):
        _predict(predictor, df, ["not a date"] * len(df), y_ts)


def test_pred_len_must_fit_max_context(predictor, bars, inputs) -> None:
    df, x_ts, _ = inputs
    with pytest.raises(ValueError, match="pred_len=65 exceeds max_context=64"):
        _predict(predictor, df, x_ts, bars["timestamps"].iloc[30:95], pred_len=65)
    with pytest.raises(ValueError, match="pred_len must be a positive integer"):
        _predict(predictor, df, x_ts, bars["timestamps"].iloc[30:30], pred_len=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"T": 0.0}, "T \\(temperature\\) must be > 0"), ({"top_p": 0.0}, "top_p must be in"),
     ({"sample_count": 0}, "sample_count must be a positive integer")],
)
def test_bad_sampling_arguments(predictor, inputs, kwargs, message) -> None:
    df, x_ts, y_ts = inputs
    with pytest.raises(ValueError, match=message):
        predictor.predict(df, x_ts, y_ts, 4, verbose=False, **kwargs)


def test_batch_errors_name_the_series(predictor, inputs) -> None:
    df, x_ts, y_ts = inputs
    bad = df.drop(columns=["open"])
    with pytest.raises(ValueError, match=r"\(series 1\) is missing price columns \['open'\]"):
        predictor.predict_batch([df, bad], [x_ts, x_ts], [y_ts, y_ts], 4, verbose=False)
    with pytest.raises(ValueError, match="must have the same number of entries"):
        predictor.predict_batch([df, df], [x_ts], [y_ts, y_ts], 4, verbose=False)
    with pytest.raises(ValueError, match="df_list must be a list or tuple"):
        predictor.predict_batch(df, [x_ts], [y_ts], 4, verbose=False)
    with pytest.raises(ValueError, match="df_list is empty"):
        predictor.predict_batch([], [], [], 4, verbose=False)


def test_missing_volume_is_filled_not_rejected(predictor, inputs) -> None:
    df, x_ts, y_ts = inputs
    out = _predict(predictor, df[["open", "high", "low", "close"]], x_ts, y_ts)
    assert list(out.columns) == COLUMNS
    assert isinstance(out, pd.DataFrame)
