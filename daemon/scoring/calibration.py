"""The published distribution in the daemon: calibrated per symbol, guarded by the rolling-volatility
walk (``KRONOS_SCORING__CALIBRATE``, on by default).

The state machine is :class:`kronos_core.evaluation.Publisher`, the same one ``kronos-stream backtest``
runs, so a backtest's figures are what the daemon publishes on the same bars. This module is its
daemon side:

- **Before publication** (:meth:`GuardedCalibrator.apply`): the model's close paths and the window's
  closes go through the publisher; the forecast's close quantiles and close mean become the published
  (guarded) ones, and the message gets the guard's weights and the probabilities
  (:func:`distribution_fields`). The model's own close quantiles stay in the message
  (``model_quantiles``) and are scored too (``{version}@model``).
- **Once realised** (:meth:`GuardedCalibrator.observe`): the forecast's ticket (a few numbers per step,
  kept in its pending record) and the realised closes update the symbol's state and the pooled one.
- **Storage**: the states live beside the pending forecasts in the score store, per model version
  (Redis: ``{prefix}:calibration:{version}:{symbol}`` and ``{prefix}:calibration-pooled:{version}``),
  written in the same step as the pending list that drops the realised forecasts, so a restart or
  another replica resumes them and no realised forecast is learnt twice. Each forecast is calibrated,
  and learnt from, with the state of the version that made it. A version with no state of its own for
  a symbol starts from a copy of the champion's (the version it replaced, or the one it is tried
  beside), read on first use, so a hot swap does not start cold; before a swap the follower seeds the
  new version's states from a backtest of it when it can (:mod:`daemon.scoring.seeding`). The unversioned keys of older releases
  (``{prefix}:calibration:{symbol}``, ``{prefix}:calibration-pooled``) are read as a last fallback. The
  pooled state is shared by replicas; the last writer wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from daemon.io.messages import quantile_key
from kronos_core.evaluation.distribution import quantiles_at
from kronos_core.evaluation.publisher import POOLED, Published, Publisher, PublisherConfig, Ticket
from kronos_core.stream_types import SeriesForecast, SeriesWindow

CLOSE = 3


def publisher_config(settings: Any) -> PublisherConfig:
    """The publisher of ``KRONOS_SCORING__*`` and the model's horizon."""
    s = settings.scoring
    return PublisherConfig(settings.model.horizon, min_symbol=s.calibration_min, vol_window=s.vol_window)


def build_calibrator(settings: Any) -> GuardedCalibrator | None:
    """The daemon's calibrator of ``KRONOS_SCORING__*``; None when calibration is off."""
    s = settings.scoring
    return GuardedCalibrator(publisher_config(settings), s.publish_paths) if s.calibrate else None


def distribution_fields(applied: Applied, levels: Sequence[float]) -> dict[str, Any]:
    """The message's fields beside the bands: the guard, the probabilities and the model's own close."""
    p, model_q, model_mean = applied.published, applied.model_quantiles, applied.model_mean
    expected, rq = p.returns(levels)
    fields = {
        "guard": {"model_weight": np.round(p.weights, 4).tolist(), "scope": p.scope},
        "probabilities": {
            "p_up": np.round(p.p_up, 4).tolist(),
            "expected_return": expected.tolist(),
            "return_quantiles": {quantile_key(q): rq[i].tolist() for i, q in enumerate(levels)},
        },
        "model_quantiles": {quantile_key(q): model_q[i].tolist() for i, q in enumerate(levels)},
        "model_mean": model_mean.tolist(),
    }
    if applied.paths is not None:
        fields["model_paths"] = applied.paths.tolist()
    return fields


class Applied(NamedTuple):
    model_quantiles: np.ndarray  # [Q, H] the model's own close quantiles
    model_mean: np.ndarray  # [H] the model's own close mean
    grid: np.ndarray  # [J, H] the published distribution (scored as an ensemble of J paths)
    published: Published
    paths: np.ndarray | None  # [P, H] the model's close paths for the message, or None


StoreKey = tuple[str | None, str]  # (model version, symbol or POOLED); version None: the unversioned keys


