"""The swap itself: a forecaster whose model is replaced between model calls, and the swap metrics.

A version loaded and vetted (:mod:`daemon.model.vetting`) by the registry follower
(:mod:`daemon.model.follower`) is handed to :class:`SwappableForecaster`, which puts it in service at
the start of the next model call (:meth:`SwappableForecaster.pin`): every round of the loop runs one
version from its first window to its last forecast, and the old model is dropped once no call holds it
(:func:`release_memory` then hands its memory back).

Token caches need nothing here: the loop reuses a cached token state only when it was made by the
version it pins (the cache records its version), so after a swap each symbol's first forecast
re-tokenises its bar ring with the new tokenizer.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import time
from collections.abc import Callable, Sequence

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram

from kronos_core.stream_types import SeriesForecast, SeriesWindow, StreamForecaster, StreamMode

log = structlog.get_logger("kronos.models")

_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# The results of kronos_model_swaps_total: ok, a refusal (LoadRefused.result) or deferred (LoadDeferred).
SWAP_RESULTS = ("ok", "checksum", "signature", "incompatible", "load_failed", "smoke_failed", "fetch_failed", "deferred")


class ModelMetrics:
    """Swap metrics, registered on the daemon's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.swaps = Counter(
            "kronos_model_swaps",
            "Model versions the daemon tried to put in service, by result (ok, checksum, signature, "
            "incompatible, load_failed, smoke_failed, fetch_failed, deferred).",
            ["result"],
            registry=registry,
        )
        # every result exported from the start (0), so increase() and the alert see the first refusal
        for result in SWAP_RESULTS:
            self.swaps.labels(result)
        self.load_seconds = Histogram(
            "kronos_model_load_seconds", "Fetching, verifying and building a model version.",
            buckets=_SECONDS_BUCKETS, registry=registry,
        )  # fmt: skip
        self.warmup_seconds = Histogram(
            "kronos_model_warmup_seconds", "The smoke forecast of a newly loaded model version.",
            buckets=_SECONDS_BUCKETS, registry=registry,
        )  # fmt: skip


# -- the swappable forecaster ---------------------------------------------------------------------


class SwappableForecaster:
    """A :class:`StreamForecaster` whose model can be replaced between calls.

    The loop calls :meth:`pin` once per model call (on the event loop) and uses what it returns for the
    whole call: windows, seeds, token-cache reuse, the forecasts' version. A version offered with
    :meth:`offer` goes into service at the next :meth:`pin`, never inside a call.
    """

    def __init__(
        self, forecaster: StreamForecaster, on_swap: Callable[[StreamForecaster, str], None] | None = None
    ) -> None:
        self._current = forecaster
        self._pending: StreamForecaster | None = None
        self._offered_at: float | None = None
        self._on_swap = on_swap
        self._describe(forecaster)

    def _describe(self, forecaster: StreamForecaster) -> None:
        # StreamForecaster's attributes, those of the model in service
        self.model_version: str = forecaster.model_version
        self.mode: StreamMode = forecaster.mode
        self.max_context: int = forecaster.max_context
        self.quantile_levels: tuple[float, ...] = forecaster.quantile_levels

    def forecast(self, windows: Sequence[SeriesWindow], horizon: int) -> list[SeriesForecast]:
        return self.pin().forecast(windows, horizon)

    def drop(self, series_ids: Sequence[str]) -> None:
        for f in (self._current, self._pending):
            forget = getattr(f, "drop", None)
            if callable(forget):
                forget(series_ids)

    @property
    def current(self) -> StreamForecaster:
        """The model in service (read only; calls go through :meth:`pin`)."""
        return self._current

    # swapping
    @property
    def target_version(self) -> str:
        """The version in service once the pending one (if any) is swapped in."""
        return (self._pending or self._current).model_version

    @property
    def pending_version(self) -> str | None:
        return None if self._pending is None else self._pending.model_version

    def offer(self, forecaster: StreamForecaster) -> None:
        """Serve ``forecaster`` from the next model call on (replaces a version still pending)."""
        self._pending = forecaster
        self._offered_at = time.monotonic()

    def withdraw(self) -> str | None:
        """Forget the pending version (the pointer went back to the one serving); returns it."""
        pending, self._pending = self._pending, None
        return None if pending is None else pending.model_version

    def pin(self) -> StreamForecaster:
        """The model for one call: a pending version goes into service here, between calls."""
        if self._pending is not None:
            old, self._current, self._pending = self._current, self._pending, None
            self._describe(self._current)
            waited = time.monotonic() - (self._offered_at or time.monotonic())
            log.info(
                "model swapped",
                old=old.model_version,
                new=self._current.model_version,
                waited_s=round(waited, 3),
            )
            if self._on_swap is not None:
                self._on_swap(self._current, old.model_version)
            del old  # released here; a call still holding it finishes on it first
        return self._current


def pin_forecaster(forecaster: StreamForecaster) -> StreamForecaster:
    """What one model call runs on: the pinned model of a swappable forecaster, else itself."""
    pin = getattr(forecaster, "pin", None)
    return pin() if callable(pin) else forecaster  # type: ignore[no-any-return]


def release_memory() -> None:
    """Collect the dropped model now and hand freed heap pages back to the OS (glibc)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
