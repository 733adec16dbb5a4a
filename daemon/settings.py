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

from daemon.api.settings import ApiSettings
from daemon.errors import ConfigError
from daemon.model.challenger_settings import ChallengerSettings

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
    bootstrap_servers: str = Field(default="localhost:9092", description="Kafka brokers, comma-separated")
    input_topic: str = Field(default="bars", description="the input bars")
    output_topic: str = Field(default="forecasts", description="the forecasts")
    dead_letter_topic: str = Field(default="bars.dlq", description="invalid messages and failed forecasts")
    group_id: str = Field(default="kronos-stream", description="the consumer group the replicas share")
    group_instance_id: str | None = Field(
        default=None,
        description="static membership: a name stable across restarts and unique per replica (e.g. the "
        "StatefulSet pod name); a restart within the session timeout keeps the partitions, no rebalance",
    )
    client_id: str = Field(default="kronos-stream", description="client id in the broker's logs and quotas")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        default="earliest", description="where a new consumer group starts"
    )
    session_timeout_ms: int = Field(
        default=10_000, ge=1_000, description="consumer-group liveness: a member silent this long is dropped"
    )
    heartbeat_interval_ms: int = Field(default=3_000, ge=100, description="consumer heartbeats this often")
    max_poll_interval_ms: int = Field(
        default=300_000, ge=1_000, description="longest gap between fetches before the group evicts the member"
    )
    request_timeout_ms: int = Field(default=40_000, ge=1_000, description="bound of one Kafka request")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="how to reach the brokers; `SASL_*` needs the three SASL settings"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism"
    )
    sasl_username: str | None = Field(default=None, description="SASL user name")
    sasl_password: SecretStr | None = Field(default=None, description="SASL password (masked in logs)")
    ssl_cafile: Path | None = Field(default=None, description="CA bundle of the brokers' certificates")
    producer_batch_bytes: int = Field(
        default=512 * 1024,
        ge=16 * 1024,
        le=1_000_000,
        description="the producer's record batch per partition and request: a burst of forecasts (about "
        "3.5 KB each at horizon 12) goes out in a few requests; at most the broker's `message.max.bytes`",
    )
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        default="none",
        description="codec of the record batches the daemon produces (forecasts, dead letters); every codec "
        "is decoded on reading whatever this says",
    )
    create_topics: int | None = Field(
        default=None,
        ge=1,
        description="unset: start-up stops with a message when one of the three topics is missing; a "
        "number: create the missing ones with that many partitions",
    )
    create_topics_replication: int = Field(default=1, ge=1, description="replication factor of created topics")
    exactly_once: bool = Field(
        default=False,
        description="Kafka transactions: forecasts, dead letters and input offsets commit together "
        "(daemon/io/kafka_eos.py)",
    )
    transactional_id: str | None = Field(
        default=None,
        description="exactly-once: stable per replica; default `<group_id>.<group_instance_id>` (one of "
        "the two must be set)",
    )
    transaction_timeout_ms: int = Field(
        default=60_000, ge=1_000, description="exactly-once: the broker aborts a transaction left open this long"
    )

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
    url: str = Field(default="redis://localhost:6379/0", description="Redis (with `cluster`: any node)")
    key_prefix: str = Field(
        default="kronos", min_length=1, pattern=r"^[^\s{}]+$", description="prefix of every key"
    )
    password: SecretStr | None = Field(default=None, description="Redis password (masked in logs)")
    username: str | None = Field(
        default=None,
        description="Redis ACL user (with `password`); unset: the `default` user. The rules it needs: "
        "`kronos-stream redis-acl`",
    )
    ssl_ca_certs: Path | None = Field(
        default=None,
        description="CA certificate (PEM) that signed the Redis server's TLS certificate, for a `rediss://` "
        "URL; unset: the system's CAs",
    )
    forecast_ttl_s: int | None = Field(
        default=None, ge=1, description="expiry of the latest-forecast key; unset: it never expires"
    )
    socket_timeout_s: float = Field(default=5.0, gt=0, description="bound of one Redis call and of connecting")
    cluster: bool = Field(
        default=False, description="a Redis Cluster (the URL names any node); a symbol's keys share a hash tag"
    )


