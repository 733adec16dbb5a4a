"""Input validation and the output message: pure logic, no services."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from daemon.errors import InvalidBar
from daemon.io.messages import (
    ForecastContext,
    build_forecast_message,
    encode_json,
    forecast_id,
    format_ts,
    horizon_ns,
    infer_interval_ns,
    parse_bar,
    quantile_key,
    to_ns,
)
from kronos_core.stream_types import SeriesForecast
from tests.support.launcher import bar_record, encode

TS = datetime(2024, 6, 18, 3, 15, tzinfo=UTC)


def _raw(**fields: object) -> tuple[bytes | None, bytes | None]:
    return encode(bar_record("AAA", TS, 11.27, **fields))


def test_valid_bar_is_parsed_to_utc_nanoseconds() -> None:
    key, value = _raw(ts="2024-06-18T11:15:00+08:00")
    bar = parse_bar(key, value)
    assert bar.symbol == "AAA"
    assert bar.ts_ns == to_ns(TS) == 1718680500 * 10**9
    assert bar.values[3] == 11.27 and len(bar.values) == 6


def test_missing_amount_is_filled_from_volume_and_prices() -> None:
    record = bar_record("AAA", TS, 10.0, open=10.0, high=12.0, low=8.0, volume=5.0)
    del record["amount"]
    bar = parse_bar(*encode(record))
    assert bar.values[5] == pytest.approx(5.0 * (10 + 12 + 8 + 10) / 4)


def test_integers_are_accepted_as_prices() -> None:
    bar = parse_bar(*_raw(open=11, high=12, low=10, close=11, volume=0))
    assert bar.values[:5] == (11.0, 12.0, 10.0, 11.0, 0.0)


@pytest.mark.parametrize(
    ("raw", "kind", "words"),
    [
        (b"{not json", "json", "malformed JSON"),
        (b"", "empty", "empty"),
        (
            b'{"symbol": "AAA", "ts": "2024-06-18T03:15:00Z", "open": NaN, "high": 1, "low": 1, "close": 1, "volume": 1}',
            "schema",
            "finite",
        ),
        (
            b'{"symbol": "AAA", "ts": "2024-06-18T03:15:00Z", "open": 1, "high": Infinity, "low": 1, "close": 1, "volume": 1}',
            "schema",
            "finite",
        ),
        (
            b'{"symbol": "AAA", "ts": "2024-06-18T03:15:00Z", "open": 1, "high": 1, "low": 1, "close": 1, "volume": -Infinity}',
            "schema",
            "volume",
        ),
        (json.dumps(bar_record("AAA", TS, 11.0, close="11.0")).encode(), "schema", "close"),
        (json.dumps(bar_record("AAA", TS, 11.0, volume=True)).encode(), "schema", "volume"),
        (json.dumps(bar_record("AAA", TS, 11.0, ts="2024-06-18T03:15:00")).encode(), "schema", "timezone"),
        (json.dumps(bar_record("AAA", TS, 11.0, ts=1718680500)).encode(), "schema", "ts"),
        (json.dumps(bar_record("AAA", TS, 11.0, high=10.0)).encode(), "schema", "inconsistent OHLC"),
        (json.dumps(bar_record("AAA", TS, 11.0, low=11.5)).encode(), "schema", "inconsistent OHLC"),
        (json.dumps(bar_record("AAA", TS, 11.0, open=-1.0)).encode(), "schema", "open"),
        (json.dumps(bar_record("AAA", TS, 11.0, volume=-1.0)).encode(), "schema", "volume"),
        (json.dumps(bar_record("AAA", TS, 11.0, amount=-1.0)).encode(), "schema", "amount"),
        (json.dumps({"symbol": "AAA", "ts": "2024-06-18T03:15:00Z"}).encode(), "schema", "Field required"),
        (b"[1, 2, 3]", "schema", "schema violation"),
    ],
)
def test_invalid_messages_name_their_reason(raw: bytes, kind: str, words: str) -> None:
    with pytest.raises(InvalidBar) as info:
        parse_bar(b"AAA", raw)
    assert info.value.kind == kind
    assert words in info.value.reason


def test_key_must_be_the_symbol() -> None:
    _, value = _raw()
    with pytest.raises(InvalidBar, match="differs from symbol") as info:
        parse_bar(b"BBB", value)
    assert info.value.kind == "key"
    with pytest.raises(InvalidBar, match="no key"):
        parse_bar(None, value)


def test_forecast_id_is_stable_and_distinct() -> None:
    a = forecast_id("AAA", 1, "v1")
    assert a == forecast_id("AAA", 1, "v1")
    assert (
        len({a, forecast_id("AAA", 2, "v1"), forecast_id("AAB", 1, "v1"), forecast_id("AAA", 1, "v2")}) == 4
    )


def test_interval_ignores_a_gap_and_falls_back_without_history() -> None:
    m = 60 * 10**9
    assert infer_interval_ns([0, m, 2 * m], 5) == m
    assert infer_interval_ns([0, m, 2 * m, 9 * m], 5) == m  # the last step is a gap
    assert infer_interval_ns([7 * m], 5 * m) == 5 * m
    assert horizon_ns(9 * m, m, 3) == [10 * m, 11 * m, 12 * m]


def test_formatting_helpers() -> None:
    assert format_ts(to_ns(TS)) == "2024-06-18T03:15:00Z"
    assert format_ts(to_ns(TS + timedelta(microseconds=5))) == "2024-06-18T03:15:00.000005Z"
    assert [quantile_key(q) for q in (0.1, 0.5, 0.9, 0.025)] == ["p10", "p50", "p90", "p2.5"]


def _result(h: int, q: int = 3) -> SeriesForecast:
    samples = np.ones((2, h, 6))
    return SeriesForecast("AAA", samples.mean(0), samples, np.ones((q, h, 6)), (0.1, 0.5, 0.9)[:q])


def test_forecast_message_holds_every_feature_and_band() -> None:
    m = 60 * 10**9
    ctx = ForecastContext("AAA", to_ns(TS), m, horizon_ns(to_ns(TS), m, 2), 7, 10, "in", 0, 5, 0, 0.0)
    msg = build_forecast_message(ctx, _result(2), "v1", "exact", now=1.0)
    assert msg["id"] == forecast_id("AAA", to_ns(TS), "v1")
    assert msg["timestamps"] == ["2024-06-18T03:16:00Z", "2024-06-18T03:17:00Z"]
    assert (
        set(msg["mean"])
        == set(msg["quantiles"]["p50"])
        == {"open", "high", "low", "close", "volume", "amount"}
    )
    assert set(msg["quantiles"]) == {"p10", "p50", "p90"}
    assert msg["source"] == {"topic": "in", "partition": 0, "offset": 5}
    assert set(msg["latency_ms"]) == {"queue", "model", "end_to_end", "from_bar"}


def test_forecast_message_refuses_bad_shapes_and_nan() -> None:
    m = 60 * 10**9
    ctx = ForecastContext("AAA", 0, m, horizon_ns(0, m, 2), 7, 1, "in", 0, 0, 0, 0.0)
    with pytest.raises(ValueError, match="mean path"):
        build_forecast_message(ctx, _result(3), "v1", "exact", now=1.0)
    bad = _result(2)
    bad.quantiles[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        build_forecast_message(ctx, bad, "v1", "exact", now=1.0)


def test_forecast_json_round_trips_every_float_exactly() -> None:
    """The encoded message reads back with the model's float64 values, bit for bit, as plain lists."""
    m = 60 * 10**9
    rng = np.random.default_rng(3)
    result = SeriesForecast("AAA", rng.normal(0, 1e4, (4, 6)), rng.normal(0, 1, (2, 4, 6)),
                            rng.lognormal(0, 20, (3, 4, 6)), (0.1, 0.5, 0.9))
    ctx = ForecastContext("AAA", to_ns(TS), m, horizon_ns(to_ns(TS), m, 4), 7, 10, "in", 0, 5, 0, 0.0)
    back = json.loads(encode_json(build_forecast_message(ctx, result, "v1", "exact", now=1.0)))
    for j, name in enumerate(("open", "high", "low", "close", "volume", "amount")):
        assert back["mean"][name] == result.mean[:, j].tolist()
        assert back["quantiles"]["p90"][name] == result.quantiles[2, :, j].tolist()
    assert back["timestamps"][0] == "2024-06-18T03:16:00Z" and back["interval_s"] == 60.0
