"""A counting wrapper around the daemon's forecaster, for scripts/bench_load.py (incremental mode).

The daemon's /metrics say how many series each model call had, not how an incremental call served
them. The benchmark starts the daemon with ``KRONOS_MODEL__FACTORY=scripts.benchload.probe:build``
(the repository on ``PYTHONPATH``): the model is the one the daemon would build (kronos_core's engine over
``KRONOS_MODEL__*_DIR``, or ``BENCH_PROBE_INNER=module:callable``, e.g. the stub forecaster), and every
call tallies how each series was served:

- ``warm``: its token cache matched the warm session held in memory, so only the new bar(s) ran;
- ``rebuild``: a token cache but no matching warm session (evicted, never held): rebuilt from it;
- ``refresh``: new statistics and a re-encoded window (cold start, every ``refresh_every`` bars,
  a price beyond ``drift_sigma``, or the window outgrew the cache);
- ``exact``: an exact-mode series (no token cache involved).

After every call the running totals are written to ``BENCH_PROBE_FILE`` (JSON, replaced atomically;
about 0.1 ms a call), which the benchmark reads between bursts, with the session pool's own counters (sessions moved inside the
pool, evicted to make room for a batch's contiguous run of slots, capacity growths). A forecaster
without warm sessions (the stub) counts a matching token cache as warm.
"""

from __future__ import annotations

import importlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kronos_core.stream_types import SeriesForecast, SeriesWindow

KINDS = ("warm", "rebuild", "refresh", "exact")
POOL = ("moved", "evicted", "grown")  # the session pool's counters (kronos_core.session_pool.PoolCounters)


def classify(
    window: SeriesWindow, result: SeriesForecast, warm_before: str | None, has_pool: bool
) -> str:
    """How one series was served. ``warm_before``: the fingerprint of the warm session held for it
    before the call (None: none); ``has_pool``: whether the forecaster keeps warm sessions at all."""
    state = result.token_state
    if state is None:
        return "exact"
    if window.token_state is None or state.bars_since_refresh == 0:
        return "refresh"
    if not has_pool:
        return "warm"
    return "warm" if warm_before == window.token_state.fingerprint() else "rebuild"


class ProbeForecaster:
    """Delegates everything to ``inner``; counts how ``forecast`` served each series."""

    def __init__(self, inner: Any, out: Path | None) -> None:
        self.inner = inner
        self.out = out
        self.counts: Counter[str] = Counter({k: 0 for k in KINDS})
        self.calls = 0

    def __getattr__(self, name: str) -> Any:  # model_version, mode, max_context, drop, ...
        return getattr(self.inner, name)

    def _warm_sessions(self) -> dict[str, str] | None:
        pool = getattr(self.inner, "_pool", None)
        return getattr(pool, "fingerprints", None)

    def forecast(self, windows: Sequence[SeriesWindow], horizon: int) -> list[SeriesForecast]:
        sessions = self._warm_sessions()
        before = {w.series_id: sessions.get(w.series_id) for w in windows} if sessions is not None else {}
        results: list[SeriesForecast] = list(self.inner.forecast(windows, horizon))
        for w, r in zip(windows, results, strict=False):
            self.counts[classify(w, r, before.get(w.series_id), sessions is not None)] += 1
            if r.token_state is not None and sessions is not None:  # a later bar of it in the same call
                before[w.series_id] = r.token_state.fingerprint()  # meets the session this one left
        self.calls += 1
        self._write()
        return results

    def snapshot(self) -> dict[str, int]:
        counters = getattr(getattr(self.inner, "_pool", None), "counters", None)
        pool = {k: int(getattr(counters, k, 0)) for k in POOL}
        return {"calls": self.calls, **{k: int(self.counts[k]) for k in KINDS}, **pool}

    def _write(self) -> None:
        if self.out is None:
            return
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self.snapshot()))
        os.replace(tmp, self.out)


def read_counts(path: Path) -> dict[str, int]:
    """The totals a probe wrote (all zero before its first call)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    return {k: int(data.get(k, 0)) for k in ("calls", *KINDS, *POOL)}


def build(settings: Any) -> ProbeForecaster:
    """The KRONOS_MODEL__FACTORY entry point."""
    inner_path = os.environ.get("BENCH_PROBE_INNER")
    if inner_path:
        module_name, _, attr = inner_path.partition(":")
        inner = getattr(importlib.import_module(module_name), attr)(settings)
    else:
        from daemon.model.build import build_engine_forecaster

        inner = build_engine_forecaster(settings)
    out = os.environ.get("BENCH_PROBE_FILE")
    return ProbeForecaster(inner, Path(out) if out else None)
