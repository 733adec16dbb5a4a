"""Where online scoring keeps its pending forecasts, hourly score sums and calibration states: the
:class:`ScoreStore` interface and its in-process driver; the Redis driver is
:mod:`daemon.scoring.store_redis`.

The hourly sums merge into rolling aggregates over any window (``kronos-stream scores --hours 24``)."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from daemon.scoring.calibration import StoreKey
from daemon.scoring.paired import LossRow, MemoryLossLog
from kronos_core.scoring import ScoreAccumulator

log = structlog.get_logger("kronos.scoring")

_ARRAYS = ("n", "abs_err", "persist_err", "inside", "crps_n", "crps")


# -- accumulators <-> Redis hash fields -------------------------------------------------------------


def accumulator_fields(acc: ScoreAccumulator) -> dict[str, float]:
    """The running sums as flat hash fields (added with HINCRBYFLOAT)."""
    fields: dict[str, float] = {"forecasts": float(acc.forecasts), "nonfinite": float(acc.nonfinite)}
    for name in _ARRAYS:
        for k, v in enumerate(getattr(acc, name)):
            fields[f"{name}.{k}"] = float(v)
    for i in range(len(acc.levels)):
        for k, v in enumerate(acc.pinball[i]):
            fields[f"pinball.{i}.{k}"] = float(v)
    return fields


def accumulator_from_fields(raw: dict[Any, Any]) -> ScoreAccumulator:
    """The inverse of :func:`accumulator_fields` (plus the ``shape`` field)."""
    text = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()}  # fmt: skip
    shape = json.loads(text["shape"])
    acc = ScoreAccumulator(horizon=int(shape["horizon"]), levels=tuple(shape["levels"]))
    acc.forecasts = int(float(text.get("forecasts", 0)))
    acc.nonfinite = int(float(text.get("nonfinite", 0)))
    for name in _ARRAYS:
        getattr(acc, name)[:] = [float(text.get(f"{name}.{k}", 0.0)) for k in range(acc.horizon)]
    for i in range(len(acc.levels)):
        acc.pinball[i] = [float(text.get(f"pinball.{i}.{k}", 0.0)) for k in range(acc.horizon)]
    return acc


def shape_field(acc: ScoreAccumulator) -> str:
    return json.dumps({"horizon": acc.horizon, "levels": list(acc.levels)})


def hour_bucket(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y%m%d%H")


def hour_buckets(now: float, hours: int) -> list[str]:
    start = datetime.fromtimestamp(now, UTC)
    return [(start - timedelta(hours=h)).strftime("%Y%m%d%H") for h in range(hours)]


# -- where pending forecasts and score sums live ---------------------------------------------------


class ScoreStore(ABC):
    """Pending forecasts per symbol and hourly score sums per model version."""

    @abstractmethod
    async def pending(self, symbols: Sequence[str]) -> dict[str, list[bytes]]: ...

    @abstractmethod
    async def commit(
        self,
        changes: dict[str, tuple[int, bytes]],
        sums: dict[str, ScoreAccumulator],
        *,
        cap: int,
        now: float,
        calibration: dict[tuple[str, str], dict[str, Any]] | None = None,
        losses: Sequence[LossRow] = (),
    ) -> None:
        """Per symbol drop the first ``n`` pending forecasts and append the new one (at most ``cap``
        kept); add ``sums`` (per version) to the hour of ``now``; replace the ``calibration`` states
        (per (model version, symbol or POOLED)); add the per-forecast ``losses``
        (:mod:`daemon.scoring.paired`); all in one step."""

    @abstractmethod
    async def calibration(self, keys: Sequence[StoreKey]) -> dict[StoreKey, dict[str, Any]]:
        """The stored publisher states of ``keys`` ((model version, symbol or POOLED); version None: the
        unversioned keys of older releases, read only); absent keys are left out."""

    @abstractmethod
    async def read(
        self, versions: Sequence[str] | None, hours: int, now: float
    ) -> dict[str, ScoreAccumulator]:
        """Per version (all when None) the merged sums of the last ``hours`` hours."""

    async def close(self) -> None:  # noqa: B027 - optional
        return None


class MemoryScoreStore(ScoreStore):
    """In this process (the demo, unit tests)."""

    def __init__(self) -> None:
        self._pending: dict[str, list[bytes]] = {}
        self._sums: dict[tuple[str, str], ScoreAccumulator] = {}
        self._calibration: dict[StoreKey, bytes] = {}
        self.losses = MemoryLossLog()

    async def calibration(self, keys: Sequence[StoreKey]) -> dict[StoreKey, dict[str, Any]]:
        return {k: json.loads(self._calibration[k]) for k in keys if k in self._calibration}

    async def pending(self, symbols: Sequence[str]) -> dict[str, list[bytes]]:
        return {s: list(self._pending.get(s, [])) for s in symbols}

    async def commit(
        self,
        changes: dict[str, tuple[int, bytes]],
        sums: dict[str, ScoreAccumulator],
        *,
        cap: int,
        now: float,
        calibration: dict[tuple[str, str], dict[str, Any]] | None = None,
        losses: Sequence[LossRow] = (),
    ) -> None:
        self.losses.add(losses)
        for symbol, (drop, new) in changes.items():
            kept = self._pending.get(symbol, [])[drop:] + [new]
            self._pending[symbol] = kept[-cap:]
        for name, state in (calibration or {}).items():
            self._calibration[name] = json.dumps(state).encode()
        bucket = hour_bucket(now)
        for version, acc in sums.items():
            key = (version, bucket)
            held = self._sums.get(key)
            if held is None or (held.horizon, held.levels) != (acc.horizon, acc.levels):
                self._sums[key] = ScoreAccumulator.from_dict(acc.to_dict())
            else:
                held.merge(acc)

    async def read(
        self, versions: Sequence[str] | None, hours: int, now: float
    ) -> dict[str, ScoreAccumulator]:
        wanted = set(hour_buckets(now, hours))
        out: dict[str, ScoreAccumulator] = {}
        for (version, bucket), acc in sorted(self._sums.items()):
            if bucket in wanted and (versions is None or version in versions):
                merge_into(out, version, acc)
        return out


def merge_into(out: dict[str, ScoreAccumulator], version: str, acc: ScoreAccumulator) -> None:
    held = out.get(version)
    if held is None:
        out[version] = ScoreAccumulator.from_dict(acc.to_dict())
    elif (held.horizon, held.levels) == (acc.horizon, acc.levels):
        held.merge(acc)
    else:
        log.warning(
            "scores of one version with different horizons or levels; keeping the first", version=version
        )
