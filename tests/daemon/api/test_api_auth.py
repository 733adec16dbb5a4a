"""API keys and the rate limit: 401 for a wrong or missing key, 429 over the rate, keys in no log and
not in ``run --print-config``, a clear start-up error without keys."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from daemon.api.auth import Guard, key_line, new_key
from daemon.api.errors import ApiError
from daemon.api.settings import ApiSettings
from daemon.app import Daemon, serve_until_signalled
from daemon.errors import ConfigError
from daemon.settings import load_settings
from kronos_contract.api_client import ApiClient
from kronos_contract.api_client import ApiError as ClientError
from tests.support.api import SYMBOLS, ApiDaemon, api_settings
from tests.support.launcher import Topics, spawn_daemon, wait_until

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.timeout(120)
async def test_a_wrong_or_missing_key_gets_401_and_the_right_one_passes(api_daemon: ApiDaemon) -> None:
    path = f"/v1/forecasts/{SYMBOLS[0]}"
    async with httpx.AsyncClient(base_url=api_daemon.url) as http:
        for headers in ({}, {"Authorization": f"Bearer {new_key()}"}, {"X-API-Key": "ks_guess"},
                        {"Authorization": f"Basic {api_daemon.key}"}):  # fmt: skip
            refused = await http.get(path, headers=headers)
            assert refused.status_code == 401, headers
            assert "API key" in refused.json()["message"] and refused.headers["www-authenticate"] == "Bearer"
        assert (await http.get(path, headers={"X-API-Key": api_daemon.key})).status_code == 200
        assert (await http.get(path, headers=api_daemon.headers)).status_code == 200
        assert (await http.get("/v1/stream", headers={"X-API-Key": "wrong"})).status_code == 401
    async with ApiClient(api_daemon.url, "ks_wrong") as api:
        with pytest.raises(ClientError) as refused:
            await api.models()
        assert refused.value.status == 401 and refused.value.message == "unknown API key"


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.timeout(120)
@pytest.mark.parametrize("api_overrides", [{"rate_per_s": 0.2, "burst": 3}])
async def test_a_key_over_its_rate_gets_429_with_retry_after(api_daemon: ApiDaemon) -> None:
    async with httpx.AsyncClient(base_url=api_daemon.url, headers=api_daemon.headers) as http:
        answers = [await http.get("/v1/models") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    over = answers[-1]
    assert "rate limit of 0.2 requests/s (bursts of 3) exceeded" in over.json()["message"]
    assert 1 <= int(over.headers["retry-after"]) <= 5


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.timeout(120)
@pytest.mark.parametrize("api_overrides", [{"auth": "none"}])
async def test_auth_none_serves_without_keys(api_daemon: ApiDaemon) -> None:
    async with httpx.AsyncClient(base_url=api_daemon.url) as http:
        assert (await http.get(f"/v1/forecasts/{SYMBOLS[0]}")).status_code == 200


async def test_auth_is_on_by_default_and_without_keys_the_daemon_does_not_start(tmp_path: Path) -> None:
    assert ApiSettings().auth == "keys", "turning keys off must be explicit"
    empty = tmp_path / "keys"
    empty.write_text("# no key yet\n")
    bad = tmp_path / "bad-keys"
    bad.write_text("alice:ks_this_is_a_key_not_a_hash\n")
    for keys_file, wanted in (
        (None, "set KRONOS_API__KEYS_FILE"),
        (tmp_path / "absent", "cannot read the API keys file KRONOS_API__KEYS_FILE="),
        (empty, "holds no key"),
        (bad, "line 1 is not NAME:SHA256HEX"),
    ):
        settings = load_settings(http_port=None, api={"port": 0, "host": "127.0.0.1", "keys_file": keys_file})
        with structlog.testing.capture_logs() as logs:
            assert await serve_until_signalled(Daemon(settings)) == 1  # before any model or service
        failed = [e for e in logs if e["event"] == "daemon failed"]
        assert failed and wanted in failed[0]["error"], failed
        assert "ks_this_is_a_key" not in str(logs), "a bad line's content is not repeated"


def test_a_rotated_keys_file_is_read_again(tmp_path: Path) -> None:
    old, new = new_key(), new_key()
    path = tmp_path / "keys"
    path.write_text(key_line("old", old) + "\n")
    guard = Guard(ApiSettings(keys_file=path))
    assert guard.identify(old, "10.0.0.1") == "old"
    path.write_text(key_line("new", new) + "\n")
    os.utime(path, (1, 1))  # a different mtime, as the kubelet's atomic swap of a Secret gives
    guard._next_check = 0  # noqa: SLF001 (instead of waiting out the re-read interval)
    assert guard.identify(new, "10.0.0.1") == "new"
    with pytest.raises(ApiError) as refused:
        guard.identify(old, "10.0.0.1")
    assert refused.value.status == 401
    path.write_text("garbage\n")  # a broken file keeps the keys in use
    os.utime(path, (2, 2))
    guard._next_check = 0  # noqa: SLF001
    assert guard.identify(new, "10.0.0.1") == "new"
    with pytest.raises(ConfigError):
        key_line("no spaces allowed", new)


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.timeout(180)
async def test_keys_never_appear_in_the_log_nor_in_print_config(
    kafka_bootstrap: str,
    redis_url: str,
    key_prefix: str,
    group_id: str,
    topics: Topics,
    forecaster_env: dict[str, str],
    api_key: tuple[Path, str],
    tmp_path: Path,
) -> None:
    keys_file, key = api_key
    digest = keys_file.read_text().split(":")[-1].strip()
    wrong = new_key()
    settings = api_settings(kafka_bootstrap, redis_url, key_prefix, group_id, topics, keys_file, rate_per_s=0.1, burst=1)
    log = tmp_path / "daemon.log"
    proc = spawn_daemon(settings, {**forecaster_env, "KRONOS_LOG_LEVEL": "DEBUG"}, log)
    try:
        await wait_until(lambda: '"API listening"' in log.read_text(), 60, "the API listening")
        port = next(_listening_port(line) for line in log.read_text().splitlines() if '"API listening"' in line)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            statuses = [
                (await http.get("/v1/models", headers=headers)).status_code
                for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": wrong},
                                {"Authorization": f"Bearer {key}"}, {"Authorization": f"Bearer {key}ZZ"})
            ]  # fmt: skip
        assert statuses == [200, 401, 429, 401]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "daemon closed" in text
    assert key not in text and wrong not in text and digest not in text

    env = {k: v for k, v in os.environ.items() if not k.startswith("KRONOS_")}
    env.update({"KRONOS_API__PORT": "8000", "KRONOS_API__KEYS_FILE": str(keys_file), "PYTHONPATH": str(ROOT)})
    printed = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "daemon", "run", "--print-config"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    assert f"KRONOS_API__KEYS_FILE={keys_file}" in printed.stdout and "KRONOS_API__AUTH=keys" in printed.stdout
    assert key not in printed.stdout + printed.stderr and digest not in printed.stdout + printed.stderr


def _listening_port(line: str) -> int:
    record: dict[str, Any] = json.loads(line)
    return int(record["port"])


def test_api_key_new_prints_the_key_once_and_the_line_that_admits_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from daemon.cli.main import main

    assert main(["api-key", "new", "dashboard", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["key"].startswith("ks_") and len(made["key"]) == 46
    name, digest = made["line"].split(":")
    assert name == "dashboard" and len(digest) == 64 and made["key"] not in made["line"]
    keys = tmp_path / "keys"
    keys.write_text(made["line"] + "\n")
    assert Guard(ApiSettings(keys_file=keys)).identify(made["key"], "10.0.0.1") == "dashboard"
    assert main(["api-key", "new", "dashboard"]) == 0  # for people: the key, then the line
    text = capsys.readouterr().out
    assert "ks_" in text and "dashboard:" in text
    assert main(["api-key", "new", "two words"]) == 2
    assert "not allowed" in capsys.readouterr().err

    schema = tmp_path / "openapi.json"
    assert main(["api-schema", str(schema)]) == 0
    assert json.loads(schema.read_text())["paths"]["/v1/forecasts/{symbol}"]
