"""The ``kronos-stream`` subcommands against the real services (run in this process through ``main``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from daemon.cli.main import main
from daemon.io.messages import parse_bar
from daemon.io.messages import to_ns as _to_ns
from daemon.state.base import StateUpdate
from daemon.state.redis import RedisStateStore
from tests.support.launcher import Record, read_topic

pytestmark = pytest.mark.timeout(60)

TopicFactory = Callable[..., Awaitable[str]]

CSV = Path(__file__).resolve().parents[3] / "daemon" / "assets" / "bars_5min_a_share.csv"


@pytest.fixture(autouse=True)
def _no_kronos_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("KRONOS_"):
            monkeypatch.delenv(name)


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and "kronos-stream" in capsys.readouterr().out
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("run", "replay", "synth", "forecast", "check"))


@pytest.mark.kafka
async def test_replay_publishes_the_csv_in_its_time_zone(
    kafka_bootstrap: str, topic_factory: TopicFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = await topic_factory(partitions=1)
    argv = ["replay", str(CSV), "--symbol", "600977.SH", "--topic", topic, "--limit", "50"]
    assert await _main(*argv, "--tz", "Asia/Shanghai", "--bootstrap", kafka_bootstrap) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"topic": topic, "published": 50}
    assert captured.err.splitlines()[-1].startswith("replay: 50 of 50 bars (100%)")  # progress on stderr
    records = await read_topic(kafka_bootstrap, topic, 50)
    bars = [parse_bar(r.key, r.value) for r in records]
    assert len(bars) == 50 and all(r.key == b"600977.SH" for r in records)
    assert bars[0].ts_ns == _to_ns_iso("2024-06-18T03:15:00+00:00")  # 11:15 in Shanghai
    assert bars[0].values == (11.27, 11.28, 11.26, 11.27, 379.0, 427161.0)


@pytest.mark.kafka
async def test_replay_paces_bars_by_their_timestamps(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = await topic_factory(partitions=1)
    began = time.monotonic()
    argv = ["replay", str(CSV), "--symbol", "X", "--topic", topic, "--limit", "4", "--speed", "3000"]
    assert await _main(*argv, "--bootstrap", kafka_bootstrap) == 0
    assert time.monotonic() - began >= 0.3  # 5-minute bars at 3000x: 0.1 s apart


@pytest.mark.kafka
async def test_synth_publishes_valid_bars_for_many_symbols(
    kafka_bootstrap: str, topic_factory: TopicFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = await topic_factory(partitions=1)
    argv = ["synth", "--symbols", "5", "--rate", "200", "--duration", "0.5", "--topic", topic]
    assert await _main(*argv, "--bootstrap", kafka_bootstrap) == 0
    published = json.loads(capsys.readouterr().out)["published"]
    assert 50 <= published <= 101
    records = await read_topic(kafka_bootstrap, topic, published)
    bars = [parse_bar(r.key, r.value) for r in records]  # all valid
    assert len(bars) == published and len({b.symbol for b in bars}) == 5


@pytest.mark.redis
async def test_forecast_prints_the_latest_forecast(
    redis_url: str, key_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    record: Record = (
        b"AAA",
        b'{"symbol":"AAA","ts":"2024-06-18T03:15:00Z","open":1,"high":1,"low":1,"close":1,"volume":1}',
    )
    store = RedisStateStore.from_url(redis_url, key_prefix, 8)
    await store.apply(
        [StateUpdate(parse_bar(*record), None, b'{"id": "x", "symbol": "AAA"}', "v1", "in/0/0")]
    )
    await store.close()
    assert await _main("forecast", "AAA", "--redis-url", redis_url, "--prefix", key_prefix) == 0
    assert json.loads(capsys.readouterr().out) == {"id": "x", "symbol": "AAA"}
    assert await _main("forecast", "NOPE", "--redis-url", redis_url, "--prefix", key_prefix) == 1
    assert "no forecast for 'NOPE'" in capsys.readouterr().err


def test_errors_are_reported_not_raised(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "/nonexistent.csv", "--symbol", "X", "--bootstrap", "127.0.0.1:1"]) == 2
    assert "kronos-stream replay" in capsys.readouterr().err


async def _main(*argv: str) -> int:
    """The command in a worker thread (it runs its own event loop)."""
    return await asyncio.to_thread(main, list(argv))


def _to_ns_iso(text: str) -> int:
    from datetime import datetime

    return _to_ns(datetime.fromisoformat(text))
