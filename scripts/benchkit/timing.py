"""Timing calls against each other in one process."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def interleaved_rounds(calls: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Each call once per round, interleaved (so a slower moment of a shared machine falls on all of
    them alike), after one untimed warm-up call each; name -> seconds of each round."""
    for f in calls.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for name, f in calls.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return times
