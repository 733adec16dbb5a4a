"""Configuration from the environment: ``KRONOS_`` prefix, ``__`` between a group and its field.

Examples: ``KRONOS_KAFKA__BOOTSTRAP_SERVERS=broker:9092``, ``KRONOS_REDIS__URL=redis://redis:6379/0``,
``KRONOS_MODEL__PREDICTOR_DIR=/models/current/predictor``, ``KRONOS_MODE=incremental``,
``KRONOS_MODEL__QUANTILE_LEVELS=0.1,0.5,0.9`` (a comma list or JSON).

:func:`load_settings` turns every bad value into one :class:`~daemon.errors.ConfigError` that names the
environment variables to fix, so a misconfigured pod stops at start-up with a readable message.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from daemon.errors import ConfigError

ENV_PREFIX = "KRONOS_"
NESTED_DELIMITER = "__"


def _parse_levels(value: Any) -> Any:
    """Accept ``0.1,0.5,0.9`` or ``[0.1, 0.5, 0.9]`` from the environment; pass sequences through."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part for part in (p.strip() for p in text.split(",")) if part]
    return value


QuantileLevels = Annotated[tuple[float, ...], NoDecode, BeforeValidator(_parse_levels)]
GraphBuckets = Annotated[tuple[int, ...], NoDecode, BeforeValidator(_parse_levels)]


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Group):
    bootstrap_servers: str = "localhost:9092"
    input_topic: str = "bars"
    output_topic: str = "forecasts"
    dead_letter_topic: str = "bars.dlq"
    group_id: str = "kronos-stream"
    group_instance_id: str | None = None  # static membership: no rebalance on a quick pod restart
    client_id: str = "kronos-stream"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    max_poll_interval_ms: int = Field(default=300_000, ge=1_000)
    request_timeout_ms: int = Field(default=40_000, ge=1_000)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    # the producer's record batches (per partition and request): a burst of forecasts (about 3.5 KB
    # each at horizon 12) goes out in a few requests instead of one per 16 KB (aiokafka's default)
    producer_batch_bytes: int = Field(default=512 * 1024, ge=16 * 1024, le=1_000_000)
    # codec of the record batches the daemon produces (forecasts and dead letters); reading, every
    # codec is decoded whatever this says
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    create_topics: int | None = Field(default=None, ge=1)  # create missing topics with this many partitions
    create_topics_replication: int = Field(default=1, ge=1)  # their replication factor
    # Exactly-once (Kafka transactions, see daemon/io/kafka_eos.py): forecasts, dead letters and input
    # offsets commit together; the transactional id defaults to <group_id>.<group_instance_id>.
    exactly_once: bool = False
    transactional_id: str | None = None
    transaction_timeout_ms: int = Field(default=60_000, ge=1_000)

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism, sasl_username and "
                "sasl_password (set KRONOS_KAFKA__SASL_MECHANISM, KRONOS_KAFKA__SASL_USERNAME, "
                "KRONOS_KAFKA__SASL_PASSWORD)"
            )
        return self

    @field_validator("compression_type")
    @classmethod
    def _codec_installed(cls, codec: str) -> str:
        from aiokafka import codec as codecs

        if codec != "none" and not getattr(codecs, f"has_{codec}")():
            raise ValueError(
                f"compression {codec!r} needs a library this installation lacks: install aiokafka's "
                f"codec extras (pip install 'aiokafka[lz4,snappy,zstd]', i.e. cramjam), or choose none or gzip"
            )
        return codec

    @model_validator(mode="after")
    def _transactional_id_stable(self) -> KafkaSettings:
        if self.exactly_once and not (self.transactional_id or self.group_instance_id):
            raise ValueError(
                "exactly_once needs a transactional id stable per replica: set KRONOS_KAFKA__GROUP_INSTANCE_ID "
                "(e.g. the StatefulSet pod name) or KRONOS_KAFKA__TRANSACTIONAL_ID"
            )
        return self


