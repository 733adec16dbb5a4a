"""Upstream preprocessing: filling rules, calendar features, instance normalisation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kronos_core.preprocess import denormalize, fill_volume_amount, normalize, prepare_features, time_features


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"open": [10.0, 11.0], "high": [12.0, 13.0], "low": [9.0, 10.0], "close": [11.0, 12.0],
                         "volume": [100.0, 200.0]})


def test_missing_amount_is_volume_times_mean_price() -> None:
    filled = fill_volume_amount(_frame())
    np.testing.assert_allclose(filled["amount"], [100.0 * 10.5, 200.0 * 11.5])


def test_missing_volume_zeroes_volume_and_amount() -> None:
    df = _frame().drop(columns=["volume"]).assign(amount=[5.0, 6.0])
    x = prepare_features(df)
    assert x.dtype == np.float32 and x.shape == (2, 6)
    assert (x[:, 4:] == 0).all()  # upstream overwrites a given amount when volume is missing


def test_time_features_order_and_values() -> None:
    ts = pd.Series(pd.to_datetime(["2024-06-18 11:15:00", "2024-12-01 09:05:00"]))
    assert time_features(ts).tolist() == [[15, 11, 1, 18, 6], [5, 9, 6, 1, 12]]


def test_normalize_and_denormalize() -> None:
    x = np.array([[1.0, 5.0], [3.0, 5.0], [100.0, 5.0]], dtype=np.float32)
    x_norm, mean, std = normalize(x, clip=1.0)
    assert x_norm.dtype == np.float32
    assert x_norm.max() <= 1.0 and x_norm.min() >= -1.0
    assert (x_norm[:, 1] == 0).all()  # constant column: std 0, no division error
    x_free, mean, std = normalize(x, clip=100.0)
    np.testing.assert_allclose(denormalize(x_free, mean, std), x, rtol=1e-5)
