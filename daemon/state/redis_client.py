"""The one way the daemon and its CLI make a Redis client for their stores (the state store, the score
store; the dashboard reads through the state store's client).

One server gets a connection health check every 30 s (a connection idle longer is pinged before it is
used, so a Redis restart costs no failed call); a Redis Cluster client (``KRONOS_REDIS__CLUSTER``)
finds its nodes from any one of them. A URL redis-py cannot use is a :class:`~daemon.errors.StateError`
that names the setting to fix. Credentials and TLS: :func:`daemon.state.redis_access.client_options`.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from daemon.errors import StateError
from daemon.state.redis_access import client_options

RedisClient = aioredis.Redis | RedisCluster

HEALTH_CHECK_INTERVAL_S = 30


def redis_client(
    url: str,
    *,
    password: str | None = None,
    timeout_s: float = 5.0,
    cluster: bool = False,
    username: str | None = None,
    ssl_ca_certs: str | None = None,
) -> RedisClient:
    """A client of ``url`` (``cluster``: any node of a Redis Cluster); ``username``: an ACL user;
    ``ssl_ca_certs``: the CA of a ``rediss://`` server; ``timeout_s`` bounds a call and connecting."""
    extra: dict[str, Any] = {} if password is None else {"password": password}
    extra.update(socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    if username:
        extra["username"] = username
    if ssl_ca_certs:
        extra["ssl_ca_certs"] = ssl_ca_certs
    try:
        if cluster:
            return RedisCluster.from_url(url, **extra)
        return aioredis.Redis.from_url(url, health_check_interval=HEALTH_CHECK_INTERVAL_S, **extra)
    except (ValueError, RedisError) as exc:
        raise StateError(
            f"cannot use Redis URL {url!r}: {exc}; check KRONOS_REDIS__URL (and KRONOS_REDIS__CLUSTER)"
        ) from exc


def client_from_settings(r: Any) -> RedisClient:
    """The client of ``KRONOS_REDIS__*`` (``r``: RedisSettings)."""
    options = client_options(r)
    return redis_client(
        r.url, password=options.get("password"), timeout_s=r.socket_timeout_s, cluster=r.cluster,
        username=options.get("username"), ssl_ca_certs=options.get("ssl_ca_certs"),
    )  # fmt: skip
