"""Model versions of known quality for the challenger tests, and a stream they can be right or wrong about.

The stream: per symbol, log returns ``drift + N(0, sigma)`` per bar (a steady trend the
rolling-volatility walk, which has zero drift, cannot see). A version is a stub forecaster whose sample
paths follow its own ``drift``/``sigma`` (from the ``stub`` block of its manifest): the version that
knows the stream's drift and sigma is better than one that does not, and beats the walk; one with the
opposite drift is worse; two with the same parameters are equal (they differ only in their seeds).

The registry holds the tiny checkpoint's files for every version (so fetching, checksums and the
follower work as in production); :func:`quality_stub` replaces only how a fetched version is built.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from kronos_contract.registry import Registry
from kronos_core.stream_types import SeriesForecast, SeriesWindow, StreamMode
from tests.support.hotswap import TINY, publish
from tests.support.launcher import T0, Record, bar_record, encode

DRIFT, SIGMA = 0.003, 0.001  # the stream's


class QualityStub:
    """Sample paths ``last * exp(cumsum(drift + sigma * N(0, 1)))`` seeded by the window."""

    def __init__(self, version: str, drift: float, sigma: float, settings: Any, delay_s: float = 0.0) -> None:
        self.model_version = version
        self.mode: StreamMode = settings.mode
        self.max_context = settings.model.max_context
        self.quantile_levels = tuple(settings.model.quantile_levels)
        self.samples = 16
        self.drift, self.sigma = drift, sigma
        self.delay_s = delay_s  # each call takes this much longer (a slow model)

    def forecast(self, windows: Sequence[SeriesWindow], horizon: int) -> list[SeriesForecast]:
        if self.delay_s and not windows[0].series_id.startswith("__smoke__"):
            time.sleep(self.delay_s)
        out = []
        for w in windows:
            rng = np.random.default_rng(w.seed)
            steps = self.drift + self.sigma * rng.standard_normal((self.samples, horizon, 1))  # [S, H, 1]
            samples = w.values[-1] * np.exp(np.cumsum(steps, axis=1))  # [S, H, 6]
            out.append(SeriesForecast(
                series_id=w.series_id, mean=samples.mean(axis=0), samples=samples,
                quantiles=np.quantile(samples, self.quantile_levels, axis=0), quantile_levels=self.quantile_levels,
                token_state=None, timings_ms={"total": 0.0},
            ))  # fmt: skip
        return out


def quality_stub(settings: Any) -> QualityStub:
    """Stands in for ``build_engine_forecaster`` of a fetched version: its manifest's ``stub`` block."""
    manifest = json.loads((Path(settings.model.predictor_dir).parent / "manifest.json").read_text())
    stub = manifest["stub"]
    return QualityStub(
        manifest["version"], float(stub["drift"]), float(stub["sigma"]), settings, float(stub.get("delay_s", 0.0))
    )


def registry_of(
    root: Path, versions: dict[str, tuple[float, float]], champion: str, delays: dict[str, float] | None = None
) -> Registry:
    """A registry folder with ``versions`` (name -> (drift, sigma); ``delays``: name -> seconds each
    call takes longer); ``champion`` promoted."""
    reg = Registry(str(root))
    for name in [champion, *(v for v in versions if v != champion)]:
        drift, sigma = versions[name]
        stub = {"drift": drift, "sigma": sigma, "delay_s": (delays or {}).get(name, 0.0)}
        publish(reg, name, TINY, promote=name == champion, stub=stub)
    return reg


def trending_series(symbol: str, n: int, seed: int, start: datetime = T0) -> list[Record]:
    rng = random.Random(f"{symbol}-{seed}")
    price = 20.0 + 60 * rng.random()
    out = []
    for i in range(n):
        price *= math.exp(DRIFT + rng.gauss(0, SIGMA))
        out.append(encode(bar_record(symbol, start + timedelta(minutes=i), round(price, 6))))
    return out


def by_round(series: dict[str, list[Record]], start: int, stop: int) -> list[list[Record]]:
    """The bars start..stop of every symbol, one list per bar index (one round of the stream)."""
    return [[bars[i] for bars in series.values() if i < len(bars)] for i in range(start, stop)]
