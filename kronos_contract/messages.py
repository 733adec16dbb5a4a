"""The forecast message on the output topic: a pydantic model, its JSON Schema, and a typed reader.

The daemon publishes one JSON forecast per input bar (key = symbol); ``forecast.schema.json`` beside this
file is the model's JSON Schema (``python -m kronos_contract.messages`` rewrites it; a test checks it is
current). Subscribers parse with :func:`parse_forecast`, or consume with :class:`ForecastReader`, which
de-duplicates by ``id`` (delivery is at-least-once: a replay republishes the same id)::

    async with ForecastReader("broker:9092", "forecasts", group_id="my-app") as reader:
        async for forecast in reader:
            print(forecast.symbol, forecast.as_of, forecast.mean["close"][0], forecast.band("close")[1][0])

Unknown fields are kept (``extra="allow"``), so a reader keeps working when a field is added.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

SCHEMA_PATH = Path(__file__).with_name("forecast.schema.json")
FEATURES = ("open", "high", "low", "close", "volume", "amount")


class Latency(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    queue: float = Field(ge=0, description="fetched until the model call began (ms)")
    model: float = Field(ge=0, description="the batched model call (ms)")
    end_to_end: float = Field(ge=0, description="Kafka timestamp of the input until publication (ms)")
    from_bar: float = Field(description="bar ts until publication (ms)")


class Source(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)


class Guard(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    model_weight: list[float] = Field(description="per step, the model's weight against the walk (0..1)")
    scope: Literal["symbol", "pooled"] = Field(
        description="whose calibration was used: the symbol's own, or all symbols' while it is young"
    )


class Probabilities(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    p_up: list[float] = Field(description="per step, P(close > the last close), calibrated online (Brier)")
    expected_return: list[float] = Field(description="per step, E[close] / last close - 1")
    return_quantiles: dict[str, list[float]] = Field(description='"p10" -> per step, close quantile / last close - 1')


class ForecastMessage(BaseModel):
    """One forecast: made at bar ``as_of`` for the ``horizon`` bars at ``timestamps``."""

    model_config = ConfigDict(
        extra="allow",
        frozen=True,
        title="kronos-stream forecast",
        json_schema_extra={"$id": "https://github.com/kronos-stream/forecast.schema.json"},
    )

    id: UUID = Field(description="uuid5 of (symbol, bar ts, model version): the same on every replay")
    symbol: str = Field(min_length=1)
    as_of: AwareDatetime = Field(description="the bar the forecast was made at (UTC)")
    interval_s: float = Field(gt=0, description="the bar interval inferred from the history (s)")
    horizon: int = Field(ge=1)
    timestamps: list[AwareDatetime] = Field(description="the horizon bars' times (exchange calendar or 24/7)")
    features: list[str]
    mean: dict[str, list[float]] = Field(description="feature -> mean over the sample paths, one per step")
    quantiles: dict[str, dict[str, list[float]]] = Field(
        description='"p10" -> feature -> values, one per step (close bands may be calibrated)'
    )
    quantile_levels: list[float]
    bands: Literal["model", "calibrated", "guarded"] = Field(
        default="model",
        description=(
            "guarded: the close mean and quantiles are the published distribution's (calibrated per symbol, "
            "combined with the rolling-volatility walk); model: as the model sampled them; calibrated: "
            "written only by older releases"
        ),
    )
    guard: Guard | None = Field(
        default=None, description="present exactly when bands=guarded (topic and API): the combination's weights"
    )
    probabilities: Probabilities | None = Field(
        default=None,
        description=(
            "with bands=guarded (topic and API): probabilities of the published close distribution; on-demand "
            "API answers (source.topic api) with bands=model: the model's own, from its sample paths (absent when "
            "the model returned none); absent on the topic with bands=model"
        ),
    )
    model_mean: list[float] | None = Field(
        default=None,
        description="present exactly when bands=guarded (topic and API): the model's own close mean, one per step",
    )
    model_paths: list[list[float]] | None = Field(
        default=None,
        description=(
            "with bands=guarded and KRONOS_SCORING__PUBLISH_PATHS > 0 (topic and API): that many of the model's "
            "close sample paths, one list per path; absent otherwise"
        ),
    )
    model_quantiles: dict[str, list[float]] | None = Field(
        default=None,
        description=(
            'present exactly when bands=guarded (topic and API): the model\'s own close quantiles, "p10" -> one '
            "per step"
        ),
    )
    sample_count: int | None = Field(ge=1)
    model_version: str = Field(min_length=1)
    mode: Literal["exact", "incremental"]
    seed: int = Field(ge=0)
    context_bars: int = Field(ge=1)
    context_complete: bool = Field(
        default=True,
        description="false while a symbol restored after a loss of Redis data has fewer bars than it should",
    )
    latency_ms: Latency
    source: Source
    created_at: AwareDatetime

    @model_validator(mode="after")
    def _shapes(self) -> ForecastMessage:
        h = self.horizon
        if len(self.timestamps) != h:
            raise ValueError(f"{len(self.timestamps)} timestamps for horizon {h}")
        if any(b <= a for a, b in zip([self.as_of, *self.timestamps], self.timestamps, strict=False)):
            raise ValueError("timestamps must increase, after as_of")
        paths = [("mean", self.mean)] + [(f"quantiles.{k}", v) for k, v in self.quantiles.items()]
        for where, block in paths:
            if set(block) != set(self.features):
                raise ValueError(f"{where} has features {sorted(block)}, expected {self.features}")
            for name, values in block.items():
                if len(values) != h:
                    raise ValueError(f"{where}.{name} has {len(values)} values for horizon {h}")
        if sorted(self.quantiles) != sorted(quantile_key(q) for q in self.quantile_levels):
            raise ValueError(f"quantiles {sorted(self.quantiles)} do not match levels {self.quantile_levels}")
        return self

    def band(self, feature: str = "close") -> tuple[list[float], list[float]]:
        """The outermost band (p10 and p90 with the default levels) of ``feature``."""
        levels = self.quantile_levels
        return (
            self.quantiles[quantile_key(levels[0])][feature],
            self.quantiles[quantile_key(levels[-1])][feature],
        )


def quantile_key(level: float) -> str:
    """0.1 -> "p10" (the daemon's naming)."""
    return f"p{level * 100:.6g}"


def parse_forecast(value: bytes | str) -> ForecastMessage:
    """One output-topic message value -> :class:`ForecastMessage` (pydantic.ValidationError if invalid)."""
    return ForecastMessage.model_validate_json(value)


def forecast_schema() -> dict[str, Any]:
    return ForecastMessage.model_json_schema(mode="validation")


def write_schema(path: Path = SCHEMA_PATH) -> None:
    path.write_text(json.dumps(forecast_schema(), indent=2, sort_keys=True) + "\n")


class Deduplicator:
    """Remembers the last ``capacity`` ids: ``seen(id)`` is True for a repeat."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, key: str) -> bool:
        if key in self._ids:
            self._ids.move_to_end(key)
            return True
        self._ids[key] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return False


def unique_forecasts(
    values: Iterable[bytes | str], dedupe: Deduplicator | None = None
) -> list[ForecastMessage]:
    """Parse message values, dropping repeated ids (the synchronous core of :class:`ForecastReader`)."""
    dedupe = dedupe or Deduplicator()
    out = []
    for value in values:
        message = parse_forecast(value)
        if not dedupe.seen(str(message.id)):
            out.append(message)
    return out


class ForecastReader:
    """Consume the output topic as typed, de-duplicated forecasts (aiokafka underneath).

    ``consumer_options`` go to ``aiokafka.AIOKafkaConsumer`` (security settings, ``auto_offset_reset``
    defaults to ``earliest``). Offsets are committed automatically by aiokafka (a reader, not a pipeline).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str = "forecasts",
        group_id: str | None = None,
        *,
        dedupe_capacity: int = 100_000,
        **consumer_options: Any,
    ) -> None:
        self.topic = topic
        self._options = {
            "bootstrap_servers": bootstrap_servers,
            "group_id": group_id,
            "auto_offset_reset": "earliest",
            **consumer_options,
        }
        self._dedupe = Deduplicator(dedupe_capacity)
        self._consumer: Any = None
        self.duplicates = 0

    async def __aenter__(self) -> ForecastReader:
        from aiokafka import AIOKafkaConsumer

        self._consumer = AIOKafkaConsumer(self.topic, **self._options)
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def __aiter__(self) -> AsyncIterator[ForecastMessage]:
        if self._consumer is None:
            raise RuntimeError("use 'async with ForecastReader(...) as reader'")
        async for record in self._consumer:
            if record.value is None:
                continue
            message = parse_forecast(record.value)
            if self._dedupe.seen(str(message.id)):
                self.duplicates += 1
                continue
            yield message


if __name__ == "__main__":
    write_schema()
    print(f"wrote {SCHEMA_PATH}")
