"""POST /v1/forecast against a running daemon with real Kafka and Redis (and the real model unless
DAEMON_TEST_FORECASTER=stub): JSON and CSV answered with the topic's message shape, every limit's 4xx,
a full queue's 429, the stream flowing meanwhile, and calibration state left as it was."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema
import redis.asyncio as redis

from daemon.app import Daemon
from kronos_contract.api_client import ApiClient, ApiError
from kronos_contract.messages import SCHEMA_PATH
from kronos_core.stream_types import StreamForecaster
from tests.support.launcher import (
    Topics,
    bar_series,
    daemon_settings,
    expected_ids,
    forecasts,
    interleave,
    metric,
    produce,
    read_topic,
    running_daemon,
)

VALIDATOR = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
LIMITS = {"port": 0, "host": "127.0.0.1", "auth": "none", "rate_per_s": 1e6, "burst": 100_000, "max_payload_bytes": 8192, "max_history_bars": 40, "max_horizon": 8, "max_samples": 8,
          "max_quantile_levels": 3}  # fmt: skip


@contextlib.asynccontextmanager
async def api_client(daemon: Daemon) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the daemon's own API listener (uvicorn, KRONOS_API__PORT)."""
    assert daemon.api is not None
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{daemon.api.port}", timeout=60) as client:
        yield client