class ModelSettings(_Group):
    tokenizer_dir: Path | None = Field(
        default=None, description="tokenizer checkpoint folder (`config.json` + `model.safetensors`)"
    )
    predictor_dir: Path | None = Field(default=None, description="predictor checkpoint folder")
    hf_tokenizer: str | None = Field(
        default=None,
        description="Hugging Face id of the tokenizer instead of the folder, e.g. "
        "`NeoQuasar/Kronos-Tokenizer-base` (fetched into the hub cache; `HF_HUB_OFFLINE=1`, `HF_TOKEN` honoured)",
    )
    hf_predictor: str | None = Field(
        default=None, description="Hugging Face id of the predictor, e.g. `NeoQuasar/Kronos-small`"
    )
    hf_revision: str | None = Field(default=None, description="branch, tag or commit of both (default: main)")
    preset: str | None = Field(
        default=None, description="random weights of a published shape (`Kronos-tiny`, ...): benchmarks only"
    )
    factory: str | None = Field(
        default=None, description="`module:callable` taking Settings and returning your own forecaster"
    )
    version: str | None = Field(
        default=None,
        description="model version in forecasts; default: the `version` of `manifest.json` beside the "
        "folders, else a content hash",
    )
    calendar_tz: str = Field(
        default="UTC",
        description="zone the time features (minute, hour, weekday...) are read in; default: the model "
        "manifest's `runtime.calendar_tz`, else UTC",
    )
    exchange_calendar: str | None = Field(
        default=None,
        description="`exchange_calendars` code (`XSHG`, `XNYS`, `XLON`...): horizon timestamps skip nights, "
        "weekends, holidays and breaks; default: the manifest's `runtime.exchange_calendar`, else 24/7",
    )
    calendar_bar_label: Literal["end", "start"] = Field(
        default="end", description="bars are stamped with their end (or start) time"
    )
    device: str = Field(default="auto", description="`auto`, `cpu`, `cuda` or `cuda:N`")
    threads: int | None = Field(
        default=None, ge=1, le=1024, description="torch CPU threads; unset: torch's default"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(default="float32", description="model dtype")
    compile: bool = Field(
        default=False,
        description="`torch.compile` the transformer blocks: pays on CUDA at large batches, slower at batch "
        "1; the first batches compile (tens of seconds)",
    )
    graph_buckets: GraphBuckets = Field(
        default=(1, 8, 32, 64, 128, 256, 512, 1024),
        description="CUDA: batch sizes whose decode-step CUDA graphs are captured at start-up; a call pads "
        "up to the next bucket, above the largest it runs in chunks; ignored on CPU",
    )
    residual_fp32: bool = Field(
        default=False, description="with bfloat16/float16: keep the transformers' residual stream in float32"
    )
    tokenizer_fp32: bool = Field(
        default=False, description="with bfloat16/float16: run the tokenizer in float32, the predictor in dtype"
    )
    max_context: int = Field(
        default=512,
        ge=2,
        le=8192,
        description="bars of context; default: the manifest's `runtime.max_context`, else 512; above the "
        "manifest's value the daemon refuses to start",
    )
    horizon: int = Field(default=12, ge=1, le=4096, description="bars forecast")
    sample_count: int = Field(default=8, ge=1, le=1024, description="sample paths per forecast")
    temperature: float = Field(default=1.0, gt=0, allow_inf_nan=False, description="sampling temperature")
    top_p: float = Field(default=0.9, gt=0, le=1, description="nucleus sampling")
    top_k: int = Field(default=0, ge=0, description="top-k sampling; 0: off")
    base_seed: int = Field(default=0, ge=0, description="base of the per-bar seeds")
    quantile_levels: QuantileLevels = Field(
        default=(0.1, 0.5, 0.9), description="quantile bands published (a comma list or JSON)"
    )
    max_sessions: int = Field(default=256, ge=1, description="incremental: warm symbols kept in memory")
    max_session_bytes: int | None = Field(
        default=None, ge=1, description="incremental: a bound in bytes on the warm sessions' caches"
    )
    registry: str | None = Field(
        default=None,
        description="a model registry (local path or fsspec URL) instead of fixed folders: the daemon serves "
        "its champion and hot-swaps when the pointer moves",
    )
    registry_public_key: Path | None = Field(
        default=None,
        description="Ed25519 public key (PEM) of the registry's signer: versions whose `manifest.sig` is missing "
        "or not this key's signature of the manifest are refused (the current model keeps serving); unset: "
        "signatures are not checked",
    )
    registry_poll_s: float = Field(
        default=10.0, gt=0, allow_inf_nan=False, description="how often the registry's pointer is read"
    )
    registry_hint: bool = Field(
        default=True, description="listen to the registry's Redis channel `{key_prefix}:models` (wakes the reader)"
    )
    registry_retry_s: float = Field(
        default=30.0, gt=0, allow_inf_nan=False, description="a refused version is tried again after this ..."
    )
    registry_retry_max_s: float = Field(
        default=600.0, gt=0, allow_inf_nan=False, description="... doubling up to this"
    )
    cache_dir: Path | None = Field(
        default=None, description="where a fetched version is unpacked (deleted once loaded); default: a temporary folder"
    )

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


class BatchSettings(_Group):
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


class ArchiveSettings(_Group):
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


class Settings(BaseSettings):
    """Everything the daemon reads from the environment (frozen once loaded)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        frozen=True,
        extra="forbid",
        case_sensitive=False,
    )

    kafka: KafkaSettings = Field(default=KafkaSettings(), description="Kafka")
    redis: RedisSettings = Field(default=RedisSettings(), description="Redis")
    model: ModelSettings = Field(default=ModelSettings(), description="the model")
    batch: BatchSettings = Field(default=BatchSettings(), description="batching")
    scoring: ScoringSettings = Field(default=ScoringSettings(), description="online scoring")
    archive: ArchiveSettings = Field(default=ArchiveSettings(), description="the archiver")
    api: ApiSettings = Field(default=ApiSettings(), description="the HTTP API (daemon/api)")
    challengers: ChallengerSettings = Field(
        default=ChallengerSettings(), description="shadow challengers, promotion and rollback"
    )
    mode: Literal["exact", "incremental"] = Field(default="exact", description="forecasting mode")
    refresh_every_bars: int = Field(
        default=64, ge=1, description="incremental: refreeze a symbol's statistics this often ..."
    )
    drift_sigma: float = Field(
        default=4.0, gt=0, allow_inf_nan=False, description="... or when a bar is this many sigmas out"
    )
    default_bar_interval_s: float = Field(
        default=60.0, gt=0, allow_inf_nan=False, description="bar interval until a symbol has two bars"
    )
    http_host: str = Field(default="0.0.0.0", description="address of `/healthz`, `/readyz`, `/metrics`")
    http_port: int | None = Field(
        default=8080, ge=0, le=65535, description="port of `/healthz`, `/readyz`, `/metrics`; 0: any free port; unset: no HTTP"
    )
    health_stale_s: float = Field(
        default=60.0, gt=0, description="`/healthz` fails when the loop has not ticked for this long"
    )
    max_future_s: float | None = Field(
        default=300.0,
        ge=0,
        allow_inf_nan=False,
        description="a bar more than this ahead of its message's broker timestamp (or the wall clock) is "
        "dead-lettered; unset: no bound",
    )
    dead_letter_skipped: bool = Field(
        default=False, description="also dead-letter bars skipped as `duplicate` or `out_of_order`"
    )
    retry_initial_s: float = Field(
        default=0.1,
        gt=0,
        allow_inf_nan=False,
        description="Kafka or Redis unreachable: first retry delay, doubling up to `KRONOS_RETRY_MAX_S`, "
        "each scaled by a random 0.5-1",
    )
    retry_max_s: float = Field(default=5.0, gt=0, allow_inf_nan=False, description="cap of the retry delay")
    outage_give_up_s: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="end the process (exit 1) when one outage lasts longer; unset: wait as long as it takes",
    )
    restore_lookback_s: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="state lost in Redis is restored from the input topic's bars of this many seconds back; "
        "unset: every retained bar",
    )
    health_probe_interval_s: float = Field(
        default=2.0, gt=0, allow_inf_nan=False, description="how often readiness pings Redis and a broker"
    )
    partition_stall_s: float = Field(
        default=120.0, gt=0, allow_inf_nan=False,
        description="a partition with lag whose position has not moved for this long: readiness 503, "
        "kronos_partition_stalled 1",
    )  # fmt: skip
    graceful_shutdown_s: float = Field(default=25.0, gt=0, description="bound of the shutdown on SIGTERM")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="log level")
    log_format: Literal["json", "console"] = Field(
        default="json", description="structlog on stderr: `json`, or `console` for people"
    )


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
