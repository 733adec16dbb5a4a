"""Restarts: a closed member leaves its group at once (fault 7); state lost in Redis is noticed and
restored from the input topic (fault 5)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

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
    spawn_daemon,
    stop_daemon,
    wait_committed,
    wait_until,
)
from tests.support.private_services import PrivateRedis
from tests.support.stub_forecaster import StubForecaster

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(120)]

# Measured figures go to results/tmp/ (ignored by git) unless TEST_RESULTS_DIR names another folder
# (`TEST_RESULTS_DIR=results` refreshes the committed results/reliability/restart.json).
RESULTS = (
    Path(os.environ.get("TEST_RESULTS_DIR") or Path(__file__).resolve().parents[2] / "results" / "tmp")
    / "reliability"
    / "restart.json"
)


async def _members(bootstrap: str, group: str) -> list[str]:
    """Member ids of ``group`` (DescribeGroups: groups[0] = (error, id, state, type, protocol, members))."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (description,) = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    return [str(member[0]) for member in description.groups[0][-1]]


async def test_a_closed_daemon_leaves_its_group_at_once(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, group_id: str, topics: Topics
) -> None:
    await produce(kafka_bootstrap, topics.input, bar_series("G", 3))
    settings = daemon_settings(kafka_bootstrap, redis_url, key_prefix, group_id, topics)
    async with running_daemon(settings, StubForecaster(max_context=64)):
        await read_topic(kafka_bootstrap, topics.output, 3)
        assert len(await _members(kafka_bootstrap, group_id)) == 1
    # Gone from the group now, not after the session timeout: its partitions move to a restarted
    # member at once.
    assert await _members(kafka_bootstrap, group_id) == []


async def test_a_restarted_process_gets_its_partitions_back_without_waiting_out_the_session(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, group_id: str, topics: Topics, tmp_path: Path
) -> None:
    """SIGTERM: the member leaves the group and the process exits promptly (interpreter teardown
    used to take seconds, which a restarted pod waits for); the next process takes over at once.
    Timings go to results/reliability/restart.json (measured, not asserted)."""
    series = bar_series("P", 6)
    await produce(kafka_bootstrap, topics.input, series[:3])
    settings = daemon_settings(kafka_bootstrap, redis_url, key_prefix, group_id, topics)
    env = {"KRONOS_MODEL__FACTORY": "tests.support.stub_forecaster:build"}
    first = spawn_daemon(settings, env, tmp_path / "first.log", 0)
    await read_topic(kafka_bootstrap, topics.output, 3)
    await wait_until(lambda: _logged(tmp_path / "first.log", "daemon started"), 30, "the first daemon")
    sent = time.monotonic()
    assert await stop_daemon(first, signal.SIGTERM) == 0
    exit_s = time.monotonic() - sent
    assert await _members(kafka_bootstrap, group_id) == []  # left the group, no session to wait out
    second = spawn_daemon(settings, env, tmp_path / "second.log", 0)
    try:
        await produce(kafka_bootstrap, topics.input, series[3:])
        await read_topic(kafka_bootstrap, topics.output, 6)
        takeover_s = time.monotonic() - sent
    finally:
        assert await stop_daemon(second, signal.SIGTERM) == 0
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"sigterm_to_exit_s": round(exit_s, 3), "sigterm_to_next_process_output_s": round(takeover_s, 3),
             "session_timeout_s": settings.kafka.session_timeout_ms / 1e3},
            indent=2,
        ) + "\n"
    )  # fmt: skip


def _logged(log: Path, event: str) -> bool:
    return log.exists() and f'"event": "{event}"' in log.read_text(errors="replace")


async def test_redis_restarted_empty_the_next_forecasts_use_the_restored_full_context(
    kafka_bootstrap: str, private_redis: PrivateRedis, group_id: str, topics: Topics
) -> None:
    series = {s: bar_series(s, 45, seed=5) for s in ("E1", "E2", "E3")}
    await produce(kafka_bootstrap, topics.input, interleave(*(r[:40] for r in series.values())))
    settings = daemon_settings(kafka_bootstrap, private_redis.url, "kr", group_id, topics)
    async with running_daemon(settings, StubForecaster(max_context=64)):
        await wait_committed(kafka_bootstrap, group_id, topics.input)
    private_redis.stop()
    private_redis.wipe()
    await private_redis.start()  # empty
    await produce(kafka_bootstrap, topics.input, interleave(*(r[40:] for r in series.values())))
    async with running_daemon(settings, StubForecaster(max_context=64)) as d:
        await wait_committed(kafka_bootstrap, group_id, topics.input)
        assert metric(d, "kronos_state_restored_total") == 3
        rings = {s: len((await d.store.load([s]))[s]) for s in series}  # type: ignore[union-attr]
    out = forecasts(await read_topic(kafka_bootstrap, topics.output, 135))
    after = [f for f in out if int(f["as_of"][11:13]) * 60 + int(f["as_of"][14:16]) >= 90 + 40]
    assert len(after) == 15
    assert sorted(f["context_bars"] for f in after) == sorted([41, 42, 43, 44, 45] * 3)
    assert all(f["context_complete"] for f in after)
    expected = expected_ids(series, "stub-1")
    assert {f["id"] for f in out} == expected
    assert rings == dict.fromkeys(series, 45)


async def test_redis_restarted_empty_under_a_running_daemon_loses_no_context(
    kafka_bootstrap: str, private_redis: PrivateRedis, group_id: str, topics: Topics
) -> None:
    series = {s: bar_series(s, 30, seed=6) for s in ("W1", "W2")}
    await produce(kafka_bootstrap, topics.input, interleave(*(r[:20] for r in series.values())))
    settings = daemon_settings(
        kafka_bootstrap, private_redis.url, "kr", group_id, topics,
        retry_initial_s=0.05, retry_max_s=0.5, health_probe_interval_s=0.5,
    )  # fmt: skip
    async with running_daemon(settings, StubForecaster(max_context=64)) as d:
        await wait_committed(kafka_bootstrap, group_id, topics.input)
        private_redis.stop()
        private_redis.wipe()
        await private_redis.start()  # empty, while the daemon runs
        await produce(kafka_bootstrap, topics.input, interleave(*(r[20:] for r in series.values())))
        await wait_committed(kafka_bootstrap, group_id, topics.input)
        assert metric(d, "kronos_state_lost_total") == 1
        rings = {s: len((await d.store.load([s]))[s]) for s in series}  # type: ignore[union-attr]
    out = forecasts(await read_topic(kafka_bootstrap, topics.output, 60))
    assert sorted(f["context_bars"] for f in out if f["context_bars"] > 20) == sorted(list(range(21, 31)) * 2)
    assert rings == dict.fromkeys(series, 30)  # written back in full, not just the 10 new bars
    expected = expected_ids(series, "stub-1")
    assert {f["id"] for f in out} == expected