def bars_json(symbol: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    out = []
    for _, value in bar_series(symbol, n, seed=seed):
        bar = json.loads(value)
        bar.pop("symbol")
        out.append(bar)
    return out


def bars_csv(bars: list[dict[str, Any]]) -> str:
    cols = ("ts", "open", "high", "low", "close", "volume", "amount")
    return "\n".join([",".join(cols)] + [",".join(str(b[c]) for c in cols) for b in bars]) + "\n"


async def test_json_and_csv_requests_are_answered_with_the_topics_message_shape(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, group_id: str, topics: Topics,
    forecaster: StreamForecaster, model_version: str,
) -> None:  # fmt: skip
    settings = daemon_settings(kafka_bootstrap, redis_url, key_prefix, group_id, topics, api=LIMITS)
    await produce(kafka_bootstrap, topics.input, bar_series("STREAM", 6))
    async with running_daemon(settings, forecaster) as daemon, api_client(daemon) as client:
        streamed = forecasts(await read_topic(kafka_bootstrap, topics.output, 6))
        bars = bars_json("ASKED", 30)
        as_json = await client.post("/v1/forecast", json={"symbol": "ASKED", "bars": bars})
        as_csv = await client.post(
            "/v1/forecast?symbol=ASKED", content=bars_csv(bars), headers={"content-type": "text/csv"}
        )
        custom = await client.post(
            "/v1/forecast",
            json={"symbol": "ASKED", "bars": bars, "horizon": 6, "samples": 8, "quantile_levels": [0.05, 0.95]},
        )
        assert daemon.api is not None
        async with ApiClient(f"http://127.0.0.1:{daemon.api.port}") as api:  # the typed client, JSON and CSV
            typed = await api.forecast("ASKED", bars)
            typed_csv = await api.forecast("ASKED", bars_csv(bars), horizon=6, samples=8, quantile_levels=[0.05, 0.95])
            try:
                await api.forecast("ASKED", bars, horizon=9)
                refused: ApiError | None = None
            except ApiError as exc:
                refused = exc
    for response in (as_json, as_csv, custom):
        assert response.status_code == 200, response.text
        VALIDATOR.validate(response.json())
    one, two = as_json.json(), as_csv.json()
    topic_fields = set(streamed[0]) - {"guard", "model_quantiles", "model_mean", "model_paths"}
    assert topic_fields <= set(one), topic_fields - set(one)
    assert one["symbol"] == "ASKED" and one["model_version"] == model_version and one["mode"] == "exact"
    assert one["horizon"] == settings.model.horizon and one["context_bars"] == 30
    assert one["as_of"] == bars[-1]["ts"] and one["source"]["topic"] == "api"
    assert set(one["probabilities"]) == {"p_up", "expected_return", "return_quantiles"}
    assert one["id"] == two["id"] and one["mean"] == two["mean"]  # the same history, the same forecast
    assert one["id"] not in {f["id"] for f in streamed}
    assert str(typed.id) == one["id"] and str(typed_csv.id) == custom.json()["id"]
    assert refused is not None and refused.status == 400 and "KRONOS_API__MAX_HORIZON" in refused.message
    c = custom.json()
    assert (c["horizon"], c["sample_count"], c["quantile_levels"]) == (6, 8, [0.05, 0.95])
    assert set(c["quantiles"]) == {"p5", "p95"} and len(c["timestamps"]) == 6


async def test_each_limit_answers_a_4xx_naming_its_setting(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, group_id: str, topics: Topics,
    forecaster: StreamForecaster,
) -> None:  # fmt: skip
    settings = daemon_settings(kafka_bootstrap, redis_url, key_prefix, group_id, topics, api=LIMITS)
    ok = bars_json("L", 20)
    async with running_daemon(settings, forecaster) as daemon, api_client(daemon) as client:

        async def post(body: dict[str, Any]) -> httpx.Response:
            return await client.post("/v1/forecast", json={"symbol": "L", "bars": ok, **body})

        big = json.dumps({"symbol": "L", "bars": bars_json("L", 80)}).encode()
        assert len(big) > 8192
        cases = {
            "KRONOS_API__MAX_PAYLOAD_BYTES": (
                413, await client.post("/v1/forecast", content=big, headers={"content-type": "application/json"})
            ),
            "KRONOS_API__MAX_HISTORY_BARS": (400, await post({"bars": bars_json("L", 41)})),
            "KRONOS_API__MAX_HORIZON": (400, await post({"horizon": 9})),
            "KRONOS_API__MAX_SAMPLES": (400, await post({"samples": 9})),
            "KRONOS_API__MAX_QUANTILE_LEVELS": (400, await post({"quantile_levels": [0.1, 0.3, 0.7, 0.9]})),
        }
        malformed = await client.post("/v1/forecast", content=b"{not json", headers={"content-type": "application/json"})
        bad_bar = await post({"bars": [{**ok[0], "low": ok[0]["high"] * 2}]})
        no_header = await client.post("/v1/forecast?symbol=L", content=b"1,2,3\n", headers={"content-type": "text/csv"})
        unordered = await post({"bars": ok[::-1]})
        assert (await post({})).status_code == 200  # the same request within the limits
    for setting, (status, response) in cases.items():
        assert response.status_code == status, (setting, response.text)
        assert setting in response.json()["message"], response.text
    assert malformed.status_code == 400 and "not valid JSON" in malformed.json()["message"]
    assert bad_bar.status_code == 400 and "inconsistent OHLC" in bad_bar.json()["message"]
    assert no_header.status_code == 400 and "header" in no_header.json()["message"]
    assert unordered.status_code == 400 and "increasing time order" in unordered.json()["message"]


async def test_a_full_queue_answers_429_with_retry_after(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, group_id: str, topics: Topics,
    forecaster: StreamForecaster,
) -> None:  # fmt: skip
    api = {**LIMITS, "ondemand_queue": 1, "ondemand_batch": 1}
    settings = daemon_settings(kafka_bootstrap, redis_url, key_prefix, group_id, topics, api=api)
    async with running_daemon(settings, forecaster) as daemon, api_client(daemon) as client:
        responses = await asyncio.gather(*(
            client.post("/v1/forecast", json={"symbol": f"Q{i}", "bars": bars_json(f"Q{i}", 30)}) for i in range(12)
        ))  # fmt: skip
        counted = {o: metric(daemon, "kronos_ondemand_requests_total", outcome=o) for o in ("ok", "queue_full")}
    statuses = [r.status_code for r in responses]
    assert 429 in statuses and 200 in statuses and set(statuses) <= {200, 429}, statuses
    full = next(r for r in responses if r.status_code == 429)
    assert int(full.headers["Retry-After"]) >= 1
    assert "KRONOS_API__ONDEMAND_QUEUE=1" in full.json()["message"]
    assert counted == {"ok": statuses.count(200), "queue_full": statuses.count(429)}


async def _calibration_keys(url: str, prefix: str) -> dict[str, bytes | None]:
    client = redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(f"{prefix}:calibration*")]
        keys += [k async for k in client.scan_iter(f"{prefix}:scoring:pending:*")]
        keys += [k async for k in client.scan_iter(f"{prefix}:scores:*")]
        return {k.decode(): await client.dump(k) for k in sorted(keys)}
    finally:
        await client.aclose()


