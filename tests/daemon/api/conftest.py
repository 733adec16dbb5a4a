"""Fixtures of the HTTP API's tests: a keys file, and a daemon (real Kafka, Redis and model) serving
the API on a free port with some forecasts already made."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.api.auth import key_line, new_key
from kronos_core.stream_types import StreamForecaster
from tests.support.api import BARS, SYMBOLS, ApiDaemon, api_settings
from tests.support.launcher import (
    Topics,
    bar_series,
    interleave,
    produce,
    running_daemon,
    wait_committed,
)


@pytest.fixture
def api_key(tmp_path: Path) -> tuple[Path, str]:
    """A keys file holding one key's hashed line, and the key."""
    key = new_key()
    path = tmp_path / "api-keys"
    path.write_text(f"# made by kronos-stream api-key new\n{key_line('tester', key)}\n")
    return path, key


@pytest.fixture
def api_overrides() -> dict[str, Any]:
    """KRONOS_API__* fields of ``api_daemon`` (a test parametrizes this name to change them)."""
    return {}


@pytest.fixture
async def api_daemon(
    kafka_bootstrap: str,
    redis_url: str,
    key_prefix: str,
    group_id: str,
    topics: Topics,
    forecaster: StreamForecaster,
    api_key: tuple[Path, str],
    api_overrides: dict[str, Any],
) -> AsyncIterator[ApiDaemon]:
    """A daemon serving the API with keys, its forecasts of ``BARS`` bars of each of ``SYMBOLS`` made."""
    fields = {"rate_per_s": 1000, "burst": 1000, **api_overrides}
    keys_file = None if fields.get("auth") == "none" else api_key[0]
    settings = api_settings(kafka_bootstrap, redis_url, key_prefix, group_id, topics, keys_file, **fields)
    await produce(kafka_bootstrap, topics.input, interleave(*(bar_series(s, BARS) for s in SYMBOLS)))
    async with running_daemon(settings, forecaster) as daemon:
        await wait_committed(kafka_bootstrap, group_id, topics.input, timeout_s=60)
        assert daemon.api is not None
        yield ApiDaemon(daemon, settings, api_key[1], f"http://127.0.0.1:{daemon.api.port}")
