"""Challengers on live bars, against the session's real Kafka and Redis: promotion on evidence, no
promotion on noise, automatic rollback of a degrading champion, one published forecast per bar.

Versions are stubs of known quality (tests/support/challengers.py) published in a registry folder;
the stream is a steady trend. Small: three symbols, horizon 4, tens of bars."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from daemon.app import Daemon
from daemon.model import build
from daemon.model.policy import compare, weigh
from daemon.settings import Settings
from kronos_contract import challengers as listing
from kronos_contract.registry import Registry
from tests.support.challengers import DRIFT, SIGMA, by_round, quality_stub, registry_of, trending_series
from tests.support.launcher import (
    Record,
    Topics,
    daemon_settings,
    forecasts,
    metric,
    read_topic,
    running_daemon,
    wait_committed,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(120)]

SYMBOLS = ("AAA", "BBB", "CCC")
MIN_FORECASTS = 60


@pytest.fixture(autouse=True)
def _stub_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fetched version is built as the stub its manifest describes (see tests/support/challengers.py)."""
    monkeypatch.setattr(build, "build_engine_forecaster", quality_stub)


def _settings(
    bootstrap: str, redis_url: str, prefix: str, group: str, topics: Topics, root: Path, **challengers: Any
) -> Settings:
    ch: dict[str, Any] = {
        "poll_s": 0.3, "decide_every_s": 0.3, "policy": "automatic", "min_forecasts": MIN_FORECASTS,
        "level": 0.01, "cooldown_s": 0.0, "rollback": False, "lock_ttl_s": 5.0,
    }  # fmt: skip
    ch.update(challengers)
    model = {
        "registry": str(root), "registry_poll_s": 0.3, "registry_retry_s": 0.5, "device": "cpu", "threads": 1,
        "cache_dir": str(root.parent / "cache"),
    }  # fmt: skip
    return daemon_settings(bootstrap, redis_url, prefix, group, topics, model=model, challengers=ch)


async def _stream(bootstrap: str, topic: str, rounds: Sequence[Sequence[Record]], pause_s: float) -> None:
    """One round of bars (one per symbol) every ``pause_s``, as a live feed delivers them."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for records in rounds:
            await asyncio.gather(*[await producer.send(topic, value=v, key=k) for k, v in records])
            await asyncio.sleep(pause_s)
    finally:
        await producer.stop()


def _series(n: int) -> dict[str, list[Record]]:
    return {s: trending_series(s, n, seed=i) for i, s in enumerate(SYMBOLS)}


def _versions_in_order(out: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Per symbol, the versions of its forecasts in bar order, runs collapsed: ["v1", "v2"]."""
    by: dict[str, list[tuple[str, str]]] = {}
    for f in out:
        by.setdefault(f["symbol"], []).append((f["as_of"], f["model_version"]))
    runs: dict[str, list[str]] = {}
    for symbol, items in by.items():
        seq = [v for _, v in sorted(items)]
        runs[symbol] = [v for i, v in enumerate(seq) if i == 0 or seq[i - 1] != v]
    return runs


def _one_forecast_per_bar(out: Sequence[dict[str, Any]], series: dict[str, list[Record]]) -> None:
    got = sorted((f["symbol"], f["as_of"]) for f in out)
    want = sorted((s, json.loads(v)["ts"]) for s, bars in series.items() for _, v in bars)
    assert got == want  # every bar exactly once, whichever version was champion
    assert not any(f.get("shadow") for f in out)


def _serving(d: Daemon) -> str:
    assert d.models is not None and d.models.forecaster is not None
    return d.models.forecaster.model_version


