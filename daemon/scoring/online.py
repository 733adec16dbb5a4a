"""Online scoring: every published forecast is scored once its horizon bars have arrived.

How it works, per processed bar (a hook of the loop, after the bar and its forecast are stored):

1. the symbol's pending forecasts (oldest first) are read from the store; each one whose ``horizon``
   bars after its ``as_of`` bar are in the symbol's bar ring is scored against them with
   :mod:`kronos_core.scoring` (the module the trainer's gate uses too): per-step absolute error of the
   close mean, CRPS of the close sample paths, pinball loss at the quantile levels, coverage of the
   outermost band (p10-p90), and the same error for persistence (the last close);
2. the new forecast's close paths, mean and quantiles join the pending list.

Realised bars are matched by count (step k = the k-th bar after the forecast's bar), which is what the
model forecasts whatever the calendar; a forecast whose bar has left the ring before its horizon was
complete is dropped and counted (``kronos_scoring_expired_forecasts_total``). Scoring never stops the
loop: a failure is logged and counted (``kronos_scoring_errors_total``).

Redis keys (``{prefix}`` = ``KRONOS_REDIS__KEY_PREFIX``):

=========================================  ======  ===========================================================
``{prefix}:scoring:pending:{symbol}``      list    forecasts waiting for their horizon, oldest first (JSON,
                                                   arrays as base64 float64); at most ``horizon + 2``
``{prefix}:scores:{version}:{YYYYMMDDHH}`` hash    running sums of one model version's scores for the forecasts
                                                   scored in that UTC hour (wall clock): the
                                                   :class:`~kronos_core.scoring.ScoreAccumulator` fields,
                                                   ``n.3``, ``abs_err.3``, ``pinball.0.3``...; expire after
                                                   ``KRONOS_SCORING__RETENTION_H``
``{prefix}:scores:versions``               set     model versions with scores
=========================================  ======  ===========================================================

The hourly sums merge into rolling aggregates over any window (``kronos-stream scores --hours 24``).
A version's bands with and without calibration (:mod:`daemon.scoring.calibration`) are both kept: the
published ones under ``{version}``, the model's own under ``{version}@model`` (only when calibration
is on). Prometheus gets the same sums, labelled by model version and horizon step only (no symbol).
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from daemon.scoring.calibration import GuardedCalibrator, StoreKey, build_calibrator, distribution_fields
from daemon.scoring.paired import LossRow, MemoryLossLog, RedisLossLog, loss_row
from daemon.state.redis_access import explain
from kronos_core.evaluation.publisher import POOLED, Ticket, b64_floats, floats_from_b64
from kronos_core.scoring import ScoreAccumulator, level_key
from kronos_core.stream_types import SeriesForecast, SeriesWindow

log = structlog.get_logger("kronos.scoring")

CLOSE = 3  # index of the close among the six features
MODEL_BANDS_SUFFIX = "@model"  # scores of the model's own bands, when calibration changes the published ones
_ARRAYS = ("n", "abs_err", "persist_err", "inside", "crps_n", "crps")


@dataclass
class PendingForecast:
    """What scoring needs of one published forecast (close only)."""

    version: str
    as_of: int  # epoch ns of the forecast's bar
    last_close: float
    levels: tuple[float, ...]
    mean: np.ndarray  # [H]
    quantiles: np.ndarray  # [Q, H] as published (calibrated when calibration is on)
    model_quantiles: np.ndarray  # [Q, H] the model's own
    paths: np.ndarray | None  # [S, H] the model's sample paths
    calibrated_paths: np.ndarray | None = None  # [J, H] the published distribution's grid (guarded)
    ticket: dict[str, Any] | None = None  # what the publisher needs back once realised

    @property
    def horizon(self) -> int:
        return int(self.mean.shape[0])

    def encode(self) -> bytes:
        h = self.horizon
        record: dict[str, Any] = {
            "v": self.version,
            "t": self.as_of,
            "c": self.last_close,
            "l": list(self.levels),
            "h": h,
            "m": b64_floats(self.mean),
            "q": b64_floats(self.quantiles),
            "mq": b64_floats(self.model_quantiles),
        }
        if self.paths is not None:
            record["s"] = int(self.paths.shape[0])
            record["p"] = b64_floats(self.paths)
        if self.calibrated_paths is not None:
            record["j"] = int(self.calibrated_paths.shape[0])
            record["cp"] = b64_floats(self.calibrated_paths)
        if self.ticket is not None:
            record["g"] = self.ticket
        return json.dumps(record, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> PendingForecast:
        d = json.loads(raw)
        h, q = int(d["h"]), len(d["l"])
        s = d.get("s")
        return cls(
            version=str(d["v"]),
            as_of=int(d["t"]),
            last_close=float(d["c"]),
            levels=tuple(float(x) for x in d["l"]),
            mean=floats_from_b64(d["m"], (h,)),
            quantiles=floats_from_b64(d["q"], (q, h)),
            model_quantiles=floats_from_b64(d["mq"], (q, h)),
            paths=None if s is None else floats_from_b64(d["p"], (int(s), h)),
            calibrated_paths=None if "cp" not in d else floats_from_b64(d["cp"], (int(d.get("j", s)), h)),
            ticket=d.get("g"),
        )


def pending_from(
    window: SeriesWindow,
    result: SeriesForecast,
    version: str,
    model_quantiles: np.ndarray | None = None,
    calibrated_paths: np.ndarray | None = None,
    ticket: dict[str, Any] | None = None,
) -> PendingForecast:
    """The pending record of a forecast as published (``result``), with the model's own close
    quantiles when calibration changed the published ones."""
    q = np.asarray(result.quantiles[:, :, CLOSE], dtype=np.float64)
    samples = result.samples
    paths = np.asarray(samples[:, :, CLOSE], dtype=np.float64) if samples.ndim == 3 and len(samples) else None
    return PendingForecast(
        version=version,
        as_of=int(np.asarray(window.timestamps[-1:], dtype="datetime64[ns]").astype(np.int64)[0]),
        last_close=float(window.values[-1, CLOSE]),
        levels=tuple(float(x) for x in result.quantile_levels),
        mean=np.asarray(result.mean[:, CLOSE], dtype=np.float64),
        quantiles=q,
        model_quantiles=q.copy()
        if model_quantiles is None
        else np.asarray(model_quantiles, dtype=np.float64),
        paths=paths,
        calibrated_paths=calibrated_paths,
        ticket=ticket,
    )


EXPIRED = "expired"


def realised_closes(timestamps: Sequence[int], closes: Sequence[float], pending: PendingForecast) -> Any:
    """The ``horizon`` closes after the forecast's bar in the ring; None while they have not all
    arrived; EXPIRED when the forecast's bar is no longer in the ring."""
    ts = np.asarray(timestamps, dtype=np.int64)
    i = int(np.searchsorted(ts, pending.as_of))
    if i >= len(ts) or ts[i] != pending.as_of:
        return EXPIRED if len(ts) and pending.as_of < ts[-1] else None
    after = closes[i + 1 : i + 1 + pending.horizon]
    if len(after) < pending.horizon:
        return None
    return np.asarray(after, dtype=np.float64)


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
                _merge_into(out, version, acc)
        return out


