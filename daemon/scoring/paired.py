"""Per-forecast losses, kept per model version so that two versions can be compared forecast by forecast.

The hourly score sums (:mod:`daemon.scoring.scorer`) give means, not the paired series a
Diebold-Mariano test needs. So each scored forecast also leaves one row: its model version, symbol and
origin (the epoch ns of its bar), and three CRPS of the close on the same realised bars, each as a
fraction of the origin's last close and averaged over the horizon steps: of the model's own sample
paths (``crps``), of the published distribution (``published``: calibrated and guarded, when
calibration is on) and of the rolling-volatility walk (``walk``,
:mod:`kronos_core.evaluation.baselines`). Rows of two versions with the same (symbol, origin) were
scored on the same realised bars: those are the pairs.

Why the model's own CRPS is the one compared: the calibration is a state each version learns as it
goes, shared by all symbols (the pooled state) and carried from bar to bar, so differences of
published losses between two versions are correlated over long stretches and across symbols, which
the Diebold-Mariano variance (HAC over horizon - 1 lags, symbols independent) does not allow for: two
equal models then look different far too often. The models' own forecasts carry no such state.

Redis: ``{prefix}:losses:{version}``, a sorted set scored by origin (seconds), members
``symbol|origin_ns|crps|published_crps|walk_crps``; the newest ``keep`` are kept and the key expires with the score
sums. Written in the scorer's commit (same transaction). A replayed forecast writes the same member
again, so a replay adds nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kronos_core.evaluation.baselines import rw_vol_quantiles
from kronos_core.evaluation.distribution import crps as grid_crps
from kronos_core.scoring import crps_from_samples

Key = tuple[str, int]  # (symbol, origin epoch ns)


@dataclass(frozen=True, slots=True)
class LossRow:
    version: str
    symbol: str
    origin: int  # epoch ns of the forecast's bar
    crps: float  # mean over steps of the model's own close CRPS / last close
    walk: float  # the same for the rolling-volatility walk
    published: float  # the same for the published (calibrated, guarded) distribution

    def member(self) -> str:
        return f"{self.symbol}|{self.origin}|{self.crps!r}|{self.published!r}|{self.walk!r}"

    @classmethod
    def parse(cls, version: str, member: bytes | str) -> LossRow:
        text = member.decode() if isinstance(member, bytes) else member
        symbol, origin, crps, published, walk = text.rsplit("|", 4)
        return cls(version, symbol, int(origin), float(crps), float(walk), float(published))


def loss_row(
    symbol: str,
    pending: Any,  # daemon.scoring.pending.PendingForecast
    realised: np.ndarray,
    timestamps: Sequence[int],
    closes: Sequence[float],
    vol_window: int = 100,
) -> LossRow | None:
    """The row of one realised forecast (None when it has no sample paths or a non-finite score).
    ``timestamps``/``closes``: the symbol's bar ring (holds the origin; the walk's sigma comes from the
    closes up to it)."""
    y = np.asarray(realised, dtype=np.float64)
    last = float(pending.last_close)
    if pending.paths is None:
        return None
    model = crps_from_samples(np.asarray(pending.paths), y)
    published = model if pending.calibrated_paths is None else grid_crps(np.asarray(pending.calibrated_paths), y)
    i = int(np.searchsorted(np.asarray(timestamps, dtype=np.int64), pending.as_of))
    history = np.asarray(closes[: i + 1], dtype=np.float64)
    walk = grid_crps(rw_vol_quantiles(history, len(y), vol_window), y)
    if last <= 0:
        return None
    a, b, c = (float(np.mean(x)) / last for x in (model, walk, published))
    if not (np.isfinite(a) and np.isfinite(b) and np.isfinite(c)):
        return None
    return LossRow(pending.version, symbol, int(pending.as_of), a, b, c)


class MemoryLossLog:
    """Per version, the newest ``keep`` rows (the demo, tests)."""

    def __init__(self, keep: int = 5000) -> None:
        self.keep = keep
        self._rows: dict[str, dict[Key, LossRow]] = {}

    def add(self, rows: Iterable[LossRow]) -> None:
        touched = set()
        for row in rows:
            self._rows.setdefault(row.version, {})[(row.symbol, row.origin)] = row
            touched.add(row.version)
        for version in touched:
            held = self._rows[version]
            if len(held) > self.keep:  # the oldest origins go, as ZREMRANGEBYRANK drops them in Redis
                for key in sorted(held, key=lambda k: (k[1], k[0]))[: len(held) - self.keep]:
                    del held[key]

    async def read(self, version: str) -> dict[Key, LossRow]:
        return dict(self._rows.get(version, {}))


class RedisLossLog:
    """The rows in Redis (see the module docstring); written through the scorer's pipeline."""

    def __init__(self, client: Any, key_prefix: str, retention_s: int, keep: int = 5000) -> None:
        self.client = client  # also the decider's lock (daemon/model/promotion.py)
        self._prefix = key_prefix
        self._retention_s = retention_s
        self.keep = keep

    def key(self, version: str) -> str:
        return f"{self._prefix}:losses:{version}"

    def add_to(self, pipe: Any, rows: Sequence[LossRow]) -> None:
        """Queue the rows' writes on ``pipe`` (the scorer's commit)."""
        by_version: dict[str, dict[str, float]] = {}
        for row in rows:
            by_version.setdefault(row.version, {})[row.member()] = row.origin / 1e9
        for version, members in by_version.items():
            key = self.key(version)
            pipe.zadd(key, members)
            pipe.zremrangebyrank(key, 0, -(self.keep + 1))
            pipe.expire(key, self._retention_s)

    async def read(self, version: str) -> dict[Key, LossRow]:
        members = await self.client.zrange(self.key(version), 0, -1)
        rows = (LossRow.parse(version, m) for m in members)
        return {(r.symbol, r.origin): r for r in rows}


def paired(a: dict[Key, LossRow], b: dict[Key, LossRow]) -> dict[str, list[tuple[LossRow, LossRow]]]:
    """Per symbol, in origin order, the rows of ``a`` and ``b`` scored on the same bars."""
    out: dict[str, list[tuple[LossRow, LossRow]]] = {}
    for key in sorted(set(a) & set(b), key=lambda k: (k[0], k[1])):
        out.setdefault(key[0], []).append((a[key], b[key]))
    return out