async def test_a_better_challenger_is_promoted_once_the_test_passes(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, group_id: str, topics: Topics,
    topic_factory: Any, tmp_path: Path,
) -> None:  # fmt: skip
    root = tmp_path / "registry"
    reg = registry_of(root, {"v1": (0.0, 3 * SIGMA), "v2": (DRIFT, SIGMA)}, champion="v1")
    listing.challenge(reg, "v2")
    shadow = await topic_factory(partitions=1)
    settings = _settings(kafka_bootstrap, redis_url, key_prefix, group_id, topics, root, shadow_topic=shadow)
    series = _series(80)
    async with running_daemon(settings, None) as d:
        assert d.shadow is not None
        await wait_until(lambda: d.shadow.challengers.versions == ["v2"], 20, "v2 loaded as a challenger")
        await _stream(kafka_bootstrap, topics.input, by_round(series, 0, 60), 0.03)
        await wait_until(lambda: reg.champion() == "v2", 30, "v2 promoted")
        await wait_until(lambda: _serving(d) == "v2" or d.models.forecaster.target_version == "v2", 20, "swap")  # type: ignore[union-attr]
        await wait_until(lambda: d.shadow.challengers.versions == [], 10, "v2 no longer a challenger")
        await _stream(kafka_bootstrap, topics.input, by_round(series, 60, 80), 0.01)
        await wait_committed(kafka_bootstrap, group_id, topics.input)
        decided = metric(d, "kronos_challenger_decisions_total", decision="promote", applied="true")
    out = forecasts(await read_topic(kafka_bootstrap, topics.output, 80 * len(SYMBOLS)))
    _one_forecast_per_bar(out, series)
    runs = _versions_in_order(out)
    assert all(r == ["v1", "v2"] for r in runs.values()), runs  # the champion of the moment, switched once
    [decision] = [x for x in listing.decisions(reg) if x["decision"] == "promote"]
    assert decision["applied"] and decision["version"] == "v2" and decision["champion"] == "v1"
    assert decision["n"] >= MIN_FORECASTS and decision["pvalue"] < 0.01 and decision["dm_statistic"] < 0
    assert decision["crps_challenger"] < decision["crps_champion"] and decision["skill_vs_walk"] > 0
    assert decided == 1.0
    shadows = [json.loads(r.value) for r in await read_topic(kafka_bootstrap, shadow, 1)]
    assert shadows and all(f["shadow"] and f["model_version"] == "v2" for f in shadows)


async def test_a_worse_challenger_is_never_promoted_and_an_equal_one_stays_undecided(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, group_id: str, topics: Topics, tmp_path: Path
) -> None:
    root = tmp_path / "registry"
    versions = {"v1": (0.0, 3 * SIGMA), "v3": (-DRIFT, SIGMA), "v4": (0.0, 3 * SIGMA)}
    reg = registry_of(root, versions, champion="v1")
    listing.challenge(reg, "v3")
    listing.challenge(reg, "v4")
    settings = _settings(kafka_bootstrap, redis_url, key_prefix, group_id, topics, root)
    series = _series(70)
    async with running_daemon(settings, None) as d:
        assert d.shadow is not None and d.scorer is not None
        await wait_until(lambda: sorted(d.shadow.challengers.versions) == ["v3", "v4"], 20, "challengers loaded")
        await _stream(kafka_bootstrap, topics.input, by_round(series, 0, 70), 0.01)
        await wait_committed(kafka_bootstrap, group_id, topics.input)
        await wait_until(lambda: any(x["decision"] == "keep" for x in listing.decisions(reg)), 20, "v3 kept out")
        losses = d.scorer.store.losses
        champion, equal = await losses.read("v1"), await losses.read("v4")
        await asyncio.sleep(1.0)  # a few more decision rounds on the complete evidence
    assert reg.champion() == "v1"
    kinds = [(x["decision"], x["version"]) for x in listing.decisions(reg)]
    assert ("keep", "v3") in kinds and not any(k == "promote" for k, _ in kinds)
    assert listing.challengers(reg) == ["v4"]  # v3 withdrawn, v4 still under test
    evidence = compare("v1", "v4", champion, equal, settings.model.horizon)
    assert evidence.n >= MIN_FORECASTS and weigh(evidence, MIN_FORECASTS, 0.01) == "undecided"
    out = forecasts(await read_topic(kafka_bootstrap, topics.output, 70 * len(SYMBOLS)))
    _one_forecast_per_bar(out, series)
    assert {f["model_version"] for f in out} == {"v1"}


