"""Start-up mistakes a new user makes, each stopped with a message naming the variable to fix."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from aiokafka.admin import AIOKafkaAdminClient

from daemon.app import Daemon, serve_until_signalled
from daemon.errors import ConfigError
from daemon.io.memory import MemoryBroker, MemoryInput, MemoryOutput
from daemon.settings import load_settings
from daemon.state.memory import MemoryStateStore
from tests.support.launcher import Topics, daemon_settings
from tests.support.stub_forecaster import StubForecaster

pytestmark = pytest.mark.timeout(60)


def _memory_parts() -> dict[str, object]:
    broker = MemoryBroker()
    return {"bus_in": MemoryInput(broker, "bars", "g"), "bus_out": MemoryOutput(broker)}


async def _topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


@pytest.mark.kafka
async def test_a_misspelt_topic_stops_the_daemon_and_is_not_created(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, group_id: str, topics: Topics, unique_id: str
) -> None:
    typo = f"barz-{unique_id}"
    settings = daemon_settings(
        kafka_bootstrap, redis_url, key_prefix, group_id, Topics(typo, topics.output, topics.dead)
    )
    daemon = Daemon(settings, forecaster=StubForecaster(max_context=64))
    with pytest.raises(ConfigError) as info:
        await daemon.start()
    await daemon.close()
    assert f"KRONOS_KAFKA__INPUT_TOPIC={typo}" in str(info.value)
    assert "KRONOS_KAFKA__CREATE_TOPICS" in str(info.value)
    assert "OUTPUT_TOPIC" not in str(info.value)
    assert typo not in await _topics(kafka_bootstrap)


@pytest.mark.kafka
async def test_create_topics_creates_the_missing_ones(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, group_id: str, unique_id: str
) -> None:
    names = Topics(f"in-{unique_id}", f"out-{unique_id}", f"dlq-{unique_id}")
    settings = daemon_settings(
        kafka_bootstrap, redis_url, key_prefix, group_id, names, kafka={"create_topics": 2}
    )
    daemon = Daemon(settings, forecaster=StubForecaster(max_context=64))
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await daemon.start()
        await daemon.close()
        described = await admin.describe_topics([names.input, names.output, names.dead])
        assert sorted(len(t["partitions"]) for t in described) == [2, 2, 2]
    finally:
        await admin.delete_topics([names.input, names.output, names.dead])
        await admin.close()


async def test_port_in_use_names_the_variable_and_no_batch_in_flight_is_claimed() -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        settings = load_settings(http_host="127.0.0.1", http_port=port)
        daemon = Daemon(settings, forecaster=StubForecaster(), store=MemoryStateStore(), **_memory_parts())
        with structlog.testing.capture_logs() as logs:
            code = await serve_until_signalled(daemon)
    finally:
        holder.close()
    assert code == 1
    failed = [e for e in logs if e["event"] == "daemon failed"]
    assert failed and "KRONOS_HTTP_PORT" in failed[0]["error"] and "already in use" in failed[0]["error"]
    assert not any("finishing the batch in flight" in e["event"] for e in logs)


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[str]:
    """A private Redis server that wants the password ``sekrit`` (the shared one has none)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(sock), "--requirepass", "sekrit", "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("password", ["wrong", None])
async def test_a_wrong_redis_password_names_the_password_variable(
    redis_with_password: str, password: str | None
) -> None:
    redis: dict[str, object] = {"url": redis_with_password}
    if password is not None:
        redis["password"] = password
    settings = load_settings(redis=redis, http_port=None)
    daemon = Daemon(settings, forecaster=StubForecaster(), **_memory_parts())
    with pytest.raises(ConfigError) as info:  # a configuration error: not waited out as an outage
        await daemon.start()
    await daemon.close()
    assert "KRONOS_REDIS__PASSWORD" in str(info.value)
    assert "check KRONOS_REDIS__URL" not in str(info.value)


async def test_the_right_redis_password_works(redis_with_password: str) -> None:
    settings = load_settings(redis={"url": redis_with_password, "password": "sekrit"}, http_port=None)
    daemon = Daemon(settings, forecaster=StubForecaster(max_context=512), **_memory_parts())
    await daemon.start()
    await daemon.close()
