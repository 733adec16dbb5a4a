"""The forecast message contract: the checked-in JSON Schema, the pydantic model, the typed reader."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from daemon.io.memory import MemoryBroker, MemoryInput, MemoryOutput
from daemon.settings import load_settings
from daemon.state.memory import MemoryStateStore
from kronos_contract.messages import (
    SCHEMA_PATH,
    ForecastReader,
    forecast_schema,
    parse_forecast,
    unique_forecasts,
    write_schema,
)
from tests.support.launcher import Topics, bar_series, produce, running_daemon, wait_until
from tests.support.stub_forecaster import StubForecaster

pytestmark = pytest.mark.timeout(60)


def test_the_checked_in_schema_is_current(tmp_path: Path) -> None:
    fresh = tmp_path / "schema.json"
    write_schema(fresh)
    assert fresh.read_text() == SCHEMA_PATH.read_text(), "run: python -m kronos_contract.messages"
    jsonschema.Draft202012Validator.check_schema(forecast_schema())


async def _published(n: int = 6, **model: object) -> list[bytes]:
    settings = load_settings(
        kafka={"input_topic": "in", "output_topic": "out", "dead_letter_topic": "dlq", "group_id": "g"},
        model={"max_context": 16, "horizon": 3, **model},
        batch={"max_wait_ms": 10},
        http_port=None,
    )
    broker = MemoryBroker(default_partitions=1)
    for key, value in bar_series("A", n):
        broker.append("in", key, value)
    parts = {
        "bus_in": MemoryInput(broker, "in", "g"),
        "bus_out": MemoryOutput(broker),
        "store": MemoryStateStore(),
    }
    async with running_daemon(settings, StubForecaster(max_context=16), **parts):
        await wait_until(lambda: len(broker.messages("out")) == n, 10, f"{n} forecasts")
    return [m.value or b"" for m in broker.messages("out")]


async def test_published_forecasts_match_the_schema_and_the_model() -> None:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    for value in await _published(exchange_calendar="XSHG"):
        validator.validate(json.loads(value))
        message = parse_forecast(value)
        assert message.symbol == "A" and len(message.timestamps) == message.horizon == 3
        lo, hi = message.band("close")
        assert all(a <= b for a, b in zip(lo, hi, strict=True))


async def test_a_broken_message_is_refused() -> None:
    record = json.loads((await _published(1))[0])
    record["timestamps"] = record["timestamps"][:-1]
    with pytest.raises(ValidationError, match="timestamps for horizon"):
        parse_forecast(json.dumps(record))
    record = json.loads((await _published(1))[0])
    del record["quantiles"]["p90"]
    with pytest.raises(ValidationError, match="do not match levels"):
        parse_forecast(json.dumps(record))
    record = json.loads((await _published(1))[0])
    record["new_field"] = 1  # readers keep working when a field is added
    assert (parse_forecast(json.dumps(record)).model_extra or {}).get("new_field") == 1


async def test_unique_forecasts_drops_replayed_ids() -> None:
    values = await _published(4)
    got = unique_forecasts([values[0], values[1], values[0], values[2], values[1], values[3]])
    assert [str(m.id) for m in got] == [json.loads(v)["id"] for v in values]


@pytest.mark.kafka
async def test_the_reader_consumes_parses_and_deduplicates(
    kafka_bootstrap: str, topics: Topics, group_id: str
) -> None:
    values = await _published(3)
    records = [(b"A", v) for v in (values[0], values[1], values[0], values[2], values[2])]  # a replay
    await produce(kafka_bootstrap, topics.output, records)
    got = []
    async with ForecastReader(kafka_bootstrap, topics.output, group_id) as reader:
        async for message in reader:
            got.append(message)
            if len(got) == 3:
                break
        assert reader.duplicates == 1  # the replayed first forecast, before the third unique one
    assert [str(m.id) for m in got] == [json.loads(v)["id"] for v in values]
    assert all(m.as_of < m.timestamps[0] and m.as_of.tzinfo is not None for m in got)
