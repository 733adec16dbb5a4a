"""Hot swap of published models in a running daemon, against the session's real Kafka and Redis.

The registry is a folder: v1 is the tiny checkpoint, v2 the same weights perturbed (tokenizer too, so
v1's tokens are wrong for v2), v3 a broken publish (truncated weights whose manifest matches them)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.app import Daemon
from daemon.cli.main import main as cli_main
from daemon.io.messages import horizon_ns, infer_interval_ns, parse_bar
from daemon.model.vetting import load_version
from daemon.settings import Settings
from daemon.state.base import SymbolState
from kronos_contract.registry import Registry, publish_hint
from kronos_core.stream_types import SeriesWindow, TokenState, derive_seed
from tests.support.hotswap import TINY, broken_copy, publish, registry_v1_v2
from tests.support.launcher import (
    Record,
    Topics,
    bar_series,
    daemon_settings,
    forecasts,
    interleave,
    launch_daemon,
    metric,
    produce,
    read_topic,
    running_daemon,
    settings_env,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(180)]

SYMBOLS = ["AAA", "BBB", "CCC"]


@pytest.fixture
def registry_root(tmp_path: Path) -> Path:
    return registry_v1_v2(tmp_path)


def _settings(
    bootstrap: str, redis_url: str, prefix: str, group: str, topics: Topics, root: Path, **model: Any
) -> Settings:
    fields: dict[str, Any] = {
        "registry": str(root),
        "registry_poll_s": 3600.0,  # the hint or a test's check() moves things, unless a test polls
        "registry_retry_s": 0.5,
        "device": "cpu",
        "threads": 1,
        "cache_dir": str(root.parent / "cache"),
    }
    fields.update(model)
    mode = fields.pop("mode", "exact")
    return daemon_settings(bootstrap, redis_url, prefix, group, topics, model=fields, mode=mode, http_port=0)


def _series(n: int) -> dict[str, list[Record]]:
    return {s: bar_series(s, n, seed=i) for i, s in enumerate(SYMBOLS)}


def _chunk(series: dict[str, list[Record]], start: int, stop: int) -> list[Record]:
    return interleave(*(bars[start:stop] for bars in series.values()))


def _target(d: Daemon) -> str:
    assert d.models is not None and d.models.forecaster is not None
    return d.models.forecaster.target_version


def _versions_by_symbol(out: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    by: dict[str, list[tuple[str, str]]] = {}
    for f in out:
        by.setdefault(f["symbol"], []).append((f["as_of"], f["model_version"]))
    return {s: [v for _, v in sorted(items)] for s, items in by.items()}


def _one_forecast_per_bar(out: Sequence[dict[str, Any]], series: dict[str, list[Record]]) -> None:
    assert len({f["id"] for f in out}) == len(out)
    got = sorted((f["symbol"], f["as_of"]) for f in out)
    want = sorted((s, json.loads(v)["ts"]) for s, bars in series.items() for _, v in bars)
    assert got == want  # every bar exactly once (no crash here, so no replays)


async def _http(port: int, path: str) -> int:
    return await asyncio.to_thread(_get, port, path)  # the ops server runs on this event loop


def _get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _fresh_v2_means(
    settings: Settings, root: Path, symbol: str, bars: list[Record], first: int
) -> list[np.ndarray]:
    """What a fresh v2 daemon computes for ``bars[first:]`` from the same bar ring (no v2 tokens yet)."""
    loaded = load_version(Registry(str(root)), "v2", settings, root.parent / "fresh", {})
    m = settings.model
    parsed = [parse_bar(k, v) for k, v in bars]
    state = SymbolState(symbol, m.max_context, [(b.ts_ns, b.values) for b in parsed[:first]])
    tokens: TokenState | None = None
    means = []
    for bar in parsed[first:]:
        values, stamps, ts_list = state.window(bar)
        interval = infer_interval_ns(ts_list, int(settings.default_bar_interval_s * 1e9))
        future = np.asarray(horizon_ns(bar.ts_ns, interval, m.horizon), dtype="datetime64[ns]")
        seed = derive_seed(symbol, bar.ts_ns, "v2", m.base_seed)
        [result] = loaded.forecaster.forecast(
            [SeriesWindow(symbol, values, stamps, future, seed, tokens)], m.horizon
        )
        tokens = result.token_state
        state.append(bar, tokens, "v2")
        means.append(result.mean)
    return means


async def test_v2_promoted_mid_stream_incremental_with_the_redis_hint(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, group_id: str, topics: Topics, registry_root: Path
) -> None:
    settings = _settings(
        kafka_bootstrap, redis_url, key_prefix, group_id, topics, registry_root, mode="incremental"
    )
    series = _series(40)
    async with running_daemon(settings, None) as d:
        assert d.forecaster is not None and d.forecaster.model_version == "v1"
        await produce(kafka_bootstrap, topics.input, _chunk(series, 0, 15))
        await read_topic(kafka_bootstrap, topics.output, 45)

        async def stream() -> None:  # bars keep coming while the pointer moves
            for i in range(15, 25):
                await produce(kafka_bootstrap, topics.input, _chunk(series, i, i + 1))
                await asyncio.sleep(0.05)

        streaming = asyncio.create_task(stream())
        await asyncio.sleep(0.2)
        Registry(str(registry_root)).promote("v2")
        await publish_hint(redis_url, settings.redis.key_prefix, "v2")  # the poll would wait an hour
        await streaming
        await wait_until(lambda: _target(d) == "v2", 60, "v2 loaded after the hint")
        await produce(kafka_bootstrap, topics.input, _chunk(series, 25, 40))
        out = forecasts(await read_topic(kafka_bootstrap, topics.output, 120, timeout_s=60))
        assert metric(d, "kronos_model_swaps_total", result="ok") == 1
        assert d.forecaster.model_version == "v2"
        assert metric(d, "kronos_model_info", version="v2", mode="incremental") == 1
        served = [metric(d, "kronos_incremental_series_total", served=k) for k in ("warm", "rebuilt", "refreshed")]
        assert sum(served) == 120  # each forecast counted once, by how its series was served

    assert len(out) == 120
    _one_forecast_per_bar(out, series)
    for symbol, versions in _versions_by_symbol(out).items():
        first_v2 = versions.index("v2")
        assert 15 <= first_v2 <= 25, (symbol, versions)  # v1 before the swap ...
        assert versions == ["v1"] * first_v2 + ["v2"] * (40 - first_v2)  # ... v2 after it
        mine = sorted((f for f in out if f["symbol"] == symbol), key=lambda f: f["as_of"])
        fresh = _fresh_v2_means(settings, registry_root, symbol, series[symbol], first_v2)
        for f, expected in zip(mine[first_v2:], fresh, strict=True):
            model_means = {**f["mean"], "close": f.get("model_mean", f["mean"]["close"])}  # the model's own close
            got = np.asarray(
                [model_means[name] for name in ("open", "high", "low", "close", "volume", "amount")]
            ).T
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


async def test_corrupt_v3_is_refused_v2_keeps_serving_and_rollback_brings_v1_back(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, group_id: str, topics: Topics, registry_root: Path
) -> None:
    settings = _settings(
        kafka_bootstrap, redis_url, key_prefix, group_id, topics, registry_root,
        registry_poll_s=0.2, registry_hint=False,
    )  # fmt: skip
    reg = Registry(str(registry_root))
    series = _series(40)
    async with running_daemon(settings, None) as d:
        assert d.ops is not None
        await produce(kafka_bootstrap, topics.input, _chunk(series, 0, 10))
        await read_topic(kafka_bootstrap, topics.output, 30)
        reg.promote("v2")  # polling only
        await wait_until(lambda: _target(d) == "v2", 60, "v2 loaded by polling")
        await produce(kafka_bootstrap, topics.input, _chunk(series, 10, 20))
        await read_topic(kafka_bootstrap, topics.output, 60)

        publish(reg, "v3", broken_copy(TINY, registry_root.parent / "v3", "truncated"), promote=True)
        await wait_until(
            lambda: metric(d, "kronos_model_swaps_total", result="load_failed") >= 1, 60, "v3 refused"
        )
        await produce(kafka_bootstrap, topics.input, _chunk(series, 20, 30))
        await read_topic(kafka_bootstrap, topics.output, 90)
        assert await _http(d.ops.port, "/healthz") == 200 and await _http(d.ops.port, "/readyz") == 200
        assert d.forecaster is not None and d.forecaster.model_version == "v2"

        args = ["models", "--registry", str(registry_root), "rollback"]  # no hint: the daemon polls
        assert await asyncio.to_thread(cli_main, args) == 0  # v3 -> v2 (served already)
        assert await asyncio.to_thread(cli_main, args) == 0  # v2 -> v1
        await wait_until(lambda: _target(d) == "v1", 60, "v1 back after the rollback")
        await produce(kafka_bootstrap, topics.input, _chunk(series, 30, 40))
        out = forecasts(await read_topic(kafka_bootstrap, topics.output, 120, timeout_s=60))
        assert metric(d, "kronos_model_swaps_total", result="ok") == 2
        # the dashboard's swap log (GET /v1/events), newest first: the refused v3 never served
        assert [(s["old_version"], s["new_version"]) for s in d.swaps.recent()] == [("v2", "v1"), ("v1", "v2")]
        assert await _http(d.ops.port, "/readyz") == 200

    assert len(out) == 120
    _one_forecast_per_bar(out, series)
    for symbol, versions in _versions_by_symbol(out).items():
        assert versions == ["v1"] * 10 + ["v2"] * 20 + ["v1"] * 10, (symbol, versions)


ROOT = Path(__file__).resolve().parents[2]


def _python(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )


async def test_a_daemon_process_follows_models_promote_through_the_redis_hint(
    kafka_bootstrap: str,
    redis_url: str,
    key_prefix: str,
    group_id: str,
    topics: Topics,
    registry_root: Path,
    tmp_path: Path,
) -> None:
    """``kronos-stream run`` configured by KRONOS_MODEL__REGISTRY; ``kronos-stream models promote`` moves
    the pointer and sends the hint (the daemon would poll only after an hour)."""
    settings = _settings(kafka_bootstrap, redis_url, key_prefix, group_id, topics, registry_root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRONOS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    log = tmp_path / "daemon.log"
    series = _series(20)
    daemon = launch_daemon({**env, **settings_env(settings)}, log)
    try:
        await produce(kafka_bootstrap, topics.input, _chunk(series, 0, 10))
        before = forecasts(await read_topic(kafka_bootstrap, topics.output, 30, timeout_s=90))
        assert {f["model_version"] for f in before} == {"v1"}, log.read_text()[-3000:]
        promote = [
            "-m", "daemon.cli", "models", "--registry", str(registry_root), "--redis-url", redis_url,
            "--prefix", settings.redis.key_prefix, "promote", "v2",
        ]  # fmt: skip
        cli = _python(promote, env, tmp_path / "cli.log")
        assert await asyncio.to_thread(cli.wait, 60) == 0, (tmp_path / "cli.log").read_text()

        async def loaded() -> bool:
            return "model version ready" in log.read_text()

        await wait_until(loaded, 60, "the daemon process to load v2")
        await produce(kafka_bootstrap, topics.input, _chunk(series, 10, 20))
        out = forecasts(await read_topic(kafka_bootstrap, topics.output, 60, timeout_s=60))
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(daemon.wait, 30)
    assert code == 0, log.read_text()[-3000:]
    assert len(out) == 60
    _one_forecast_per_bar(out, series)
    for symbol, versions in _versions_by_symbol(out).items():
        assert versions == ["v1"] * 10 + ["v2"] * 10, (symbol, versions)