async def test_the_stream_flows_meanwhile_and_calibration_is_only_read(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, group_id: str, topics: Topics,
    forecaster: StreamForecaster, model_version: str,
) -> None:  # fmt: skip
    """Every streamed bar gets exactly one forecast while on-demand requests run; then on-demand
    forecasts of the model's horizon carry the symbol's or the pooled calibrated bands, and leave the
    calibration states and scores in Redis as they were."""
    series = {f"F{i}": bar_series(f"F{i}", 24, seed=i) for i in range(3)}
    settings = daemon_settings(
        kafka_bootstrap, redis_url, key_prefix, group_id, topics, api=LIMITS,
        scoring={"calibration_min": 5}, batch={"max_batch_size": 8, "max_wait_ms": 20},
    )  # fmt: skip
    total = sum(map(len, series.values()))
    async with running_daemon(settings, forecaster) as daemon, api_client(daemon) as client:
        stop = asyncio.Event()

        async def ask_repeatedly() -> list[int]:
            codes = []
            while not stop.is_set():
                r = await client.post("/v1/forecast", json={"symbol": "ASK", "bars": bars_json("ASK", 30)})
                codes.append(r.status_code)
            return codes

        askers = [asyncio.create_task(ask_repeatedly()) for _ in range(4)]
        await produce(kafka_bootstrap, topics.input, interleave(*series.values()))
        records = await read_topic(kafka_bootstrap, topics.output, total, timeout_s=120)
        stop.set()
        codes = [c for task in askers for c in await task]
        await asyncio.sleep(1.0)  # the last round's scoring is written
        before = await _calibration_keys(redis_url, settings.redis.key_prefix)
        held_before = daemon.scorer.calibrator.publisher.export() if daemon.scorer and daemon.scorer.calibrator else {}
        streamed_symbol = await client.post("/v1/forecast", json={"symbol": "F0", "bars": bars_json("F0", 24, seed=0)})
        new_symbol = await client.post("/v1/forecast", json={"symbol": "NEW", "bars": bars_json("NEW", 24)})
        other_horizon = await client.post("/v1/forecast", json={"symbol": "F0", "bars": bars_json("F0", 24), "horizon": 6})
        after = await _calibration_keys(redis_url, settings.redis.key_prefix)
        held_after = daemon.scorer.calibrator.publisher.export() if daemon.scorer and daemon.scorer.calibrator else {}
    out = forecasts(records)
    assert sorted(f["id"] for f in out) == sorted(expected_ids(series, model_version))  # exactly one each
    assert codes and set(codes) == {200}, codes
    assert before and before == after and held_before == held_after  # nothing learnt, scored or written
    one, two, three = streamed_symbol.json(), new_symbol.json(), other_horizon.json()
    assert (one["bands"], one["guard"]["scope"]) == ("guarded", "symbol"), one.get("guard")
    assert (two["bands"], two["guard"]["scope"]) == ("guarded", "pooled"), two.get("guard")
    assert three["bands"] == "model" and "guard" not in three and "p_up" in three["probabilities"]
    for message in (one, two, three):
        VALIDATOR.validate(message)
