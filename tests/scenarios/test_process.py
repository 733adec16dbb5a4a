"""``python -m daemon run`` as a real process: SIGKILL mid-stream loses no bar, SIGTERM shuts down cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from daemon.io.messages import forecast_id, parse_bar
from daemon.state.base import bars_key, forecast_key
from tests.support.launcher import (
    Topics,
    bar_series,
    committed_offsets,
    daemon_settings,
    end_offsets,
    forecasts,
    interleave,
    produce,
    read_topic,
    spawn_daemon,
    stop_daemon,
    wait_committed,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]


async def _published(bootstrap: str, topic: str) -> int:
    return sum((await end_offsets(bootstrap, topic)).values())


async def test_hard_kill_then_restart_loses_no_bar_and_replays_identically(
    kafka_bootstrap: str,
    redis_url: str,
    key_prefix: str,
    group_id: str,
    topics: Topics,
    forecaster_env: dict[str, str],
    model_version: str,
    tmp_path: Path,
) -> None:
    symbols = ["K1", "K2", "K3"]
    series = {s: bar_series(s, 60, seed=3) for s in symbols}
    settings = daemon_settings(
        kafka_bootstrap, redis_url, key_prefix, group_id, topics, batch={"max_batch_size": 6}, http_port=0
    )
    log = tmp_path / "daemon.log"
    await produce(kafka_bootstrap, topics.input, interleave(*series.values()))

    async def in_flight() -> bool:
        # A fetch's first round is published while its second round is in the (slow) model, so
        # there are forecasts whose input offsets are not committed yet: the moment to kill.
        committed = sum((await committed_offsets(kafka_bootstrap, group_id, topics.input)).values())
        return committed > 0 and await _published(kafka_bootstrap, topics.output) > committed

    first = spawn_daemon(settings, forecaster_env, log, delay_ms=400)
    try:
        await wait_until(in_flight, 60, "forecasts published ahead of the committed offsets")
    finally:
        assert await stop_daemon(first, signal.SIGKILL) == -signal.SIGKILL, log.read_text()[-3000:]
    committed_at_kill = await committed_offsets(kafka_bootstrap, group_id, topics.input)
    published_at_kill = await _published(kafka_bootstrap, topics.output)
    assert sum(committed_at_kill.values()) < published_at_kill < 180, "the kill must land mid-batch"

    log2 = tmp_path / "daemon2.log"
    second = spawn_daemon(settings, forecaster_env, log2, delay_ms=0)
    try:
        await wait_committed(kafka_bootstrap, group_id, topics.input, timeout_s=60)
    finally:
        assert await stop_daemon(second, signal.SIGTERM) == 0, log2.read_text()[-3000:]
    lines = [json.loads(line) for line in log2.read_text().splitlines() if line.startswith("{")]
    assert lines[-1]["event"] == "daemon closed"
    skipped = sum(1 for line in lines if line["event"] == "bar skipped" and line["reason"] == "replayed")

    records = await read_topic(kafka_bootstrap, topics.output, 180)
    out = forecasts(records)
    expected = {
        forecast_id(s, parse_bar(k, v).ts_ns, model_version): s for s in symbols for k, v in series[s]
    }
    first_seen: dict[str, dict[str, Any]] = {}
    for record, f in zip(records, out, strict=True):
        previous = first_seen.setdefault(f["id"], f)
        if previous is not f:  # published twice: only an uncommitted bar, and the very same forecast
            assert f["source"]["offset"] >= committed_at_kill.get(f["source"]["partition"], 0)
            assert (f["mean"], f["quantiles"], f["seed"]) == (
                previous["mean"],
                previous["quantiles"],
                previous["seed"],
            )
        assert record.key == f["symbol"].encode()
    assert set(first_seen) == set(expected)  # every bar has its forecast
    # Each bar published but not committed at the kill came back: skipped as replayed when its
    # Redis write had landed, published again (same id, same numbers) when it had not.
    republished = len(out) - len(first_seen)
    assert skipped + republished == published_at_kill - sum(committed_at_kill.values())

    client = aioredis.Redis.from_url(redis_url)
    try:
        prefix = settings.redis.key_prefix
        for s in symbols:
            ring = [json.loads(x)[0] for x in await client.lrange(bars_key(prefix, s), 0, -1)]
            assert ring == [parse_bar(k, v).ts_ns for k, v in series[s]]  # no bar twice, none missing
            latest = json.loads(await client.get(forecast_key(prefix, s)) or b"null")
            assert latest["id"] == forecast_id(s, ring[-1], model_version)
            assert [f["context_bars"] for f in first_seen.values() if f["symbol"] == s] == list(range(1, 61))
    finally:
        await client.aclose()


async def test_bad_configuration_stops_start_up_with_the_variable_named(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRONOS_")}
    env["KRONOS_MODEL__MAX_CONTEXT"] = "lots"
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "daemon", "run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert b"KRONOS_MODEL__MAX_CONTEXT" in proc.stderr


async def test_sigterm_mid_batch_commits_what_is_done_and_exits_cleanly(
    kafka_bootstrap: str,
    redis_url: str,
    key_prefix: str,
    group_id: str,
    topics: Topics,
    forecaster_env: dict[str, str],
    tmp_path: Path,
) -> None:
    records = bar_series("TERM", 60)  # one symbol: a fetch is 60 rounds, one bar each
    settings = daemon_settings(
        kafka_bootstrap, redis_url, key_prefix, group_id, topics, batch={"max_batch_size": 100}, http_port=0
    )
    await produce(kafka_bootstrap, topics.input, records)
    log = tmp_path / "daemon.log"

    first = spawn_daemon(settings, forecaster_env, log, delay_ms=100)
    try:
        await wait_until(lambda: _published(kafka_bootstrap, topics.output), 60, "the first forecasts")
    finally:
        began = asyncio.get_running_loop().time()
        assert await stop_daemon(first, signal.SIGTERM) == 0, log.read_text()[-3000:]
    assert asyncio.get_running_loop().time() - began < settings.graceful_shutdown_s
    published = await _published(kafka_bootstrap, topics.output)
    committed = await committed_offsets(kafka_bootstrap, group_id, topics.input)
    assert sum(committed.values()) == published  # the done prefix was committed on the way out

    second = spawn_daemon(settings, forecaster_env, log, delay_ms=0)
    try:
        await wait_committed(kafka_bootstrap, group_id, topics.input, timeout_s=60)
    finally:
        assert await stop_daemon(second, signal.SIGTERM) == 0, log.read_text()[-3000:]
    out = forecasts(await read_topic(kafka_bootstrap, topics.output, 60))
    assert len(out) == len({f["id"] for f in out}) == 60  # nothing lost, nothing twice
