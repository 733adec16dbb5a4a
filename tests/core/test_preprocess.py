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


def test_calendar_fields_match_pandas_accessors() -> None:
    """The numpy calendar (minute, hour, weekday, day, month) against pandas' own, pre-1970 included."""
    import pandas as pd

    from kronos_core.preprocess import calendar_fields

    rng = np.random.default_rng(0)
    ns = rng.integers(-2_000_000_000, 4_000_000_000, 2000) * 1_000_000_000 + rng.integers(0, 10**9, 2000)
    ts = pd.Series(pd.to_datetime(ns)).dt
    want = np.stack([ts.minute, ts.hour, ts.day_of_week, ts.day, ts.month], axis=1).astype(np.float32)
    np.testing.assert_array_equal(calendar_fields(ns.astype("datetime64[ns]")), want)


def test_time_features_read_zone_aware_and_array_timestamps() -> None:
    import pandas as pd
    import pytest

    from kronos_core.exceptions import InputError

    utc = pd.Series(pd.date_range("2024-03-09 22:00", periods=6, freq="h", tz="UTC"))
    ny = utc.dt.tz_convert("America/New_York")
    np.testing.assert_array_equal(time_features(ny), time_features(ny.dt.tz_localize(None)))
    np.testing.assert_array_equal(time_features(utc.to_numpy()), time_features(utc.dt.tz_localize(None)))
    np.testing.assert_array_equal(time_features(list(utc.astype(str))), time_features(utc))
    with pytest.raises(InputError, match="NaT"):
        time_features(np.array(["2024-01-01", "NaT"], dtype="datetime64[ns]"))


def test_volume_and_amount_filling_without_a_copy_of_the_frame() -> None:
    import pandas as pd

    rng = np.random.default_rng(1)
    prices = pd.DataFrame(rng.random((9, 4)) * 10, columns=["open", "high", "low", "close"])
    for extra in ({}, {"volume": rng.integers(0, 99, 9)}, {"amount": rng.random(9)},
                  {"volume": rng.random(9), "amount": rng.random(9)}):
        df = prices.assign(**extra)
        want = fill_volume_amount(df)[["open", "high", "low", "close", "volume", "amount"]].to_numpy().astype(np.float32)
        np.testing.assert_array_equal(prepare_features(df), want)
