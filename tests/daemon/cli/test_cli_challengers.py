"""``kronos-stream models challenge|withdraw|compare`` against a registry folder and the real Redis."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis

from daemon.cli.main import main as cli_main
from daemon.scoring.paired import LossRow, RedisLossLog
from kronos_contract.registry import Registry
from tests.support.hotswap import TINY, publish

pytestmark = [pytest.mark.redis]


async def _losses(redis_url: str, prefix: str, version: str, crps: np.ndarray, walk: float) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        log = RedisLossLog(client, prefix, retention_s=600)
        rows = [
            LossRow(version, ("AAA", "BBB")[k % 2], 1_700_000_000_000_000_000 + (k // 2) * 60_000_000_000,
                    float(c), walk, float(c))
            for k, c in enumerate(crps)
        ]  # fmt: skip
        async with client.pipeline(transaction=True) as pipe:
            log.add_to(pipe, rows)
            await pipe.execute()
    finally:
        await client.aclose()


def test_challenge_compare_withdraw(
    tmp_path: Path, redis_url: str, key_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "registry"
    reg = Registry(str(root))
    publish(reg, "v1", TINY, promote=True)
    publish(reg, "v2", TINY, promote=False)
    prefix = key_prefix.rstrip(":")
    base = ["models", "--registry", str(root), "--redis-url", redis_url, "--prefix", prefix]
    assert cli_main([*base, "challenge", "v2"]) == 0
    assert json.loads(capsys.readouterr().out) == {"challengers": ["v2"]}
    assert cli_main([*base, "challenge", "v1"]) == 2  # the champion: refused with the reason
    assert "is the champion" in capsys.readouterr().err

    rng = np.random.default_rng(0)
    asyncio.run(_losses(redis_url, prefix, "v1", 1.0 + rng.normal(0, 0.1, 600), walk=1.2))
    asyncio.run(_losses(redis_url, prefix, "v2", 0.8 + rng.normal(0, 0.1, 600), walk=1.2))
    assert cli_main([*base, "compare", "--json"]) == 0
    champion, challenger = json.loads(capsys.readouterr().out)
    assert champion["version"] == "v1" and champion["role"] == "champion" and champion["forecasts"] == 600
    assert challenger["version"] == "v2" and challenger["paired"] == 600
    assert challenger["pvalue"] < 1e-6 and challenger["verdict"] == "promote"
    assert challenger["skill_vs_walk"] == pytest.approx(1 - 0.8 / 1.2, abs=0.02)
    assert cli_main([*base, "compare"]) == 0
    table = capsys.readouterr().out
    assert "v2" in table and "promote" in table and "one-sided DM" in table

    assert cli_main([*base, "withdraw", "v2"]) == 0
    assert json.loads(capsys.readouterr().out) == {"challengers": []}
    assert cli_main([*base, "withdraw", "v2"]) == 2
    assert "not a challenger" in capsys.readouterr().err
