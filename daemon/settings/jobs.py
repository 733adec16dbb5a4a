"""``KRONOS_SCORING__*`` (online scoring), ``KRONOS_BATCH__*`` (how the loop fetches) and
``KRONOS_ARCHIVE__*`` (the archiver)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from daemon.settings.base import Group


class ScoringSettings(Group):
    enabled: bool = Field(
        default=True, description="score every forecast once its horizon bars have arrived (daemon/scoring/scorer.py)"
    )
    retention_h: int = Field(
        default=168, ge=1, le=24 * 366, description="hours the hourly score sums (and calibration states) are kept in Redis"
    )
    calibrate: bool = Field(
        default=True,
        description=(
            "publish the calibrated distribution, guarded by the rolling-volatility walk, with P(up) and return "
            "quantiles (daemon/scoring/calibration.py); false: the model's own bands"
        ),
    )
    calibration_min: int = Field(
        default=50, ge=0, description="realised forecasts of a symbol before its own calibration is used (pooled before)"
    )
    vol_window: int = Field(default=100, ge=2, le=10_000, description="returns in the rolling-volatility walk")
    publish_paths: int = Field(
        default=0, ge=0, le=256,
        description="with calibrate: this many of the model's close sample paths go in the message (model_paths); 0: none",
    )  # fmt: skip
    seed_origins: int = Field(
        default=60, ge=0, le=10_000,
        description="before a hot swap, the new version's calibration comes from a backtest of it on the archive's "
        "last bars (`KRONOS_ARCHIVE__ROOT`): this many consecutive origins per symbol; 0: off (it copies the champion's)",
    )  # fmt: skip
    seed_max_symbols: int = Field(default=200, ge=1, description="... for at most this many of the symbols served")
    seed_budget_s: float = Field(
        default=120.0, gt=0, allow_inf_nan=False,
        description="... within this many seconds (else the new version copies the champion's calibration)",
    )  # fmt: skip


class BatchSettings(Group):
    max_batch_size: int = Field(default=256, ge=1, le=100_000, description="records per fetch")
    max_wait_ms: int = Field(
        default=20,
        ge=0,
        le=60_000,
        description="a fetch waits this long for a first record, then lingers as long for more (drawing from "
        "every partition fairly)",
    )
    linger_idle_ms: int = Field(
        default=5,
        ge=0,
        le=60_000,
        description="the linger ends early once no record came for this long (the burst is over); 0: always "
        "linger `KRONOS_BATCH__MAX_WAIT_MS`",
    )
    # auto: on when the model runs on CUDA; off on CPU, where the fetch competes with the model for
    # the same cores (measured: docs/benchmarks/daemon.md)
    pipeline: Literal["auto"] | bool = Field(
        default="auto",
        description="fetch and read the next batch while the model runs on this one (commits stay in order); "
        "auto: on when the model runs on CUDA, off on CPU",
    )


class ArchiveSettings(Group):
    """``kronos-stream archive``: the input topic's validated bars as Parquet (KRONOS_ARCHIVE__*)."""

    root: str = Field(
        default="archive", description="a local folder or an fsspec URL (`s3://bucket/bars` needs s3fs installed)"
    )
    storage_options: dict[str, Any] = Field(default_factory=dict, description="JSON, passed to fsspec")
    topic: str | None = Field(default=None, description="topic archived; default: `KRONOS_KAFKA__INPUT_TOPIC`")
    group_id: str = Field(
        default="kronos-archive", description="its own consumer group: it never takes bars from the daemon"
    )
    roll_max_rows: int = Field(default=200_000, ge=1, description="a partition's file is written at this many bars ...")
    roll_max_age_s: float = Field(
        default=900.0, gt=0, allow_inf_nan=False, description="... or when its first bar was buffered this long ago"
    )
    fetch_max_records: int = Field(default=5_000, ge=1, description="records per fetch")
    fetch_timeout_ms: int = Field(default=1_000, ge=1, description="how long a fetch waits")
    progress_every_s: float = Field(
        default=30.0, gt=0, allow_inf_nan=False, description="period of the `archive.progress` log line"
    )
