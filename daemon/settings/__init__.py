"""Configuration from the environment: ``KRONOS_`` prefix, ``__`` between a group and its field.

Examples: ``KRONOS_KAFKA__BOOTSTRAP_SERVERS=broker:9092``, ``KRONOS_REDIS__URL=redis://redis:6379/0``,
``KRONOS_MODEL__PREDICTOR_DIR=/models/current/predictor``, ``KRONOS_MODE=incremental``,
``KRONOS_MODEL__QUANTILE_LEVELS=0.1,0.5,0.9`` (a comma list or JSON).

:func:`load_settings` turns every bad value into one :class:`~daemon.errors.ConfigError` that names the
environment variables to fix, so a misconfigured pod stops at start-up with a readable message.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from daemon.api.settings import ApiSettings
from daemon.errors import ConfigError
from daemon.model.challenger_settings import ChallengerSettings
from daemon.settings.base import ENV_PREFIX, NESTED_DELIMITER, GraphBuckets, Group, QuantileLevels
from daemon.settings.jobs import ArchiveSettings, BatchSettings, ScoringSettings
from daemon.settings.kafka import KafkaSettings
from daemon.settings.model import ModelSettings
from daemon.settings.redis import RedisSettings

__all__ = [
    "ENV_PREFIX",
    "NESTED_DELIMITER",
    "ApiSettings",
    "ArchiveSettings",
    "BatchSettings",
    "ChallengerSettings",
    "GraphBuckets",
    "Group",
    "KafkaSettings",
    "ModelSettings",
    "QuantileLevels",
    "RedisSettings",
    "ScoringSettings",
    "Settings",
    "env_name",
    "load_settings",
    "unknown_env_names",
]


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
