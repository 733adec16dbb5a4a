"""Seeding a new version's calibration from a backtest on the archive (daemon/scoring/seeding.py): the
path taken (backtest, or the champion's state) and its count, with the score store in memory and a stub
model (the path through the real daemon, Kafka and Redis: tests/scenarios/test_calibration_e2e.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry

from daemon.scoring.scorer import build_scorer
from daemon.scoring.seeding import Seeder, needed_bars
from daemon.scoring.store import MemoryScoreStore
from daemon.settings import Settings, load_settings
from daemon.state.memory import MemoryStateStore
from kronos_contract.archive import write_bars
from kronos_core.evaluation.publisher import POOLED
from tests.support.stub_forecaster import StubForecaster

H, CONTEXT, VOL = 3, 16, 20
SYMBOLS = ["AAA", "BBB", "CCC"]


def _settings(tmp_path: Path, **scoring: Any) -> Settings:
    return load_settings(
        model={"max_context": CONTEXT + H, "horizon": H},
        scoring={"vol_window": VOL, "seed_origins": 30, **scoring},
        archive={"root": str(tmp_path / "archive")},
        http_port=None,
    )


def _archive(tmp_path: Path, bars: dict[str, int]) -> None:
    rows = []
    t0 = pd.Timestamp("2024-03-01T00:00Z")
    for i, (symbol, n) in enumerate(bars.items()):
        closes = 20.0 * np.exp(np.cumsum(np.random.default_rng(i).normal(0, 0.01 * (i + 1), n)))
        for t in range(n):
            c = float(closes[t])
            rows.append({"symbol": symbol, "ts": t0 + pd.Timedelta(hours=t), "open": c, "high": c, "low": c,
                         "close": c, "volume": 1.0, "amount": c})  # fmt: skip
    write_bars(str(tmp_path / "archive"), pd.DataFrame(rows), name="bars-p0-o0-1")


async def _seed(settings: Settings, forecaster: StubForecaster) -> tuple[str | None, Any, CollectorRegistry]:
    registry = CollectorRegistry()
    scorer = build_scorer(settings, MemoryStateStore("k", CONTEXT + H), registry)
    assert scorer is not None and isinstance(scorer.store, MemoryScoreStore)
    seeder = Seeder(settings, lambda: scorer, lambda: SYMBOLS, registry)

    async def blocking(fn: Callable[[], Any]) -> Any:
        return await asyncio.to_thread(fn)

    path = await seeder(forecaster.model_version, forecaster, blocking)
    return path, scorer, registry


def _count(registry: CollectorRegistry, path: str, reason: str) -> float:
    return registry.get_sample_value("kronos_calibration_seeds_total", {"path": path, "reason": reason}) or 0.0


async def test_a_new_version_is_seeded_from_a_backtest_on_the_archive(tmp_path: Path) -> None:
    """Two symbols have enough bars, one too few: the two get v2's own states (30 realised forecasts
    each, on the newest bars), the third is left to copy the champion's; the pooled state has all."""
    want = needed_bars(CONTEXT, H, VOL, 30)
    _archive(tmp_path, {"AAA": want + 200, "BBB": want, "CCC": want - 1})
    path, scorer, registry = await _seed(_settings(tmp_path), StubForecaster(max_context=CONTEXT + H, model_version="v2"))
    assert path == "backtest" and _count(registry, "backtest", "ok") == 1
    stored = await scorer.store.calibration([("v2", s) for s in [*SYMBOLS, POOLED]])
    assert {k[1]: v["count"] for k, v in stored.items()} == {"AAA": 30, "BBB": 30, POOLED: 60}
    # the scorer reads them as v2's own: the seeded symbols publish with their own state at once
    await scorer.calibrator.load(scorer.store, "v2", SYMBOLS)
    assert scorer.calibrator.publisher_of("v2").scope("AAA")[1] == "pooled"  # 30 < calibration_min (50)
    assert scorer.calibrator.publisher_of("v2").count("AAA") == 30


async def test_without_an_archive_or_bars_or_time_the_new_version_copies_the_champion(tmp_path: Path) -> None:
    stub = StubForecaster(max_context=CONTEXT + H, model_version="v2")
    path, scorer, registry = await _seed(_settings(tmp_path), stub)  # no archive at all
    assert path == "champion" and _count(registry, "champion", "no_archive") == 1 and not stub.calls
    assert await scorer.store.calibration([("v2", POOLED)]) == {}

    _archive(tmp_path, {s: 30 for s in SYMBOLS})
    path, scorer, registry = await _seed(_settings(tmp_path), stub)
    assert path == "champion" and _count(registry, "champion", "too_few_bars") == 1 and not stub.calls

    _archive(tmp_path, {s: 400 for s in SYMBOLS})
    path, scorer, registry = await _seed(_settings(tmp_path, seed_budget_s=1e-6), stub)
    assert path == "champion" and _count(registry, "champion", "over_budget") == 1
    assert await scorer.store.calibration([("v2", POOLED)]) == {}

    path, _, registry = await _seed(_settings(tmp_path, seed_origins=0), stub)
    assert path == "champion" and _count(registry, "champion", "off") == 1

    broken = StubForecaster(max_context=CONTEXT + H, model_version="v2", fail_symbols=["AAA"])
    path, _, registry = await _seed(_settings(tmp_path), broken)
    assert path == "champion" and _count(registry, "champion", "error") == 1
