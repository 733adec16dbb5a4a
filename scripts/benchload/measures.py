"""What the scenarios measure with: percentiles, and differences between two readings of /metrics or the probe."""

from __future__ import annotations

import numpy as np

from .process import Run


def percentiles(values: list[float], qs: tuple[int, ...] = (50, 90, 99)) -> dict[str, float | None]:
    if not values:
        empty: dict[str, float | None] = {f"p{q}": None for q in qs}
        empty["max"] = None
        return empty
    arr = np.asarray(values, dtype=float)
    out: dict[str, float | None] = {f"p{q}": round(float(np.percentile(arr, q)), 1) for q in qs}
    out["max"] = round(float(arr.max()), 1)
    return out


def metric_delta(after: dict[str, float], before: dict[str, float], name: str) -> float:
    """How much a counter (or a histogram's _sum/_count) grew between two /metrics readings."""
    return after.get(name, 0.0) - before.get(name, 0.0)


def phase_ms_per_forecast(after: dict[str, float], before: dict[str, float], forecasts: int) -> dict[str, float]:
    """The daemon's own time per loop phase (``kronos_loop_phase_seconds{phase}``) between two
    readings, in ms per forecast."""
    prefix = 'kronos_loop_phase_seconds_sum{phase="'
    return {
        name.removeprefix(prefix).removesuffix('"}'): round(metric_delta(after, before, name) / forecasts * 1e3, 4)
        for name in after
        if name.startswith(prefix) and forecasts
    }


def count_delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """The probe's tallies (warm, rebuild, refresh...) between two readings."""
    return {k: after.get(k, 0) - before.get(k, 0) for k in after}


def served_counts(run: Run) -> dict[str, int] | None:
    """The probe's running tallies of how the daemon's incremental calls served each series (None
    in exact mode, where no probe runs)."""
    if run.mode != "incremental":
        return None
    from .probe import read_counts

    return read_counts(run.probe_file)
