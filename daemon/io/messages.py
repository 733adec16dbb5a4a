"""Message schemas: the input bar (validated with pydantic) and the output forecast (built as JSON).

Input, topic ``KRONOS_KAFKA__INPUT_TOPIC``, key = symbol (UTF-8), value = JSON::

    {"symbol": "600977.SH", "ts": "2024-06-18T03:15:00Z",
     "open": 11.27, "high": 11.28, "low": 11.26, "close": 11.27, "volume": 379.0, "amount": 427161.0}

``ts`` is an ISO-8601 string with a UTC offset (naive times are rejected) and is converted to UTC.
Prices are finite and positive with ``low <= min(open, close) <= max(open, close) <= high``; volume
and amount are finite and non-negative. ``amount`` may be left out: it is then filled as
``volume * mean(open, high, low, close)``, the upstream Kronos rule. Numbers must be JSON numbers
(``"1.5"`` is rejected); unknown fields are ignored. The message key must be the symbol: partitioning
by symbol is what keeps each symbol's bars in order on one consumer.

Output, topic ``KRONOS_KAFKA__OUTPUT_TOPIC``, key = symbol, value = JSON::

    {"id": "<uuid5 of symbol, bar ts, model version>", "symbol": ..., "as_of": "<bar ts, UTC>",
     "interval_s": 300.0, "horizon": 12, "timestamps": ["<as_of + k * interval>", ...],
     "features": ["open", "high", "low", "close", "volume", "amount"],
     "mean": {"close": [...H], ...every feature},
     "quantiles": {"p10": {"close": [...H], ...}, "p50": {...}, "p90": {...}},
     "quantile_levels": [0.1, 0.5, 0.9], "sample_count": 8,
     "model_version": ..., "mode": "exact" | "incremental", "seed": ..., "context_bars": L,
     "context_complete": true,
     "latency_ms": {"queue": ..., "model": ..., "end_to_end": ..., "from_bar": ...},
     "source": {"topic": ..., "partition": ..., "offset": ...}, "created_at": ...}

``id``, the paths and ``seed`` depend only on the bar, its history and the model, so a bar processed
twice (at-least-once delivery) yields the same ``id`` and numbers: readers de-duplicate on ``id``.
``context_complete`` is false when the symbol's state was lost and could only be restored in part (the
input topic no longer held the older bars): the id then also names the context (its length and first
bar), so it differs from the id of any forecast made from another context.
Latencies: ``queue`` = fetched until the model call began, ``model`` = the batched model call,
``end_to_end`` = Kafka timestamp of the input message until the forecast is handed to the producer,
``from_bar`` = bar ``ts`` until then. Horizon timestamps continue the bar grid (24/7), or follow the exchange calendar
``KRONOS_MODEL__EXCHANGE_CALENDAR`` names (:mod:`daemon.pipeline.calendars`).
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from daemon.errors import InvalidBar
from kronos_core.stream_types import FEATURES, SeriesForecast

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Bars are held as epoch nanoseconds in int64 (numpy datetime64[ns]): 1677-09-21 to 2262-04-11. The
# bounds keep a year of margin so that the horizon's timestamps stay representable too.
TS_MIN = datetime(1678, 1, 1, tzinfo=UTC)
TS_MAX = datetime(2261, 1, 1, tzinfo=UTC)
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/kronos-stream/forecast")
_INTERVAL_LOOKBACK = 8  # bars used to infer the bar interval


class BarFields(BaseModel):
    """A bar's time and features, validated strictly (JSON numbers only, aware timestamps)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    ts: AwareDatetime
    open: float = Field(gt=0, allow_inf_nan=False)
    high: float = Field(gt=0, allow_inf_nan=False)
    low: float = Field(gt=0, allow_inf_nan=False)
    close: float = Field(gt=0, allow_inf_nan=False)
    volume: float = Field(ge=0, allow_inf_nan=False)
    amount: float | None = Field(default=None, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ohlc_consistent(self) -> BarFields:
        lo, hi = min(self.open, self.close), max(self.open, self.close)
        if not (self.low <= lo and hi <= self.high):
            raise ValueError(
                f"inconsistent OHLC: need low <= min(open, close) <= max(open, close) <= high, got "
                f"open={self.open} high={self.high} low={self.low} close={self.close}"
            )
        return self

    def features(self) -> tuple[float, ...]:
        """open, high, low, close, volume, amount (a missing amount filled by the upstream rule)."""
        amount = self.amount
        if amount is None:
            amount = self.volume * (self.open + self.high + self.low + self.close) / 4.0
        return (self.open, self.high, self.low, self.close, self.volume, amount)


class BarIn(BarFields):
    """The wire form of a bar on the input topic: a symbol and :class:`BarFields`."""

    symbol: str = Field(min_length=1, max_length=64, pattern=r"^\S+$")


class Bar:
    """A validated bar on the hot path: symbol, UTC time in epoch nanoseconds, the six features."""

    __slots__ = ("symbol", "ts_ns", "values")

    def __init__(self, symbol: str, ts_ns: int, values: tuple[float, ...]) -> None:
        self.symbol = symbol
        self.ts_ns = ts_ns
        self.values = values  # open, high, low, close, volume, amount

    def __repr__(self) -> str:
        return f"Bar({self.symbol!r}, {format_ts(self.ts_ns)}, {self.values})"


def to_ns(ts: datetime) -> int:
    """Epoch nanoseconds of an aware datetime, computed exactly (no float rounding)."""
    return (ts - _EPOCH) // timedelta(microseconds=1) * 1000


@functools.lru_cache(maxsize=8192)  # a burst's forecasts share their as_of and horizon timestamps
def format_ts(ts_ns: int) -> str:
    """ISO-8601 UTC with a ``Z``, microsecond precision when needed."""
    dt = _EPOCH + timedelta(microseconds=ts_ns // 1000)
    text = dt.isoformat(timespec="microseconds" if dt.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "bar"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def parse_bar(key: bytes | None, value: bytes | None) -> Bar:
    """Validate one input message; raises :class:`InvalidBar` with a reason for the dead-letter topic."""
    if value is None or not value.strip():
        raise InvalidBar("empty message value: expected a JSON bar", "empty")
    try:
        bar = BarIn.model_validate_json(value)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise InvalidBar(f"malformed JSON: {first['msg']}", "json") from exc
        raise InvalidBar(f"schema violation: {_summarise(exc)}") from exc
    if key is None:
        raise InvalidBar(f"message has no key; key each bar by its symbol ({bar.symbol!r})", "key")
    try:
        key_text = key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidBar("message key is not UTF-8; it must be the symbol", "key") from exc
    if key_text != bar.symbol:
        raise InvalidBar(f"message key {key_text!r} differs from symbol {bar.symbol!r}; key by symbol", "key")
    if not TS_MIN <= bar.ts <= TS_MAX:
        raise InvalidBar(
            f"ts {bar.ts.isoformat()} is outside the supported range {TS_MIN.date()} to {TS_MAX.date()} "
            "(bar times are held as epoch nanoseconds)",
            "ts",
        )
    return Bar(bar.symbol, to_ns(bar.ts), bar.features())


def check_bar_time(bar: Bar, broker_ts_ms: int, now_s: float, max_future_s: float | None) -> None:
    """Refuse a bar more than ``max_future_s`` ahead of the message's broker timestamp, or of the wall
    clock ``now_s`` when the message has none (``broker_ts_ms`` <= 0). ``None`` disables the bound.

    One such bar would otherwise become the symbol's last seen bar, and every later valid bar would be
    skipped as out of order: the symbol would fall silent.
    """
    if max_future_s is None:
        return
    if broker_ts_ms > 0:
        ref_ns, what = broker_ts_ms * 1_000_000, "the message's broker timestamp"
    else:
        ref_ns, what = int(now_s * 1e9), "the wall clock"
    ahead_s = (bar.ts_ns - ref_ns) / 1e9
    if ahead_s > max_future_s:
        raise InvalidBar(
            f"ts {format_ts(bar.ts_ns)} is {ahead_s:.0f} s ahead of {what} ({format_ts(ref_ns)}); at most "
            f"{max_future_s:g} s are allowed (KRONOS_MAX_FUTURE_S)",
            "future",
        )


def bar_to_json(symbol: str, ts: datetime, values: Sequence[float]) -> bytes:
    """The wire form of a bar (used by the replay and synth producers)."""
    record: dict[str, Any] = {"symbol": symbol, "ts": ts.astimezone(UTC).isoformat().replace("+00:00", "Z")}
    record.update(zip(FEATURES, (float(v) for v in values), strict=False))
    return json.dumps(record, allow_nan=False).encode()


# -- output --------------------------------------------------------------------------------------


def forecast_id(symbol: str, ts_ns: int, model_version: str, context: str | None = None) -> str:
    """The stable id of the forecast made at bar ``ts_ns``: the same on every replay.

    ``context`` names a context that may be incomplete (restored after a data loss: see
    ``context_complete``); it enters the id, so such a forecast never shares an id with one made
    from a different context.
    """
    name = f"{symbol}|{ts_ns}|{model_version}" + ("" if context is None else f"|context={context}")
    return str(uuid.uuid5(_ID_NAMESPACE, name))


def infer_interval_ns(timestamps_ns: Sequence[int], default_ns: int) -> int:
    """The bar interval: the smallest positive step among the last few bars (a gap does not widen it).

    Without gaps this is the step between the last two bars; with one bar only, ``default_ns``.
    """
    tail = timestamps_ns[-_INTERVAL_LOOKBACK:]
    steps = [b - a for a, b in zip(tail, tail[1:], strict=False) if b > a]
    return min(steps) if steps else default_ns


def horizon_ns(last_ns: int, interval_ns: int, horizon: int) -> list[int]:
    return [last_ns + interval_ns * (k + 1) for k in range(horizon)]


def quantile_key(level: float) -> str:
    """0.1 -> "p10", 0.025 -> "p2.5"."""
    return f"p{level * 100:.6g}"


def _paths(array: np.ndarray) -> dict[str, np.ndarray]:
    """One float64 array per feature (``encode_json`` writes them as JSON lists).  # array: [H, 6]"""
    columns = np.ascontiguousarray(array.T, dtype=np.float64)  # [6, H]
    return {name: columns[j] for j, name in enumerate(FEATURES)}


class ForecastContext:
    """What the loop knows about a forecast besides the model's numbers (plain slots, hot path)."""

    __slots__ = (
        "symbol", "ts_ns", "interval_ns", "future_ns", "seed", "context_bars", "topic", "partition",
        "offset", "kafka_ts_ms", "fetched_at", "model_started_at", "model_ms", "context_complete",
        "context_first_ns", "bands", "distribution",
    )  # fmt: skip

    def __init__(
        self,
        symbol: str,
        ts_ns: int,
        interval_ns: int,
        future_ns: list[int],
        seed: int,
        context_bars: int,
        topic: str,
        partition: int,
        offset: int,
        kafka_ts_ms: int,
        fetched_at: float,
    ) -> None:
        self.symbol = symbol
        self.ts_ns = ts_ns
        self.interval_ns = interval_ns
        self.future_ns = future_ns
        self.seed = seed
        self.context_bars = context_bars
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.kafka_ts_ms = kafka_ts_ms
        self.fetched_at = fetched_at  # wall clock (time.time()) when the fetch returned
        self.model_started_at = fetched_at
        self.model_ms = 0.0
        self.context_complete = True  # False: restored after a data loss, older bars may be missing
        self.context_first_ns = ts_ns  # ts of the window's first bar
        self.bands = "model"  # "guarded" when the close bands are the published distribution's (daemon/scoring/calibration.py)
        self.distribution: dict[str, Any] | None = None  # its guard, probabilities and the model's own close bands


def build_forecast_message(
    ctx: ForecastContext, result: SeriesForecast, model_version: str, mode: str, now: float
) -> dict[str, Any]:
    """The output record for one bar; ``now`` is the wall clock at publication (seconds)."""
    horizon = len(ctx.future_ns)
    if result.mean.shape != (horizon, len(FEATURES)):
        raise ValueError(f"mean path has shape {result.mean.shape}, expected ({horizon}, {len(FEATURES)})")
    levels = tuple(result.quantile_levels)
    if result.quantiles.shape != (len(levels), horizon, len(FEATURES)):
        raise ValueError(
            f"quantiles have shape {result.quantiles.shape}, expected ({len(levels)}, {horizon}, {len(FEATURES)})"
        )
    if not (np.isfinite(result.mean).all() and np.isfinite(result.quantiles).all()):
        raise ValueError("the forecast holds NaN or infinite values")
    context = None if ctx.context_complete else f"{ctx.context_bars}@{ctx.context_first_ns}"
    record = {
        "id": forecast_id(ctx.symbol, ctx.ts_ns, model_version, context),
        "symbol": ctx.symbol,
        "as_of": format_ts(ctx.ts_ns),
        "interval_s": ctx.interval_ns / 1e9,
        "horizon": horizon,
        "timestamps": [format_ts(t) for t in ctx.future_ns],
        "features": list(FEATURES),
        "mean": _paths(result.mean),
        "quantiles": {quantile_key(q): _paths(result.quantiles[i]) for i, q in enumerate(levels)},
        "quantile_levels": list(levels),
        "bands": ctx.bands,
        "sample_count": int(result.samples.shape[0]) if result.samples.ndim == 3 else None,
        "model_version": model_version,
        "mode": mode,
        "seed": ctx.seed,
        "context_bars": ctx.context_bars,
        "context_complete": ctx.context_complete,
        "latency_ms": {
            "queue": round(max(0.0, ctx.model_started_at - ctx.fetched_at) * 1e3, 3),
            "model": round(ctx.model_ms, 3),
            "end_to_end": round(max(0.0, now * 1e3 - ctx.kafka_ts_ms), 3),
            "from_bar": round(now * 1e3 - ctx.ts_ns / 1e6, 3),
        },
        "source": {"topic": ctx.topic, "partition": ctx.partition, "offset": ctx.offset},
        "created_at": format_ts(int(now * 1e6) * 1000),
    }
    if ctx.distribution is not None:
        record.update(ctx.distribution)
    return record


def encode_json(record: dict[str, Any]) -> bytes:
    """Strict JSON (no NaN/Infinity tokens), compact; numpy arrays become lists.

    orjson: about 10x faster than the standard library here (the forecast message is ~300 floats).
    It would write a non-finite float as ``null``: every caller checks finiteness first.
    """
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)