class RedisSettings(_Group):
    url: str = "redis://localhost:6379/0"
    key_prefix: str = Field(default="kronos", min_length=1, pattern=r"^[^\s{}]+$")
    password: SecretStr | None = None
    forecast_ttl_s: int | None = Field(default=None, ge=1)
    socket_timeout_s: float = Field(default=5.0, gt=0)
    cluster: bool = False  # a Redis Cluster (the URL names any node); keys of a symbol share a hash tag


class ModelSettings(_Group):
    tokenizer_dir: Path | None = None
    predictor_dir: Path | None = None
    hf_tokenizer: str | None = None  # Hugging Face id of the tokenizer, e.g. NeoQuasar/Kronos-Tokenizer-base
    hf_predictor: str | None = None  # ... and of the predictor, e.g. NeoQuasar/Kronos-small
    hf_revision: str | None = None  # branch, tag or commit of both (default: main)
    preset: str | None = None  # random weights of a published shape: benchmarks only
    factory: str | None = None  # "module:callable" taking Settings, returning a StreamForecaster
    version: str | None = None  # overrides the checkpoint's content hash as the model version
    calendar_tz: str = "UTC"  # zone the time features (minute, hour, weekday...) are read in
    exchange_calendar: str | None = None  # exchange_calendars code (XSHG, XNYS...) of the horizon; None: 24/7
    calendar_bar_label: Literal["end", "start"] = "end"  # bars stamped with their end (or start) time
    device: str = "auto"
    threads: int | None = Field(default=None, ge=1, le=1024)  # torch CPU threads (None: torch's default)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    compile: bool = False  # torch.compile the transformer blocks (pays on CUDA at large batches)
    # CUDA: batch sizes the decode step's CUDA graphs are captured for at start-up (calls pad up to one)
    graph_buckets: GraphBuckets = (1, 8, 32, 64, 128, 256, 512, 1024)
    residual_fp32: bool = False  # bfloat16/float16: keep the residual stream in float32 (see README, GPU)
    tokenizer_fp32: bool = False  # bfloat16/float16: run the tokenizer in float32, the predictor in dtype
    max_context: int = Field(default=512, ge=2, le=8192)
    horizon: int = Field(default=12, ge=1, le=4096)
    sample_count: int = Field(default=8, ge=1, le=1024)
    temperature: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    top_p: float = Field(default=0.9, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)
    base_seed: int = Field(default=0, ge=0)
    quantile_levels: QuantileLevels = (0.1, 0.5, 0.9)
    max_sessions: int = Field(default=256, ge=1)  # incremental: warm symbols kept in memory ...
    max_session_bytes: int | None = Field(default=None, ge=1)  # ... and at most this many bytes of caches
    # A model registry (fsspec URL) instead of fixed folders: the daemon serves its champion and
    # hot-swaps when the pointer moves (polled every registry_poll_s; a Redis hint wakes it at once).
    registry: str | None = None
    registry_poll_s: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    registry_hint: bool = True  # listen to the registry's Redis channel ({key_prefix}:models)
    # a refused version is retried after registry_retry_s, doubling up to registry_retry_max_s
    registry_retry_s: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    registry_retry_max_s: float = Field(default=600.0, gt=0, allow_inf_nan=False)
    cache_dir: Path | None = None  # where fetched versions are unpacked (default: a temporary folder)

    @model_validator(mode="after")
    def _horizon_fits(self) -> ModelSettings:
        if self.horizon >= self.max_context:
            raise ValueError(
                f"horizon ({self.horizon}) must be below max_context ({self.max_context}); "
                "lower KRONOS_MODEL__HORIZON or raise KRONOS_MODEL__MAX_CONTEXT"
            )
        return self

    @model_validator(mode="after")
    def _one_model_source(self) -> ModelSettings:
        if self.registry and (self.tokenizer_dir or self.predictor_dir or self.preset or self.factory):
            raise ValueError(
                "KRONOS_MODEL__REGISTRY names the model, so leave KRONOS_MODEL__TOKENIZER_DIR, "
                "KRONOS_MODEL__PREDICTOR_DIR, KRONOS_MODEL__PRESET and KRONOS_MODEL__FACTORY unset"
            )
        return self

    @field_validator("calendar_tz")
    @classmethod
    def _zone_known(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {name!r}; use an IANA name such as Asia/Shanghai") from exc
        return name

    @field_validator("exchange_calendar")
    @classmethod
    def _calendar_known(cls, name: str | None) -> str | None:
        if name is None or not name.strip() or name.strip().upper() == "24/7":
            return None
        import exchange_calendars as xc

        names = xc.get_calendar_names(include_aliases=True)
        if name.strip() not in names:
            raise ValueError(
                f"unknown exchange calendar {name!r}; use an exchange_calendars code such as XSHG, XNYS, "
                "XLON, XTKS, or 24/7 (no gaps)"
            )
        return name.strip()

    @field_validator("graph_buckets")
    @classmethod
    def _buckets_valid(cls, buckets: tuple[int, ...]) -> tuple[int, ...]:
        from kronos_core.graphed_decode import validate_buckets

        return validate_buckets(buckets)

    @field_validator("quantile_levels")
    @classmethod
    def _levels_valid(cls, levels: tuple[float, ...]) -> tuple[float, ...]:
        if not levels:
            raise ValueError("name at least one level, e.g. 0.1,0.5,0.9")
        if any(not (0.0 < q < 1.0) or math.isnan(q) for q in levels):
            raise ValueError(f"levels must lie strictly between 0 and 1, got {levels}")
        if list(levels) != sorted(set(levels)):
            raise ValueError(f"levels must be increasing without repeats, got {levels}")
        return levels


class ScoringSettings(_Group):
    enabled: bool = True  # score every forecast once its horizon bars have arrived (daemon/scoring/online.py)
    retention_h: int = Field(default=168, ge=1, le=24 * 366)  # hourly score sums kept in Redis this long
    calibrate: bool = False  # split-conformal calibration of the published close bands (daemon/scoring/calibration.py)
    calibration_window: int = Field(default=500, ge=10, le=100_000)  # recent realised forecasts used
    calibration_min: int = Field(default=50, ge=1)  # forecasts realised before the bands are adjusted


class BatchSettings(_Group):
    max_batch_size: int = Field(default=256, ge=1, le=100_000)  # records per fetch (getmany max_records)
    max_wait_ms: int = Field(default=20, ge=0, le=60_000)  # a fetch waits this long for a first record, then lingers as long for more
    # the linger ends early once no record came for this long (the burst is over); 0: linger max_wait_ms
    linger_idle_ms: int = Field(default=5, ge=0, le=60_000)
    # fetch (and read) the next batch while the model runs on this one; commits stay in order.
    # auto: on when the model runs on CUDA; off on CPU, where the fetch competes with the model for
    # the same cores (measured: README "Steady state")
    pipeline: Literal["auto"] | bool = "auto"


class ArchiveSettings(_Group):
    """``kronos-stream archive``: the input topic's validated bars as Parquet (KRONOS_ARCHIVE__*)."""

    root: str = "archive"  # a local folder or an fsspec URL (s3://bucket/bars needs s3fs installed)
    storage_options: dict[str, Any] = Field(default_factory=dict)  # JSON, passed to fsspec
    topic: str | None = None  # default: KRONOS_KAFKA__INPUT_TOPIC
    group_id: str = "kronos-archive"  # its own consumer group: it never takes bars from the daemon
    roll_max_rows: int = Field(default=200_000, ge=1)  # a partition's file is written at this many bars
    # ... or when its first bar was buffered this long ago
    roll_max_age_s: float = Field(default=900.0, gt=0, allow_inf_nan=False)
    fetch_max_records: int = Field(default=5_000, ge=1)
    fetch_timeout_ms: int = Field(default=1_000, ge=1)
    progress_every_s: float = Field(default=30.0, gt=0, allow_inf_nan=False)  # progress log line period


class Settings(BaseSettings):
    """Everything the daemon reads from the environment (frozen once loaded)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        frozen=True,
        extra="forbid",
        case_sensitive=False,
    )

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    model: ModelSettings = ModelSettings()
    batch: BatchSettings = BatchSettings()
    scoring: ScoringSettings = ScoringSettings()
    archive: ArchiveSettings = ArchiveSettings()
    mode: Literal["exact", "incremental"] = "exact"
    refresh_every_bars: int = Field(default=64, ge=1)  # incremental: refreeze mean/std this often
    drift_sigma: float = Field(default=4.0, gt=0, allow_inf_nan=False)  # ... or when a bar is this far out
    default_bar_interval_s: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    http_host: str = "0.0.0.0"
    http_port: int | None = Field(default=8080, ge=0, le=65535)  # 0: any free port; unset: no HTTP
    health_stale_s: float = Field(default=60.0, gt=0)
    # A bar more than this ahead of its message's broker timestamp (or the wall clock) is dead-lettered.
    max_future_s: float | None = Field(default=300.0, ge=0, allow_inf_nan=False)
    dead_letter_skipped: bool = False  # also dead-letter bars skipped as duplicate or out_of_order
    # Kafka or Redis unreachable: retried after retry_initial_s, doubling up to retry_max_s (jittered);
    # after outage_give_up_s of one outage the process ends (unset: wait as long as it takes).
    retry_initial_s: float = Field(default=0.1, gt=0, allow_inf_nan=False)
    retry_max_s: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    outage_give_up_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    # State lost in Redis is restored from the input topic's bars of this many seconds back (unset: all).
    restore_lookback_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    health_probe_interval_s: float = Field(default=2.0, gt=0, allow_inf_nan=False)  # readiness probes
    # A partition with lag whose position has not moved for this long: readiness 503, kronos_partition_stalled 1.
    partition_stall_s: float = Field(default=120.0, gt=0, allow_inf_nan=False)
    graceful_shutdown_s: float = Field(default=25.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"


def env_name(loc: tuple[int | str, ...]) -> str:
    """The environment variable behind a pydantic error location, e.g. KRONOS_KAFKA__GROUP_ID."""
    parts: list[str] = []
    for item in loc:
        if not isinstance(item, str):
            break
        parts.append(item.upper())
        if len(parts) == 2:
            break
    return ENV_PREFIX + NESTED_DELIMITER.join(parts) if parts else ENV_PREFIX + "*"


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        name = env_name(tuple(err["loc"]))
        got = err.get("input")
        shown = "" if isinstance(got, dict | BaseModel) or got is None else f" (got {got!r})"
        if isinstance(got, SecretStr) or "password" in name.lower():
            shown = ""
        lines.append(f"  {name}: {err['msg']}{shown}")
    return "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Read the environment (and ``overrides``, which win); a bad value raises ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(
            "the configuration is invalid; fix these environment variables:\n" + _describe(exc)
        ) from exc
    except (SettingsError, ValueError) as exc:
        raise ConfigError(
            f"the configuration could not be read: {exc}. Nested values are set as "
            f"{ENV_PREFIX}GROUP{NESTED_DELIMITER}FIELD, lists as JSON or comma lists."
        ) from exc


def unknown_env_names(environ: dict[str, str] | None = None) -> list[str]:
    """KRONOS_ variables that match no setting (likely typos); the app logs them as a warning."""
    env = os.environ if environ is None else environ
    known: set[str] = set()
    for name, field in Settings.model_fields.items():
        top = ENV_PREFIX + name.upper()
        known.add(top)
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            known.update(top + NESTED_DELIMITER + sub.upper() for sub in group.model_fields)
    return sorted(k for k in env if k.upper().startswith(ENV_PREFIX) and k.upper() not in known)
