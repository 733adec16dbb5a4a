"""Helpers of the HTTP API's tests (fixtures in tests/daemon/api/conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.app import Daemon
from daemon.settings import Settings
from tests.support.launcher import Topics, daemon_settings

SYMBOLS = ("AAA.SH", "BBB.SZ")
BARS = 12  # horizon 4: the first forecasts are scored


@dataclass
class ApiDaemon:
    daemon: Daemon
    settings: Settings
    key: str
    url: str  # the API's base URL

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def api_settings(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, group_id: str, topics: Topics, keys_file: Path | None,
    **api: Any,
) -> Settings:
    fields = {"port": 0, "host": "127.0.0.1", "auth": "keys" if keys_file else "none", "keys_file": keys_file}
    fields.update(api)
    return daemon_settings(
        kafka_bootstrap, redis_url, key_prefix, group_id, topics, http_host="127.0.0.1", http_port=0, api=fields
    )  # fmt: skip
