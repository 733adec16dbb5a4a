"""``KRONOS_REDIS__*``: where the state, the forecasts and the scores live."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from daemon.settings.base import Group


class RedisSettings(Group):
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
