"""Online scores after a replay through the real Kafka broker and Redis server: /metrics, Redis, the CLI."""

from __future__ import annotations

import asyncio
import time

import pytest

from daemon.cli.main import main as cli_main
from daemon.scoring.store_redis import RedisScoreStore
from kronos_core.stream_types import StreamForecaster
from tests.support.launcher import (
    Topics,
    bar_series,
    daemon_settings,
    forecasts,
    interleave,
    produce,
    read_topic,
    running_daemon,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(120)]


async def _get(port: int, path: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    return raw.partition(b"\r\n\r\n")[2].decode()


async def test_scores_appear_in_metrics_and_redis_after_a_replay(
    kafka_bootstrap: str,
    redis_url: str,
    key_prefix: str,
    group_id: str,
    topics: Topics,
    forecaster: StreamForecaster,
    capsys: pytest.CaptureFixture[str],
) -> None:
    symbols = ["600977.SH", "AAPL"]
    await produce(
        kafka_bootstrap, topics.input, interleave(*(bar_series(s, 30, seed=i) for i, s in enumerate(symbols)))
    )
    settings = daemon_settings(
        kafka_bootstrap, redis_url, key_prefix, group_id, topics, http_host="127.0.0.1", http_port=0
    )
    horizon = settings.model.horizon
    version = forecaster.model_version
    async with running_daemon(settings, forecaster) as d:
        published = forecasts(await read_topic(kafka_bootstrap, topics.output, 60))  # schema-validated
        assert len(published) == 60
        assert d.ops is not None
        text = ""
        for _ in range(50):  # the last round's scores land right after its forecasts are published
            text = await _get(d.ops.port, "/metrics")
            if f'kronos_scored_forecasts_total{{model_version="{version}"}} {2.0 * (30 - horizon)}' in text:
                break
            await asyncio.sleep(0.1)
    assert f'kronos_scored_forecasts_total{{model_version="{version}"}} {2.0 * (30 - horizon)}' in text
    assert (
        f'kronos_score_steps_total{{model_version="{version}",step="{horizon}"}} {2.0 * (30 - horizon)}'
        in text
    )
    assert "kronos_score_crps_total{" in text and 'kronos_score_skill{metric="mae"' in text
    assert "symbol=" not in text

    store = RedisScoreStore.from_url(redis_url, settings.redis.key_prefix, 24)
    try:
        sums = await store.read(None, 2, time.time())
        pending = await store.pending(symbols)
    finally:
        await store.close()
    assert set(sums) == {version, version + "@model"}  # the guarded bands, and the model's own
    report = sums[version].report()
    assert report.count == 2 * (30 - horizon) and report.all_finite
    assert report.mae is not None and report.crps is not None and report.coverage is not None
    assert all(len(pending[s]) == horizon for s in symbols)

    code = await asyncio.to_thread(
        cli_main, ["scores", "--redis-url", redis_url, "--prefix", settings.redis.key_prefix, "--hours", "2"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert f"model {version}: {2 * (30 - horizon)} forecasts scored" in out and "persistence" in out


@pytest.mark.redis
async def test_the_score_store_works_on_a_redis_cluster(redis_cluster_url: str, key_prefix: str) -> None:
    import numpy as np

    from kronos_core.evaluation.publisher import POOLED
    from kronos_core.scoring import ScoreAccumulator

    prefix = key_prefix.rstrip(":")
    store = RedisScoreStore.from_url(redis_cluster_url, prefix, 24, cluster=True)
    acc = ScoreAccumulator(2).add(np.array([1.0, 2.0]), 1.0, paths=np.ones((3, 2)))
    symbols = [f"S{i:02d}" for i in range(20)]  # spread over the masters' slots
    try:
        now = time.time()
        for i in range(3):
            states = {("v1", s): {"count": i, "symbol": s} for s in [*symbols, POOLED]}  # the publisher's states
            await store.commit(
                {s: (0, f"{s}-{i}".encode()) for s in symbols}, {"v1": acc, "v2": acc}, cap=2, now=now,
                calibration=states,
            )  # fmt: skip
        pending = await store.pending(symbols)
        sums = await store.read(None, 1, now)
        calibration = await store.calibration([("v1", s) for s in [*symbols, POOLED, "absent"]])
    finally:
        keys = [k async for k in store._client.scan_iter(match=f"{prefix}:*")]
        for k in keys:
            await store._client.delete(k)
        await store.close()
    assert all(pending[s] == [f"{s}-1".encode(), f"{s}-2".encode()] for s in symbols)
    assert set(sums) == {"v1", "v2"} and sums["v1"].forecasts == 3 and sums["v2"].n.tolist() == [3.0, 3.0]
    assert set(calibration) == {("v1", s) for s in [*symbols, POOLED]} and all(v["count"] == 2 for v in calibration.values())
