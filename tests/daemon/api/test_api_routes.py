"""The API's routes against a running daemon (real Kafka, Redis and model): what they answer, and
that it is what the CLI and the topic say."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from uuid import UUID

import httpx
import pytest
import redis.asyncio as aioredis

from daemon.api.openapi import SCHEMA_FILE
from daemon.cli.main import main
from daemon.io.memory import MemoryBroker, MemoryInput, MemoryOutput
from daemon.state.redis import RedisStateStore
from daemon.state.redis_stream import stream_key
from kronos_contract.api_client import ApiClient, ApiError
from tests.support.api import BARS, SYMBOLS, ApiDaemon
from tests.support.launcher import bar_series, forecasts, produce, read_topic, running_daemon, wait_until
from tests.support.stub_forecaster import StubForecaster

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(120)]


async def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    capsys.readouterr()
    assert await asyncio.to_thread(main, list(args)) == 0
    return json.loads(capsys.readouterr().out)


async def test_latest_forecasts_are_what_the_cli_reads(
    api_daemon: ApiDaemon, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = api_daemon.settings.redis.key_prefix
    async with httpx.AsyncClient(base_url=api_daemon.url, headers=api_daemon.headers) as http:
        for symbol in SYMBOLS:
            answer = await http.get(f"/v1/forecasts/{symbol}")
            assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
            assert answer.json() == await _cli(capsys, "forecast", symbol, "--redis-url", redis_url, "--prefix", prefix)

        several = await http.get("/v1/forecasts", params={"symbols": f"{SYMBOLS[0]},NOPE,{SYMBOLS[1]}"})
        assert several.status_code == 200
        body = several.json()
        assert sorted(body["forecasts"]) == sorted(SYMBOLS) and body["missing"] == ["NOPE"]

        unknown = await http.get("/v1/forecasts/NOPE")
        assert unknown.status_code == 404 and "no forecast for 'NOPE'" in unknown.json()["message"]
        for params, wanted in (
            ({"symbols": ""}, "name at least one symbol"),
            ({"symbols": ",".join(f"S{i}" for i in range(201))}, "at most 200 (KRONOS_API__MAX_SYMBOLS)"),
            ({}, "symbols"),
        ):
            bad = await http.get("/v1/forecasts", params=params)
            assert bad.status_code == 400 and wanted in bad.json()["message"], bad.text
        assert (await http.get("/v1/nothing-here")).json()["message"].startswith("no such route")
        served = (await http.get("/openapi.json")).json()
        assert served == json.loads(SCHEMA_FILE.read_text()), "the served schema is the checked-in one"

    async with ApiClient(api_daemon.url, api_daemon.key) as api:
        latest = await api.latest(SYMBOLS[0])
        assert latest is not None and latest.symbol == SYMBOLS[0] and latest.horizon == 4
        assert await api.latest("NOPE") is None
        both = await api.latest_many([*SYMBOLS, "NOPE"])
        assert set(both.forecasts) == set(SYMBOLS) and both.missing == ["NOPE"]
        assert both.forecasts[SYMBOLS[0]].id == latest.id
        with pytest.raises(ApiError) as bad:
            await api.latest_many([])
        assert bad.value.status == 400 and "symbol" in bad.value.message
        assert set(SYMBOLS) <= set(await api.symbols())
        bars = await api.bars(SYMBOLS[0], count=3)
        assert bars["symbol"] == SYMBOLS[0] and 1 <= len(bars["bars"]) <= 3, bars
        with pytest.raises(ApiError) as missing:
            await api.bars("NOPE")
        assert missing.value.status == 404 and "NOPE" in missing.value.message
        events = await api.events()
        assert "swaps" in events and "dead_letters" in events, events


async def _events(response: httpx.Response, wanted: int) -> list[tuple[str, dict[str, Any]]]:
    """The first ``wanted`` forecast events of an open SSE response: (id, forecast)."""
    out: list[tuple[str, dict[str, Any]]] = []
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if fields.get("event") == "forecast":
                out.append((fields["id"], json.loads(fields["data"])))
                if len(out) == wanted:
                    return out
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value
    raise AssertionError(f"the stream ended after {len(out)} events")


async def test_stream_sends_new_forecasts_and_resumes_after_the_last_id_on_any_replica(
    api_daemon: ApiDaemon, kafka_bootstrap: str, redis_url: str
) -> None:
    topics, symbol = api_daemon.settings.kafka, SYMBOLS[0]
    new_bars = {s: bar_series(s, 15)[12:] for s in SYMBOLS}  # 3 more bars each
    async with httpx.AsyncClient(base_url=api_daemon.url, headers=api_daemon.headers, timeout=30) as http:
        async with http.stream("GET", "/v1/stream", params={"symbols": symbol}) as live:
            assert live.status_code == 200 and live.headers["content-type"].startswith("text/event-stream")
            await produce(kafka_bootstrap, topics.input_topic, new_bars[SYMBOLS[1]] + new_bars[symbol])
            events = await asyncio.wait_for(_events(live, 3), 60)
        published = forecasts(await read_topic(kafka_bootstrap, topics.output_topic, 30))
        wanted = [f for f in published if f["symbol"] == symbol][-3:]
        assert [f for _, f in events] == wanted, "the symbol's new forecasts, in order, as on the topic"

        # a client that saw only the first event resumes after it: it gets the two it missed
        headers = {"Last-Event-ID": events[0][0]}
        async with http.stream("GET", "/v1/stream", params={"symbols": symbol}, headers=headers) as resumed:
            again = await asyncio.wait_for(_events(resumed, 2), 30)
        assert again == events[1:]

        bad = await http.get("/v1/stream", headers={"Last-Event-ID": "yesterday"})
        assert bad.status_code == 400 and "Last-Event-ID" in bad.json()["message"]

    # another replica (its own process state, the same Redis): the typed client resumes there
    other = api_daemon.settings.model_copy(update={"api": api_daemon.settings.api.model_copy(update={"auth": "none"})})
    store = RedisStateStore.from_url(redis_url, api_daemon.settings.redis.key_prefix, 64)
    broker = MemoryBroker()
    parts = {"bus_in": MemoryInput(broker, topics.input_topic, "other"), "bus_out": MemoryOutput(broker), "store": store}
    async with running_daemon(other, StubForecaster(max_context=64), **parts) as replica:
        assert replica.api is not None
        async with ApiClient(f"http://127.0.0.1:{replica.api.port}") as api:
            seen = []
            async for event in api.stream([symbol], last_event_id=events[0][0]):
                seen.append((event.id, event.forecast.id))
                if len(seen) == 2:
                    break
    assert seen == [(i, UUID(f["id"])) for i, f in events[1:]]


async def test_models_and_scores_are_what_the_cli_shows(
    api_daemon: ApiDaemon, redis_url: str, model_version: str, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = api_daemon.settings.redis.key_prefix
    async with ApiClient(api_daemon.url, api_daemon.key) as api:
        models = await api.models()
        assert models["serving"] == models["champion"] == model_version and models["registry"] is None
        assert models["challengers"] == [] and [v["version"] for v in models["versions"]] == [model_version]

        async def scored() -> bool:
            return bool((await api.scores())["versions"])

        await wait_until(scored, 30, "scores")
        scores = await api.scores(hours=24)
        cli = await _cli(capsys, "scores", "--json", "--redis-url", redis_url, "--prefix", prefix)
        assert scores == {"hours": 24, "versions": cli}
        assert scores["versions"][model_version]["count"] > 0
        only = await api.scores(version="no-such-version")
        assert only == {"hours": 24, "versions": {}}
        with pytest.raises(ApiError) as bad:
            await api.scores(hours=0)
        assert bad.value.status == 400 and "hours" in bad.value.message


async def test_operations_endpoints_stay_on_their_own_port_without_keys(api_daemon: ApiDaemon) -> None:
    assert api_daemon.daemon.ops is not None
    ops = f"http://127.0.0.1:{api_daemon.daemon.ops.port}"
    async with httpx.AsyncClient(base_url=ops) as http:
        assert (await http.get("/healthz")).status_code == 200
        await wait_until(lambda: _ready(http), 30, "ready")
        elsewhere = await http.get("/v1/forecasts/AAA.SH")
        assert elsewhere.status_code == 404, "the API is not on the ops port"
        assert elsewhere.json()["message"].startswith("try /healthz, /readyz or /metrics")
        assert (await http.head("/healthz")).status_code == 200
        assert (await http.post("/healthz")).status_code == 405
    async with httpx.AsyncClient(base_url=api_daemon.url) as http:
        assert (await http.get("/healthz")).status_code == 404, "nor the probes on the API's"
        assert (await http.get("/v1/forecasts/AAA.SH", headers=api_daemon.headers)).status_code == 200
        assert (await http.get("/v1/forecasts/AAA.SH")).status_code == 401
    registry = api_daemon.daemon.metrics.registry
    for route, status, at_least in (("/v1/forecasts/{symbol}", "200", 1), ("/v1/forecasts/{symbol}", "401", 1),
                                    ("unmatched", "404", 1)):  # fmt: skip
        count = registry.get_sample_value("kronos_api_requests_total", {"route": route, "status": status})
        assert count is not None and count >= at_least, (route, status)
    async with httpx.AsyncClient(base_url=ops) as http:
        assert "kronos_api_streams 0.0" in (await http.get("/metrics")).text


async def _ready(http: httpx.AsyncClient) -> bool:
    return (await http.get("/readyz")).status_code == 200


async def test_a_resume_id_older_than_the_stream_gets_a_gap_event(api_daemon: ApiDaemon, redis_url: str) -> None:
    key = stream_key(api_daemon.settings.redis.key_prefix)
    client = aioredis.Redis.from_url(redis_url)
    try:
        ids = [i.decode() for i, _ in await client.xrange(key)]
        assert len(ids) == 2 * BARS, "one entry per forecast made"
        await client.xtrim(key, maxlen=2, approximate=False)  # as MAXLEN ~ does, in blocks, when full
    finally:
        await client.aclose()
    lines: list[str] = []
    async with (
        httpx.AsyncClient(base_url=api_daemon.url, headers=api_daemon.headers, timeout=30) as http,
        http.stream("GET", "/v1/stream", headers={"Last-Event-ID": ids[0]}) as resumed,
    ):
        async for line in resumed.aiter_lines():
            lines.append(line)
            if sum(1 for x in lines if x.startswith("id: ")) == 2:
                break
    assert "event: gap" in lines and lines.index("event: gap") < lines.index(f"id: {ids[-2]}")
    gap = json.loads(lines[lines.index("event: gap") + 1].removeprefix("data: "))
    assert f"forecasts after {ids[0]} were trimmed" in gap["message"]
    assert [x.removeprefix("id: ") for x in lines if x.startswith("id: ")] == ids[-2:]
