"""The forecasting loop's settings (:class:`LoopConfig`), and how the daemon's settings fill them."""

from __future__ import annotations

from dataclasses import dataclass

from daemon.pipeline.calendars import HorizonCalendar, build_calendar
from daemon.pipeline.features import Challengers
from daemon.scoring.scorer import OnlineScorer
from daemon.settings import Settings


@dataclass(frozen=True)
class LoopConfig:
    output_topic: str
    horizon: int
    max_batch_size: int = 256
    max_wait_ms: int = 20
    linger_idle_ms: int = 5  # the linger ends once no record came for this long; 0: never early
    pipeline: bool = True  # fetch and read the next batch while this one is processed
    default_interval_s: float = 60.0
    forecast_ttl_s: int | None = None
    base_seed: int = 0
    max_future_s: float | None = 300.0
    dead_letter_skipped: bool = False
    max_context: int = 512
    restore_lookback_s: float | None = None  # history read to restore lost state (None: all retained)
    calendar: HorizonCalendar | None = None  # horizon timestamps; None: continuous (24/7)
    scorer: OnlineScorer | None = None  # online scoring and band calibration (daemon/scoring/scorer.py)
    exactly_once: bool = False  # Kafka transactions: a fetch runs as segments, one transaction each
    challengers: Challengers | None = None  # shadow challengers (daemon/model/challengers.py ChallengerSet)


def loop_config(s: Settings, *, pipeline: bool, scorer: OnlineScorer | None, challengers: Challengers | None) -> LoopConfig:
    """The loop's settings from the daemon's (``pipeline``: resolved from ``auto`` by the caller)."""
    return LoopConfig(
        output_topic=s.kafka.output_topic,
        horizon=s.model.horizon,
        max_batch_size=s.batch.max_batch_size,
        max_wait_ms=s.batch.max_wait_ms,
        linger_idle_ms=s.batch.linger_idle_ms,
        pipeline=pipeline,
        default_interval_s=s.default_bar_interval_s,
        forecast_ttl_s=s.redis.forecast_ttl_s,
        base_seed=s.model.base_seed,
        max_future_s=s.max_future_s,
        dead_letter_skipped=s.dead_letter_skipped,
        max_context=s.model.max_context,
        restore_lookback_s=s.restore_lookback_s,
        calendar=(  # None: the gap-free grid (schemas.horizon_ns)
            build_calendar(s.model.exchange_calendar, s.model.calendar_bar_label) if s.model.exchange_calendar else None
        ),
        scorer=scorer,
        exactly_once=s.kafka.exactly_once,
        challengers=challengers,
    )
