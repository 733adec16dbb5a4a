"""Optional features of the loop's parts, as protocols (checked with ``isinstance``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from kronos_core.stream_types import SeriesForecast, SeriesWindow


@runtime_checkable
class AbortsOpen(Protocol):
    """An output bus with Kafka transactions (daemon/io/kafka_eos.py)."""

    async def abort_open(self) -> None:
        """Abort the open transaction (its segment is processed again)."""


@runtime_checkable
class DropsSessions(Protocol):
    """A forecaster that keeps warm model sessions per symbol (incremental mode)."""

    def drop(self, series_ids: Sequence[str]) -> None:
        """Forget the symbols' sessions."""


@runtime_checkable
class ServedCounts(Protocol):
    """How the engine served a call's series (kronos_core.engine.GenerationStats)."""

    series_warm: int
    series_rebuilt: int
    series_refreshed: int


@runtime_checkable
class ReportsStats(Protocol):
    """A forecaster that tells how it served its last call."""

    last_stats: Any


@runtime_checkable
class Configured(Protocol):
    """A forecaster with a config dataclass (kronos_core's StreamingForecaster)."""

    config: Any


@runtime_checkable
class Calibrated(Protocol):
    """A scorer that calibrates the published bands (daemon/scoring/scorer.py OnlineScorer)."""

    calibrator: Any


class Challengers(Protocol):
    """Shadow challengers forecasting in the champion's model job (daemon/model/challengers.py)."""

    @property
    def active(self) -> bool: ...

    def begin_round(self, loop: asyncio.AbstractEventLoop | None) -> asyncio.Future[list[SeriesForecast]] | None: ...

    async def champion_results(
        self, early: asyncio.Future[list[SeriesForecast]], job: asyncio.Future[list[SeriesForecast]]
    ) -> list[SeriesForecast]: ...

    def champion_done(self, results: list[SeriesForecast]) -> None: ...

    def forecast_in_job(
        self, windows: Sequence[SeriesWindow], results: Sequence[SeriesForecast], horizon: int
    ) -> None: ...

    async def after_round(self, stored: Sequence[tuple[Any, Any]], mode: str) -> None: ...

    def drop(self, symbols: Sequence[str]) -> None: ...