class GuardedCalibrator:
    """The daemon's :class:`Publisher` per model version, with the states of the symbols each has seen.

    Each version calibrates the forecasts it made with its own state. A version with no state of its
    own for a symbol (a new champion after a hot swap, or a challenger) starts from a copy of its
    parent's: the champion it replaced, or the champion it is tried beside (copy on first use); with
    no parent, the unversioned keys of older releases. The copy is then its own and learns from its
    own forecasts only."""

    def __init__(self, config: PublisherConfig, publish_paths: int = 0, keep_versions: int = 4) -> None:
        self.config = config
        self.publish_paths = publish_paths  # the model's close paths put in the message (0: none)
        self.keep_versions = max(2, keep_versions)  # versions held in memory (the least used are dropped)
        self.champion: str | None = None
        self._publishers: dict[str, Publisher] = {}  # version -> its publisher, least recently used first
        self._parent: dict[str, str | None] = {}  # version -> whose state it copies on first use
        self._held: dict[str, set[str]] = {}  # version -> keys whose stored state has been read (or found missing)
        self._dirty: set[tuple[str, str]] = set()

    @property
    def horizon(self) -> int:
        return self.config.horizon

    @property
    def publisher(self) -> Publisher:
        """The champion's publisher."""
        assert self.champion is not None, "no version served yet"
        return self._publishers[self.champion]

    def publisher_of(self, version: str) -> Publisher:
        return self._use(version)

    def serve(self, version: str, champion: bool = True) -> None:
        """``version`` publishes forecasts: as the champion (the previous champion becomes its parent),
        or beside it (a challenger, whose parent is the champion)."""
        if champion and version != self.champion:
            if version not in self._parent or self._parent[version] is None:
                self._parent[version] = self.champion
            self.champion = version
        elif not champion:
            self._parent.setdefault(version, self.champion)
        self._use(version)

    def parent(self, version: str) -> str | None:
        return self._parent.get(version)

    def _use(self, version: str) -> Publisher:
        pub = self._publishers.pop(version, None)
        if pub is None:
            pub = Publisher(self.config)
            self._held[version] = set()
            self._parent.setdefault(version, None)
        self._publishers[version] = pub  # the most recently used last
        return pub

    def missing(self, version: str, symbols: Iterable[str]) -> list[str]:
        """Symbols (and the pooled state) of ``version`` whose stored state has not been read yet."""
        self._use(version)
        held = self._held[version]
        return [s for s in dict.fromkeys([POOLED, *symbols]) if s not in held]

    def sources(self, version: str, keys: Sequence[str]) -> list[StoreKey]:
        """The stored states to read for ``keys`` of ``version``: its own, then its parent's (unless
        held in memory here), then the unversioned ones."""
        parent = self._parent.get(version)
        held = self._held.get(parent, set()) if parent is not None else set()
        out: list[StoreKey] = []
        for k in keys:
            out.append((version, k))
            if parent is not None and k not in held:
                out.append((parent, k))
            out.append((None, k))
        return out

    def take(self, version: str, keys: Sequence[str], stored: dict[StoreKey, dict[str, Any]]) -> None:
        """Stored states (read from :meth:`sources`) of ``keys`` join ``version``'s publisher: its own
        where stored, else a copy of its parent's, else the unversioned one; absent: none yet."""
        pub = self._use(version)
        parent = self._parent.get(version)
        parent_pub = self._publishers.get(parent) if parent is not None else None
        for k in keys:
            own = stored.get((version, k))
            if own is not None:
                pub.take({k: own})
                continue
            copied: dict[str, Any] | None = None
            if parent is not None and parent_pub is not None and k in self._held.get(parent, set()):
                copied = parent_pub.export([k]).get(k)
            elif parent is not None:
                copied = stored.get((parent, k))
            if copied is None:
                copied = stored.get((None, k))
            if copied is not None and pub.take({k: copied}):
                self._dirty.add((version, k))  # the copy is this version's own from now on
        self._held[version].update(keys)

    def snapshot(self, version: str, keys: Iterable[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Read only (on-demand forecasts): the states of ``version`` held here of ``keys``, as they
        would be stored, and the keys whose stored state has not been read yet (read them with
        :meth:`sources` and :meth:`resolve`)."""
        wanted = list(dict.fromkeys(keys))
        held = self._held.get(version, set())
        pub = self._publishers.get(version)
        have = pub.export([k for k in wanted if k in held]) if pub is not None else {}
        return have, [k for k in wanted if k not in held]

    def resolve(self, version: str, keys: Sequence[str], stored: dict[StoreKey, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Read only: the state :meth:`take` would give ``version`` for each of ``keys`` from ``stored``
        (its own, else its parent's, else the unversioned one), without keeping anything."""
        parent = self._parent.get(version)
        out: dict[str, dict[str, Any]] = {}
        for k in keys:
            state = stored.get((version, k))
            if state is None and parent is not None:
                state = stored.get((parent, k))
            if state is None:
                state = stored.get((None, k))
            if state is not None:
                out[k] = state
        return out

    def forget(self, symbols: Iterable[str]) -> None:
        """Symbols this replica no longer owns: their state is read again if they come back."""
        gone = [s for s in symbols if s != POOLED]
        for version, pub in self._publishers.items():
            pub.forget(gone)
            self._held[version].difference_update(gone)
        self._dirty = {(v, k) for v, k in self._dirty if k not in gone}

    def drop(self, version: str) -> None:
        """Forget ``version``'s states held here (unsaved changes included): they are read again."""
        self._publishers.pop(version, None)
        self._held.pop(version, None)
        self._dirty = {(v, k) for v, k in self._dirty if v != version}

    def apply(self, window: SeriesWindow, result: SeriesForecast, version: str) -> Applied | None:
        """Publish ``result`` (made by ``version``) through the guard, in place (its close mean and
        quantiles); None when the forecast has no close sample paths or its horizon differs (published
        as the model made it)."""
        samples = result.samples
        if samples.ndim != 3 or not len(samples) or samples.shape[1] != self.horizon:
            return None
        closes = np.asarray(window.values[:, CLOSE], dtype=np.float64)
        publisher = self._use(version)
        published = publisher.publish(window.series_id, closes, np.asarray(samples[:, :, CLOSE], dtype=np.float64))
        levels = tuple(result.quantile_levels)
        model_q = np.array(result.quantiles[:, :, CLOSE], dtype=np.float64)
        quantiles = np.array(result.quantiles, dtype=np.float64)
        quantiles[:, :, CLOSE] = quantiles_at(published.quantiles, levels)
        mean = np.array(result.mean, dtype=np.float64)
        model_mean = mean[:, CLOSE].copy()
        mean[:, CLOSE] = published.quantiles.mean(axis=0)
        result.quantiles, result.mean = quantiles, mean
        paths = np.asarray(samples[: self.publish_paths, :, CLOSE], dtype=np.float64) if self.publish_paths else None
        return Applied(model_q, model_mean, published.quantiles, published, paths)

    def observe(self, ticket: Ticket, realised: np.ndarray, version: str) -> None:
        """A forecast ``version`` published is realised: that version's state learns from it."""
        self._use(version).realise(ticket, realised)
        self._dirty.update(((version, POOLED), (version, ticket.symbol)))

    def changed(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The states changed since the last call (to be stored, per (version, key)), and forgets that
        they changed; versions beyond ``keep_versions`` are then dropped from memory."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for version in {v for v, _ in self._dirty}:
            keys = sorted(k for v, k in self._dirty if v == version)
            out.update({(version, k): state for k, state in self._publishers[version].export(keys).items()})
        self._dirty.clear()
        self._prune()
        return out

    async def load(self, store: Any, version: str, symbols: Iterable[str]) -> None:
        """Read ``version``'s states of ``symbols`` not read yet (with their fallbacks) from the score store."""
        missing = self.missing(version, symbols)
        if missing:
            self.take(version, missing, await store.calibration(self.sources(version, missing)))

    async def load_made(self, store: Any, made: Iterable[tuple[str, dict[str, Any] | None]]) -> None:
        """Read the states of the versions that made realised forecasts ((version, ticket) pairs), so
        each learns from its own forecasts (those made before a restart or a swap included)."""
        symbols: dict[str, set[str]] = {}
        for version, ticket in made:
            if ticket is not None:
                symbols.setdefault(version, set()).add(str(ticket["symbol"]))
        for version, wanted in symbols.items():
            await self.load(store, version, sorted(wanted))

    def _prune(self) -> None:
        keep = {self.champion, self._parent.get(self.champion) if self.champion is not None else None}
        for version in list(self._publishers):
            if len(self._publishers) <= self.keep_versions:
                break
            if version not in keep:
                del self._publishers[version]
                self._held.pop(version, None)


__all__ = [
    "Applied", "GuardedCalibrator", "StoreKey", "build_calibrator", "distribution_fields", "publisher_config",
]  # fmt: skip
