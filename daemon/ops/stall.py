"""Partitions that do not advance while they have lag: whatever holds them (a batch that cannot be
read, a hanging transaction upstream, a bug), readiness and ``kronos_partition_stalled`` say so."""

from __future__ import annotations

from typing import Any

from daemon.io.bus import Partition


class StallWatch:
    """Fed the position and lag of every owned partition now and then (:meth:`observe`); a partition
    is stalled once it has had lag, at an unchanged position, for ``stall_s`` seconds."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self._since: dict[Partition, tuple[int, float]] = {}  # position, and since when it is unchanged with lag
        self.stalled: dict[Partition, dict[str, Any]] = {}

    def observe(self, progress: dict[Partition, tuple[int, int]], now: float) -> dict[Partition, dict[str, Any]]:
        """Update from ``progress`` (partition -> (position, lag)) at time ``now`` (seconds, monotonic);
        returns the stalled partitions with their position, lag and how long they have been stuck."""
        since = {}
        stalled = {}
        for p, (position, lag) in progress.items():
            known = self._since.get(p)
            if lag <= 0 or known is None or known[0] != position:
                since[p] = (position, now)
                continue
            since[p] = known
            stuck_s = now - known[1]
            if stuck_s >= self.stall_s:
                stalled[p] = {"offset": position, "lag": lag, "stuck_s": round(stuck_s, 1)}
        self._since = since
        self.stalled = stalled
        return stalled