async def test_a_degrading_champion_is_rolled_back_within_the_window(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, group_id: str, topics: Topics, tmp_path: Path
) -> None:
    root = tmp_path / "registry"
    reg = registry_of(root, {"v1": (DRIFT, SIGMA), "v5": (-2 * DRIFT, SIGMA)}, champion="v1")
    window = 30
    settings = _settings(
        kafka_bootstrap, redis_url, key_prefix, group_id, topics, root,
        rollback=True, rollback_window=window, rollback_skill=-0.05, cooldown_s=600.0,
    )  # fmt: skip
    series = _series(90)
    async with running_daemon(settings, None) as d:
        assert d.models is not None
        await _stream(kafka_bootstrap, topics.input, by_round(series, 0, 20), 0.01)
        await wait_committed(kafka_bootstrap, group_id, topics.input)
        Registry(str(root)).promote("v5")  # forced in by hand (kronos-stream models promote v5)
        await wait_until(lambda: d.models.forecaster.target_version == "v5", 20, "v5 loaded")  # type: ignore[union-attr]
        await _stream(kafka_bootstrap, topics.input, by_round(series, 20, 75), 0.04)
        await wait_until(lambda: reg.champion() == "v1", 30, "the rollback to v1")
        await wait_until(lambda: d.models.forecaster.target_version == "v1", 20, "v1 back")  # type: ignore[union-attr]
        await _stream(kafka_bootstrap, topics.input, by_round(series, 75, 90), 0.01)
        await wait_committed(kafka_bootstrap, group_id, topics.input)
        await asyncio.sleep(1.0)  # more decision rounds: nothing else happens
        rollbacks = metric(d, "kronos_model_rollbacks_total")
    assert rollbacks == 1.0
    [decision] = [x for x in listing.decisions(reg) if x["decision"] == "rollback"]
    assert decision["applied"] and decision["rolled_back_from"] == "v5" and decision["version"] == "v1"
    assert decision["n"] == window and decision["skill_vs_walk"] < -0.05
    assert "v5" in listing.blocked(reg) and reg.champion() == "v1"
    out = forecasts(await read_topic(kafka_bootstrap, topics.output, 90 * len(SYMBOLS)))
    _one_forecast_per_bar(out, series)
    runs = _versions_in_order(out)
    assert all(r == ["v1", "v5", "v1"] for r in runs.values()), runs
    served_by_v5 = sum(f["model_version"] == "v5" for f in out)
    assert served_by_v5 < 55 * len(SYMBOLS)  # rolled back while the stream was still coming


async def test_one_replica_decides_at_a_time(redis_url: str, key_prefix: str, tmp_path: Path) -> None:
    """The decider's lock in the real Redis: two replicas, one leader; the other takes over once the
    leader releases it, or once its lease expires."""
    import redis.asyncio as aioredis
    from prometheus_client import CollectorRegistry

    from daemon.model.promotion import Decider, DeciderMetrics
    from daemon.scoring.paired import MemoryLossLog
    from daemon.settings import load_settings

    settings = load_settings(redis={"url": redis_url, "key_prefix": key_prefix.rstrip(":")},
                             challengers={"lock_ttl_s": 0.5})  # fmt: skip
    reg = registry_of(tmp_path / "registry", {"v1": (0.0, SIGMA)}, champion="v1")
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(2)]
    try:
        a, b = (Decider(settings, reg, MemoryLossLog(), DeciderMetrics(CollectorRegistry()), redis=c) for c in clients)
        assert await a.leader() and not await b.leader()
        assert await a.leader() and not await b.leader()  # renewed by its holder only
        await a.release()
        assert await b.leader() and not await a.leader()
        await asyncio.sleep(0.7)  # b stops renewing: its lease runs out
        assert await a.leader() and not await b.leader()
    finally:
        for c in clients:
            await c.aclose()


async def test_the_champions_forecasts_are_published_while_a_slow_challenger_still_runs(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, group_id: str, topics: Topics, tmp_path: Path
) -> None:
    """Same job, the champion first: its forecasts go out before the challenger's calls of that job end."""
    root = tmp_path / "registry"
    reg = registry_of(root, {"v1": (DRIFT, SIGMA), "v2": (DRIFT, SIGMA)}, champion="v1", delays={"v2": 3.0})
    listing.challenge(reg, "v2")
    settings = _settings(kafka_bootstrap, redis_url, key_prefix, group_id, topics, root, policy="off")
    series = _series(1)
    async with running_daemon(settings, None) as d:
        assert d.shadow is not None
        await wait_until(lambda: d.shadow.challengers.versions == ["v2"], 20, "v2 loaded")
        sent = time.monotonic()
        await _stream(kafka_bootstrap, topics.input, by_round(series, 0, 1), 0.0)
        out = forecasts(await read_topic(kafka_bootstrap, topics.output, len(SYMBOLS), timeout_s=10, settle_s=0.0))
        read_after_s = time.monotonic() - sent
        shadow_then = metric(d, "kronos_challenger_forecasts_total", model_version="v2")
        await wait_until(
            lambda: metric(d, "kronos_challenger_forecasts_total", model_version="v2") == len(SYMBOLS), 20,
            "the challenger's forecasts",
        )  # fmt: skip
    assert {f["model_version"] for f in out} == {"v1"} and len(out) == len(SYMBOLS)
    assert shadow_then == 0  # the challenger was still forecasting when the champion's were read
    assert read_after_s < 2.5, read_after_s  # not after the challenger's 3 s call
