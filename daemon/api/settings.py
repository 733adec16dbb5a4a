"""``KRONOS_API__*``: the HTTP API's listener, authentication, rate limit and limits."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field

from daemon.api.limits import OnDemandLimits


class ApiSettings(OnDemandLimits):
    """The listener, authentication and rate limit here; the limits of ``POST /v1/forecast`` in
    :class:`~daemon.api.limits.OnDemandLimits`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(default="0.0.0.0", description="address of the HTTP API (`/v1/...`)")
    port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="port of the HTTP API (`/v1/...`, apart from the operations port); 0: any free port; "
        "unset: no API",
    )
    auth: Literal["keys", "none"] = Field(
        default="keys",
        description="`keys`: every `/v1` request needs an API key from `KRONOS_API__KEYS_FILE`; `none` "
        "(set explicitly): no authentication",
    )
    keys_file: Path | None = Field(
        default=None,
        description="file of hashed API keys, one `NAME:SHA256HEX` a line (`kronos-stream api-key new NAME` "
        "makes one); in Kubernetes a Secret mounted as a file",
    )
    rate_per_s: float = Field(
        default=20.0, gt=0, allow_inf_nan=False, description="requests per second each key may make (token bucket) ..."
    )
    burst: int = Field(default=40, ge=1, description="... with bursts of up to this many")
    max_symbols: int = Field(
        default=200, ge=1, le=10_000, description="symbols one `GET /v1/forecasts` or `/v1/stream` may name"
    )
    stream_clients: int = Field(
        default=200, ge=1, description="concurrent `/v1/stream` connections per daemon; more get 503"
    )
    stream_heartbeat_s: float = Field(
        default=15.0, gt=0, allow_inf_nan=False,
        description="an SSE comment this often keeps idle streams open through proxies",
    )  # fmt: skip
    stream_length: int = Field(
        default=10_000,
        ge=0,
        description="forecasts kept in the Redis stream `{prefix}:forecasts:stream` for `/v1/stream` resume "
        "(`XADD MAXLEN ~`); written by every replica, API or not; 0: no stream",
    )