def _merge_into(out: dict[str, ScoreAccumulator], version: str, acc: ScoreAccumulator) -> None:
    held = out.get(version)
    if held is None:
        out[version] = ScoreAccumulator.from_dict(acc.to_dict())
    elif (held.horizon, held.levels) == (acc.horizon, acc.levels):
        held.merge(acc)
    else:
        log.warning(
            "scores of one version with different horizons or levels; keeping the first", version=version
        )


class RedisScoreStore(ScoreStore):
    """In Redis, beside the daemon's state (its own connection)."""

    def __init__(self, client: Any, key_prefix: str, retention_h: int, acl_user: str | None = None) -> None:
        from redis.asyncio.cluster import RedisCluster

        self._client = client
        self.acl_user = acl_user  # named in a NOPERM refusal (None: the default user)
        self._prefix = key_prefix
        self._retention_s = retention_h * 3600
        self.cluster = isinstance(client, RedisCluster)
        self.losses = RedisLossLog(client, key_prefix, self._retention_s)

    @classmethod
    def from_url(
        cls,
        url: str,
        key_prefix: str,
        retention_h: int,
        password: str | None = None,
        timeout_s: float = 5.0,
        cluster: bool = False,
        username: str | None = None,
        ssl_ca_certs: str | None = None,
    ) -> RedisScoreStore:
        """``cluster``: a Redis Cluster (``KRONOS_REDIS__CLUSTER``; ``url`` names any node); ``username``: an
        ACL user; ``ssl_ca_certs``: the CA of a ``rediss://`` server."""
        import redis.asyncio as aioredis
        from redis.asyncio.cluster import RedisCluster

        extra: dict[str, Any] = {} if password is None else {"password": password}
        extra.update(socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        if username:
            extra["username"] = username
        if ssl_ca_certs:
            extra["ssl_ca_certs"] = ssl_ca_certs
        client = RedisCluster.from_url(url, **extra) if cluster else aioredis.Redis.from_url(url, **extra)
        return cls(client, key_prefix, retention_h, acl_user=username)

    @classmethod
    def from_settings(cls, settings: Any) -> RedisScoreStore:
        """The store of ``KRONOS_REDIS__*`` and ``KRONOS_SCORING__RETENTION_H``."""
        from daemon.state.redis_access import client_options

        r = settings.redis
        options = client_options(r)
        return cls.from_url(
            r.url, r.key_prefix, settings.scoring.retention_h, options.get("password"), r.socket_timeout_s,
            cluster=r.cluster, username=options.get("username"), ssl_ca_certs=options.get("ssl_ca_certs"),
        )  # fmt: skip

    def _pipeline(self, transaction: bool = False) -> Any:
        # On a cluster the commands are split by node: every command names one key, none is multi-key,
        # but the round's writes are then not one transaction.
        return self._client.pipeline() if self.cluster else self._client.pipeline(transaction=transaction)

    def pending_key(self, symbol: str) -> str:
        return f"{self._prefix}:scoring:pending:{symbol}"

    def sums_key(self, version: str, bucket: str) -> str:
        return f"{self._prefix}:scores:{version}:{bucket}"

    @property
    def versions_key(self) -> str:
        return f"{self._prefix}:scores:versions"

    def calibration_key(self, version: str | None, key: str) -> str:
        """``{prefix}:calibration:{version}:{symbol}`` and ``{prefix}:calibration-pooled:{version}``
        (version None: the unversioned keys of older releases)."""
        if version is None:
            return f"{self._prefix}:calibration-pooled" if key == POOLED else f"{self._prefix}:calibration:{key}"
        if key == POOLED:
            return f"{self._prefix}:calibration-pooled:{version}"
        return f"{self._prefix}:calibration:{version}:{key}"

    async def calibration(self, keys: Sequence[StoreKey]) -> dict[StoreKey, dict[str, Any]]:
        async with self._pipeline() as pipe:
            for k in keys:
                pipe.get(self.calibration_key(*k))
            replies = await pipe.execute()
        return {k: json.loads(raw) for k, raw in zip(keys, replies, strict=True) if raw}

    async def pending(self, symbols: Sequence[str]) -> dict[str, list[bytes]]:
        async with self._pipeline() as pipe:
            for s in symbols:
                pipe.lrange(self.pending_key(s), 0, -1)
            replies = await pipe.execute()
        return dict(zip(symbols, replies, strict=True))

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
        bucket = hour_bucket(now)
        async with self._pipeline(transaction=True) as pipe:
            for (version, key), state in (calibration or {}).items():
                # kept as long as the scores: a symbol that stops trading leaves no key behind
                pipe.set(self.calibration_key(version, key), json.dumps(state, separators=(",", ":")), ex=self._retention_s)
            for symbol, (drop, new) in changes.items():
                key = self.pending_key(symbol)
                if drop:
                    pipe.ltrim(key, drop, -1)
                pipe.rpush(key, new)
                pipe.ltrim(key, -cap, -1)
                pipe.expire(key, self._retention_s)  # a symbol that stops trading leaves no key behind
            for version, acc in sums.items():
                key = self.sums_key(version, bucket)
                pipe.hset(key, "shape", shape_field(acc))
                for field, value in accumulator_fields(acc).items():
                    if value:
                        pipe.hincrbyfloat(key, field, value)
                pipe.expire(key, self._retention_s)
                pipe.sadd(self.versions_key, version)
            self.losses.add_to(pipe, losses)
            await pipe.execute()

    async def versions(self) -> list[str]:
        members = await self._client.smembers(self.versions_key)
        return sorted(m.decode() if isinstance(m, bytes) else m for m in members)

    async def read(
        self, versions: Sequence[str] | None, hours: int, now: float
    ) -> dict[str, ScoreAccumulator]:
        names = list(versions) if versions is not None else await self.versions()
        buckets = hour_buckets(now, hours)
        async with self._pipeline() as pipe:
            for v in names:
                for b in buckets:
                    pipe.hgetall(self.sums_key(v, b))
            replies = await pipe.execute()
        out: dict[str, ScoreAccumulator] = {}
        for i, v in enumerate(names):
            for raw in replies[i * len(buckets) : (i + 1) * len(buckets)]:
                if raw:
                    _merge_into(out, v, accumulator_from_fields(raw))
        return out

    async def close(self) -> None:
        await self._client.aclose()


# -- Prometheus ------------------------------------------------------------------------------------


_STEP_SUMS = (
    ("n", "kronos_score_steps", "Scored (forecast, horizon step) pairs."),
    ("abs_err", "kronos_score_close_abs_error", "Sum of |forecast mean - realised close| (price units)."),
    (
        "persist_err",
        "kronos_score_persistence_abs_error",
        "Sum of |last close - realised close| (price units).",
    ),
    ("crps", "kronos_score_crps", "Sum of the close CRPS of the sample paths."),
    ("inside", "kronos_score_band_hits", "Realised closes inside the outermost published band (p10-p90)."),
)


class ScoreMetrics:
    """Score sums per model version and horizon step (rates of sums give rolling means in PromQL), and
    the since-start aggregates as gauges."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        vs = ["model_version", "step"]
        self.forecasts = Counter(
            "kronos_scored_forecasts",
            "Forecasts scored against their realised horizon.",
            ["model_version"],
            registry=r,
        )
        self.expired = Counter(
            "kronos_scoring_expired_forecasts",
            "Forecasts dropped unscored: their bar left the ring before the horizon was complete.",
            registry=r,
        )
        self.errors = Counter("kronos_scoring_errors", "Rounds whose scoring failed (logged).", registry=r)
        self.step_sums = {  # accumulator field -> its counter by (model_version, step)
            field: Counter(name, text, vs, registry=r) for field, name, text in _STEP_SUMS
        }
        self.pinball = Counter(
            "kronos_score_pinball_loss", "Sum of the close pinball loss, by quantile level.",
            ["model_version", "level"], registry=r,
        )  # fmt: skip
        gv = ["model_version"]
        self.mae = Gauge("kronos_score_close_mae", "Close MAE since start, all steps.", gv, registry=r)
        self.persistence_mae = Gauge(
            "kronos_score_persistence_close_mae",
            "Persistence close MAE since start, all steps.",
            gv,
            registry=r,
        )
        self.skill = Gauge(
            "kronos_score_skill", "1 - model / persistence since start (MAE; CRPS for metric=crps).",
            ["model_version", "metric"], registry=r,
        )  # fmt: skip
        self.coverage = Gauge(
            "kronos_score_band_coverage",
            "Share of realised closes inside the outermost band since start (bands=published or model).",
            ["model_version", "bands"],
            registry=r,
        )
        self.brier_up = Counter(
            "kronos_score_brier_up", "Sum of (published P(up) - outcome)^2 by horizon step; / kronos_score_up_forecasts "
            "gives the Brier score.", vs, registry=r,
        )  # fmt: skip
        self.up_forecasts = Counter(
            "kronos_score_up_forecasts", "Published P(up) forecasts scored, by model version and P(up) bin (reliability).",
            ["model_version", "bin"], registry=r,
        )  # fmt: skip
        self.up_outcomes = Counter(
            "kronos_score_up_outcomes", "Of those, the ones whose close went up (observed frequency per bin).",
            ["model_version", "bin"], registry=r,
        )  # fmt: skip
        self._totals: dict[str, ScoreAccumulator] = {}

    def add_up(self, version: str, p_up: np.ndarray, up: np.ndarray) -> None:
        """Published P(up) [H] against what happened [H]: the Brier sums and the reliability bins."""
        for k, (p, o) in enumerate(zip(p_up, up, strict=True)):
            self.brier_up.labels(version, str(k + 1)).inc(float((p - o) ** 2))
            b = f"{min(int(p * 10), 9) / 10:.1f}"
            self.up_forecasts.labels(version, b).inc()
            if o:
                self.up_outcomes.labels(version, b).inc()

    def add(self, version: str, acc: ScoreAccumulator, bands: str = "published") -> None:
        key = f"{version}|{bands}"
        _merge_into(self._totals, key, acc)
        total = self._totals[key].report()
        if total.coverage is not None:
            self.coverage.labels(version, bands).set(total.coverage)
        if bands != "published":
            return
        self.forecasts.labels(version).inc(acc.forecasts)
        for k in range(acc.horizon):
            if not acc.n[k]:
                continue
            for field, counter in self.step_sums.items():
                counter.labels(version, str(k + 1)).inc(float(getattr(acc, field)[k]))
        for i, q in enumerate(acc.levels):
            self.pinball.labels(version, level_key(q)).inc(float(acc.pinball[i].sum()))
        if total.mae is not None:
            self.mae.labels(version).set(total.mae)
        if total.persistence_mae is not None:
            self.persistence_mae.labels(version).set(total.persistence_mae)
        if total.skill_mae is not None:
            self.skill.labels(version, "mae").set(total.skill_mae)
        if total.skill_crps is not None:
            self.skill.labels(version, "crps").set(total.skill_crps)


# -- the hook --------------------------------------------------------------------------------------


class OnlineScorer:
    """Scores forecasts as their horizons complete; ``calibrator`` (optional, a
    :class:`~daemon.scoring.calibration.GuardedCalibrator`) publishes the calibrated, guarded
    distribution before publication and learns from each forecast once it is realised."""

    def __init__(
        self,
        store: ScoreStore,
        metrics: ScoreMetrics,
        horizon: int,
        calibrator: GuardedCalibrator | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.cap = horizon + 2
        self.calibrator = calibrator
        self.vol_window = 100  # returns in the walk of the per-forecast losses (KRONOS_SCORING__VOL_WINDOW)
        # id(result) -> (the model's close quantiles, the published grid, the ticket) of this round
        self._extra: dict[int, tuple[np.ndarray, np.ndarray, dict[str, Any]]] = {}

    async def adjust(
        self,
        windows: Sequence[SeriesWindow],
        results: Sequence[SeriesForecast | Exception],
        version: str,
        contexts: Sequence[Any] | None = None,
        *,
        champion: bool = True,
    ) -> None:
        """Before publication: the published distribution replaces the model's close bands (when a
        calibrator is set); the model's own are kept. A context (``ForecastContext``) of such a
        forecast gets ``bands = "guarded"`` and the message's extra fields (``distribution``).
        ``version`` calibrates with its own state (``champion``: it is the version in service, else one
        tried beside it, whose state starts as a copy of the champion's)."""
        self._extra.clear()  # leftovers of a round that failed before it was stored
        cal = self.calibrator
        if cal is None:
            return
        cal.serve(version, champion)
        try:
            await cal.load(self.store, version, [w.series_id for w in windows])
        except Exception as exc:  # the store is out: publish the model's bands this round
            self.metrics.errors.inc()
            log.warning(
                "reading the calibration state failed; publishing the model's bands",
                error=explain(exc, getattr(self.store, "acl_user", None)),
            )
            return
        for i, (window, result) in enumerate(zip(windows, results, strict=True)):
            if isinstance(result, Exception):
                continue
            try:
                done = cal.apply(window, result, version)
            except Exception as exc:  # calibration must never cost a forecast
                self.metrics.errors.inc()
                log.warning("calibrating a forecast failed; publishing the model's bands", error=repr(exc))
                continue
            if done is None:
                continue
            ticket = {**done.published.ticket.to_dict(), "p_up": done.published.p_up.tolist()}  # P(up) as published
            self._extra[id(result)] = (done.model_quantiles, done.grid, ticket)
            if contexts is not None:
                contexts[i].bands = "guarded"
                contexts[i].distribution = distribution_fields(done, tuple(result.quantile_levels))

    async def stored(
        self,
        items: Sequence[tuple[Any, SeriesWindow, SeriesForecast]],
        version: str,
        now: float | None = None,
    ) -> None:
        """After the round's bars and forecasts are stored: score what is complete, queue the new ones.
        ``items``: (the symbol's state with the new bar appended, its window, its forecast)."""
        extras = [self._extra.pop(id(result), None) for _, _, result in items]
        if not items:
            return
        now = time.time() if now is None else now
        try:
            await self._stored(items, extras, version, now)
        except Exception as exc:
            self.metrics.errors.inc()
            if self.calibrator is not None:  # what it learnt this round was not stored: read it again
                self.calibrator.forget(state.symbol for state, _, _ in items)
            log.warning(
                "scoring failed for this round; its forecasts stay unscored",
                error=explain(exc, getattr(self.store, "acl_user", None)),
            )

    async def _stored(
        self,
        items: Sequence[tuple[Any, SeriesWindow, SeriesForecast]],
        extras: Sequence[tuple[np.ndarray, np.ndarray, dict[str, Any]] | None],
        version: str,
        now: float,
    ) -> None:
        pending = await self.store.pending([state.symbol for state, _, _ in items])
        sums: dict[str, ScoreAccumulator] = {}
        changes: dict[str, tuple[int, bytes]] = {}
        complete: list[tuple[PendingForecast, np.ndarray]] = []
        losses: list[LossRow] = []
        for (state, window, result), extra in zip(items, extras, strict=True):
            timestamps, closes = list(state.timestamps), [row[CLOSE] for row in state.rows]
            drop = 0
            for raw in pending.get(state.symbol, []):
                p = PendingForecast.decode(raw)
                realised = realised_closes(timestamps, closes, p)
                if realised is None:
                    break
                drop += 1
                if isinstance(realised, str):
                    self.metrics.expired.inc()
                    continue
                complete.append((p, realised))
                row = loss_row(getattr(state, "pair_symbol", state.symbol), p, realised, timestamps, closes, self.vol_window)
                if row is not None:
                    losses.append(row)
            model_q, grid, ticket = extra if extra is not None else (None, None, None)
            record = pending_from(window, result, version, model_q, grid, ticket)
            changes[state.symbol] = (drop, record.encode())
        if self.calibrator is not None:  # the states of the versions that made the realised forecasts
            await self.calibrator.load_made(self.store, [(p.version, p.ticket) for p, _ in complete])
        self._score_all(sums, complete)
        calibration = self.calibrator.changed() if self.calibrator is not None else None
        await self.store.commit(changes, sums, cap=self.cap, now=now, calibration=calibration, losses=losses)
        for name, acc in sums.items():
            if name.endswith(MODEL_BANDS_SUFFIX):
                self.metrics.add(name[: -len(MODEL_BANDS_SUFFIX)], acc, bands="model")
            else:
                self.metrics.add(name, acc)

    def learn(self, done: Sequence[tuple[PendingForecast, np.ndarray]]) -> None:
        """The calibration learns from realised forecasts (those published through it)."""
        if self.calibrator is None:
            return
        for p, realised in done:
            if p.ticket is not None:
                self.calibrator.observe(Ticket.from_dict(p.ticket), realised, p.version)

    def _score_all(self, sums: dict[str, ScoreAccumulator], done: Sequence[tuple[PendingForecast, np.ndarray]]) -> None:
        """Score forecasts whose horizon came true: the published bands under the version's name, the
        model's own under ``version + MODEL_BANDS_SUFFIX`` (when calibrating, or when they differ).

        Forecasts of the same shapes go through one vectorised ``ScoreAccumulator.add`` (one call per
        forecast costs ~0.1 ms of array calls: 0.1 s for a burst of 1,000)."""
        Row = tuple[np.ndarray, float, np.ndarray | None, np.ndarray, np.ndarray]  # realised, last, paths, mean, q
        groups: dict[tuple[Any, ...], list[Row]] = {}

        def add(name: str, p: PendingForecast, realised: np.ndarray, paths: np.ndarray | None, q: np.ndarray,
                mean: np.ndarray) -> None:  # fmt: skip
            key = (name, p.horizon, p.levels, None if paths is None else paths.shape)
            groups.setdefault(key, []).append((realised, p.last_close, paths, mean, q))

        for p, realised in done:
            guarded = p.calibrated_paths is not None
            add(p.version, p, realised, p.calibrated_paths if guarded else p.paths, p.quantiles, p.mean)
            if self.calibrator is not None or guarded:
                own = p.paths.mean(axis=0) if guarded and p.paths is not None else p.mean  # the model's mean
                add(p.version + MODEL_BANDS_SUFFIX, p, realised, p.paths, p.model_quantiles, own)
            if p.ticket is not None and "p_up" in p.ticket:  # P(up): its Brier score and reliability
                self.metrics.add_up(p.version, np.asarray(p.ticket["p_up"]), realised > p.last_close)
        self.learn(done)
        for (name, horizon, levels, paths_shape), rows in groups.items():
            held = sums.get(name)
            if held is None or (held.horizon, held.levels) != (horizon, levels):
                held = sums[name] = ScoreAccumulator(horizon, levels)
            realised_, last, paths, mean, quantiles = zip(*rows, strict=True)
            held.add(
                np.stack(realised_),
                np.array(last, dtype=np.float64),
                paths=None if paths_shape is None else np.stack(paths),  # type: ignore[arg-type]
                mean=np.stack(mean),
                quantiles=np.stack(quantiles),
            )

    async def close(self) -> None:
        try:
            await self.store.close()
        except Exception as exc:  # closing must not hide the daemon's own shutdown
            log.warning("closing the score store failed", error=repr(exc))


def report_dict(acc: ScoreAccumulator) -> dict[str, Any]:
    """A report rounded for people and JSON."""

    def r(x: Any) -> Any:
        if isinstance(x, float):
            return round(x, 6)
        if isinstance(x, list):
            return [r(v) for v in x]
        if isinstance(x, dict):
            return {k: r(v) for k, v in x.items()}
        return x

    return {k: r(v) for k, v in acc.report().to_dict().items()}


def build_scorer(settings: Any, state_store: Any, registry: CollectorRegistry) -> OnlineScorer | None:
    """The daemon's scorer from ``KRONOS_SCORING__*``: beside Redis when the state is in Redis, in
    memory otherwise (demo, tests); None when scoring is off."""
    s = settings.scoring
    if not s.enabled:
        return None
    from daemon.state.memory import MemoryStateStore

    store: ScoreStore
    if isinstance(state_store, MemoryStateStore):
        store = MemoryScoreStore()
    else:
        store = RedisScoreStore.from_settings(settings)
    calibrator = build_calibrator(settings)
    scorer = OnlineScorer(store, ScoreMetrics(registry), settings.model.horizon, calibrator)
    scorer.vol_window = s.vol_window
    return scorer


def format_report(version: str, acc: ScoreAccumulator, hours: int) -> str:
    """The scores of one version as a few lines for people (``kronos-stream scores``)."""
    rep = acc.report()

    def f(x: float | None, pct: bool = False) -> str:
        if x is None:
            return "n/a"
        return f"{x:+.1%}" if pct else f"{x:.5g}"

    lines = [
        f"model {version}: {rep.count} forecasts scored in the last {hours} h, horizon {rep.horizon}",
        f"  close MAE {f(rep.mae)}  persistence {f(rep.persistence_mae)}  skill {f(rep.skill_mae, True)}",
        f"  CRPS {f(rep.crps)}  skill {f(rep.skill_crps, True)}  "
        f"band coverage {f(rep.coverage)} (nominal {rep.nominal_coverage:.2f})",
        "  pinball " + "  ".join(f"{k} {f(v)}" for k, v in rep.pinball.items()),
        "  step   MAE        persistence  CRPS       coverage",
    ]
    for k in range(rep.horizon):
        lines.append(
            f"  {k + 1:<6} {f(rep.mae_per_step[k]):<10} {f(rep.persistence_mae_per_step[k]):<12} "
            f"{f(rep.crps_per_step[k]):<10} {f(rep.coverage_per_step[k])}"
        )
    return "\n".join(lines)
