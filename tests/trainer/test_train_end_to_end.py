"""End to end against the real Kafka: bars replayed into a topic -> `kronos-stream archive` ->
`torchrun --nproc-per-node 2 -m daemon.cli train` -> gate -> registry (+ the Redis hint)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import redis.asyncio as redis

from kronos_contract.archive import read_bars
from kronos_contract.registry import Registry, hint_channel
from tests.trainer.train_helpers import BARS_CSV, HORIZON, LOOKBACK, free_port, save_tiny

REPO = Path(__file__).resolve().parents[2]
BARS = 400  # per symbol
pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.redis]


async def _run(*args: str, env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*args, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_replay_archive_torchrun_train_gate_publish(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str, topic_factory, group_id: str, key_prefix: str
) -> None:
    topic = await topic_factory(partitions=2)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "KRONOS_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap, "KRONOS_ARCHIVE__GROUP_ID": group_id,
           "KRONOS_ARCHIVE__ROLL_MAX_AGE_S": "1"}
    cli = [sys.executable, "-m", "daemon.cli"]
    for symbol in ("AAA", "BBB"):
        rc, out, err = await _run(*cli, "replay", str(BARS_CSV), "--symbol", symbol, "--topic", topic,
                                  "--tz", "Asia/Shanghai", "--limit", str(BARS), env=env, timeout=120)
        assert rc == 0 and json.loads(out)["published"] == BARS, err[-2000:]

    archive = str(tmp_path / "archive")
    archiver = await asyncio.create_subprocess_exec(*cli, "archive", "--root", archive, "--topic", topic, env=env,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(120):
            while not (tmp_path / "archive").exists() or len(read_bars(archive)) < 2 * BARS:
                await asyncio.sleep(0.5)
    finally:
        archiver.send_signal(signal.SIGTERM)
        await asyncio.wait_for(archiver.wait(), 60)
    assert len(read_bars(archive, symbols=["AAA"])) == BARS

    registry_root = str(tmp_path / "registry")
    tok, pred = save_tiny(tmp_path / "champion")
    registry = Registry(registry_root)
    registry.publish("v0-champion", tok, pred, {"runtime": {"max_context": LOOKBACK + HORIZON}}, promote=True)

    hints = redis.from_url(redis_url)
    pubsub = hints.pubsub()
    await pubsub.subscribe(hint_channel(key_prefix))
    try:
        rc, out, err = await _run(
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
            "-m", "daemon.cli", "train", "--archive", archive, "--registry", registry_root,
            "--work-dir", str(tmp_path / "work"), "--lookback", str(LOOKBACK), "--horizon", str(HORIZON),
            "--tokenizer-steps", "30", "--tokenizer-lr", "5e-3", "--steps", "30", "--lr", "3e-3",
            "--warmup-steps", "3", "--batch-size", "4", "--eval-windows", "8", "--eval-samples", "4",
            "--redis-url", redis_url, "--key-prefix", key_prefix, "--progress", "log",
            env=env, timeout=600,
        )
        assert rc == 0, err[-3000:]
        summary = json.loads(out)
        hint = None
        async with asyncio.timeout(10):
            while hint is None:
                hint = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
    finally:
        await pubsub.unsubscribe()
        await pubsub.aclose()
        await hints.aclose()

    version = summary["version"]
    assert summary["promoted"] is True, summary
    assert registry.champion() == version and registry.previous() == "v0-champion"
    manifest = registry.verify(version)
    assert manifest["parent"] == "v0-champion" and manifest["world_size"] == 2
    assert manifest["data"]["symbols"] == ["AAA", "BBB"] and manifest["data"]["rows"] == 2 * BARS
    assert manifest["training"]["steps"] == {"tokenizer": 30, "predictor": 30}
    ev = manifest["evaluation"]
    assert ev["candidate"]["crps"] < ev["champion"]["crps"] and ev["persistence"]["mae"] > 0
    assert manifest["torch_version"] and manifest["settings"]["lr"] == 3e-3
    assert json.loads(hint["data"]) == {"version": version}
