"""`kronos-stream run --print-config` and `kronos-stream forecast SYMBOL --wait`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from daemon.cli.main import main
from daemon.ops.config_view import mask_url
from daemon.state.base import forecast_key

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.timeout(60)


def test_print_config_masks_secrets_and_applies_the_manifest() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRONOS_")}
    env.update(
        PYTHONPATH=str(ROOT),
        KRONOS_REDIS__URL="redis://app:url-secret@redis:6379/0",
        KRONOS_REDIS__PASSWORD="env-secret",
        KRONOS_KAFKA__SECURITY_PROTOCOL="SASL_SSL",
        KRONOS_KAFKA__SASL_MECHANISM="PLAIN",
        KRONOS_KAFKA__SASL_USERNAME="me",
        KRONOS_KAFKA__SASL_PASSWORD="sasl-secret",
        KRONOS_MODEL__TOKENIZER_DIR=str(ROOT / "daemon/assets/demo-model/tokenizer"),
        KRONOS_MODEL__PREDICTOR_DIR=str(ROOT / "daemon/assets/demo-model/predictor"),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "run", "--print-config"],
        capture_output=True, text=True, env=env, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "secret" not in out
    lines = set(out.splitlines())
    assert {"KRONOS_REDIS__URL=redis://app:***@redis:6379/0", "KRONOS_REDIS__PASSWORD=***",
            "KRONOS_KAFKA__SASL_PASSWORD=***", "KRONOS_KAFKA__SASL_USERNAME=me",
            "KRONOS_MODEL__MAX_CONTEXT=128", "# KRONOS_KAFKA__CREATE_TOPICS unset"} <= lines  # fmt: skip
    assert all(line.startswith(("KRONOS_", "# KRONOS_")) for line in out.splitlines())


def test_mask_url() -> None:
    assert mask_url("rediss://:pw@h:1/0") == "rediss://:***@h:1/0"
    assert mask_url("redis://h:6379/0") == "redis://h:6379/0"


@pytest.mark.redis
async def test_forecast_wait_returns_the_forecast_once_it_appears(
    redis_url: str, key_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = key_prefix.rstrip(":")
    args = ["forecast", "ZZZ", "--redis-url", redis_url, "--prefix", prefix]
    assert await asyncio.to_thread(main, args) == 1  # nothing yet, no waiting
    assert "--wait SECONDS" in capsys.readouterr().err

    async def write_later() -> None:
        await asyncio.sleep(0.5)
        client = aioredis.Redis.from_url(redis_url)
        await client.set(forecast_key(prefix, "ZZZ"), json.dumps({"symbol": "ZZZ", "id": "x"}))
        await client.aclose()

    writer = asyncio.create_task(write_later())
    code = await asyncio.to_thread(main, [*args, "--wait", "10"])
    await writer
    assert code == 0
    assert json.loads(capsys.readouterr().out)["id"] == "x"


def test_progress_lines() -> None:
    import io

    from daemon.cli.progress import Progress

    out = io.StringIO()
    p = Progress("replay", 20, every_s=0.0, stream=out)
    p.update(10)
    p.finish(20)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("replay: 10 of 20 bars (50%), ") and "s left" in lines[0]
    assert lines[1].startswith("replay: 20 of 20 bars (100%), ") and "left" not in lines[1]
    quiet = io.StringIO()
    Progress("synth", None, every_s=0.0, stream=quiet, enabled=False).finish(5)
    assert quiet.getvalue() == ""
