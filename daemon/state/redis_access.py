"""How the daemon reaches Redis (TLS, an ACL user) and the least Redis ACL it needs.

Every Redis client of the daemon and of the CLI (the state store and the score store through
:mod:`daemon.state.redis_client`, the registry hint listener) is made with :func:`client_options`: ``KRONOS_REDIS__USERNAME`` and ``KRONOS_REDIS__PASSWORD``
authenticate as an ACL user, a ``rediss://`` URL speaks TLS, verified against
``KRONOS_REDIS__SSL_CA_CERTS`` (else the system's CAs).

:func:`acl_rules` is the daemon's ACL user: its keys (``~{prefix}:*``), its channel (the registry hint
channel ``{prefix}:models``) and exactly the commands it sends, the ones its Lua scripts run included
(a script's ``redis.call`` is checked against the caller's ACL too). ``kronos-stream redis-acl`` prints it
as an ``ACL SETUSER`` line. A command the server refuses (``NOPERM``) becomes an error that names the
user, the command or key, and the rule to grant (:func:`refusal`).
"""

from __future__ import annotations

import re
from typing import Any

# What the daemon sends: the state store (EVALSHA of its scripts, SCRIPT LOAD when the server lacks
# them, pipelines of reads), the score store (a MULTI/EXEC transaction per round), the hint listener
# (SUBSCRIBE) and the decider (a lock, PUBLISH of the hint), the health probe (PING); SELECT for a URL
# naming a database other than 0.
DAEMON_COMMANDS: tuple[str, ...] = (
    "ping", "select",
    "evalsha", "script|load",
    # the state store's own calls and its Lua scripts' redis.call()s
    "get", "set", "del", "exists", "pttl",
    "hget", "hmget", "hset", "hgetall",
    "lrange", "rpush", "ltrim",
    # the forecast stream (written by the apply script, read by the API's /v1/stream)
    "xadd", "xread", "xrange", "xrevrange",
    # the score store
    "multi", "exec", "discard", "expire", "hincrbyfloat", "sadd", "smembers",
    # the per-forecast losses of the challengers' comparison (daemon/scoring/paired.py)
    "zadd", "zremrangebyrank", "zrange",
    # the decider's lock (daemon/model/promotion.py; SET NX PX, GET, DEL above)
    "pexpire",
    # the registry's hint channel (the decider publishes when it promotes or rolls back)
    "subscribe", "unsubscribe", "publish",
    # the dashboard's symbol list (daemon/api/ui/data.py)
    "scan",
)  # fmt: skip

# A Redis Cluster client also reads the command table (to find each command's keys), asks for the
# slot map and follows ASK redirections.
CLUSTER_COMMANDS: tuple[str, ...] = ("command", "cluster|slots", "cluster|shards", "asking")

# Who publishes the hint (the trainer, `kronos-stream models promote`): PUBLISH on the channel, no key.
PUBLISHER_COMMANDS: tuple[str, ...] = ("ping", "select", "publish")

_GLOB = re.compile(r"([*?\[\]\\])")


def glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis glob pattern (ACL key and channel patterns)."""
    return _GLOB.sub(r"\\\1", text)


def acl_rules(prefix: str, *, cluster: bool = False, publisher: bool = False) -> list[str]:
    """The ACL rules of the daemon's user for ``KRONOS_REDIS__KEY_PREFIX=prefix`` (``publisher``: of the
    hint publisher instead: the channel only, no key)."""
    p = glob_escape(prefix)
    keys = [] if publisher else [f"~{p}:*"]
    commands = PUBLISHER_COMMANDS if publisher else DAEMON_COMMANDS + (CLUSTER_COMMANDS if cluster else ())
    return ["resetkeys", *keys, "resetchannels", f"&{p}:models", "-@all", *(f"+{c}" for c in commands)]


def setuser_line(user: str, prefix: str, *, cluster: bool = False, publisher: bool = False) -> str:
    """``ACL SETUSER`` for ``user`` with :func:`acl_rules` (the password left to the operator)."""
    rules = acl_rules(prefix, cluster=cluster, publisher=publisher)
    return f"ACL SETUSER {user} reset on >PASSWORD " + " ".join(rules)


def client_options(r: Any) -> dict[str, Any]:
    """The keyword arguments of ``Redis.from_url`` / ``RedisCluster.from_url`` for ``RedisSettings``
    ``r`` (credentials, the CA of a ``rediss://`` URL, the timeouts)."""
    options: dict[str, Any] = {
        "socket_timeout": r.socket_timeout_s,
        "socket_connect_timeout": r.socket_timeout_s,
    }
    if r.password is not None:
        options["password"] = r.password.get_secret_value()
    if r.username:
        options["username"] = r.username
    if r.ssl_ca_certs is not None:
        if not r.url.startswith("rediss://"):
            from daemon.errors import ConfigError

            raise ConfigError(
                f"KRONOS_REDIS__SSL_CA_CERTS is set but KRONOS_REDIS__URL {r.url.split('@')[-1]!r} is not "
                "rediss://: use rediss:// for TLS (or unset the CA)"
            )
        options["ssl_ca_certs"] = str(r.ssl_ca_certs)
    return options


_COMMAND = re.compile(r"permissions to run the '([^']+)' command")


def refusal(exc: BaseException, user: str | None) -> str | None:
    """What to grant when ``exc`` (or its cause) is Redis refusing a command, key or channel to the ACL
    user (``NOPERM``); None for any other error."""
    from redis.exceptions import NoPermissionError

    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, NoPermissionError):
        seen = seen.__cause__ or seen.__context__
    text = str(seen) if seen is not None else str(exc)
    if seen is None and "NOPERM" not in text:
        return None
    who = user or "default"
    command = _COMMAND.search(text)
    if command:
        what, grant = f"the command {command.group(1).upper()}", f"+{command.group(1).lower()}"
    elif "channel" in text:
        what, grant = "the registry hint channel", "&<prefix>:models"
    else:
        what, grant = "a key", "~<prefix>:*"
    return (
        f"Redis refused {what} to the ACL user {who!r} (KRONOS_REDIS__USERNAME): NOPERM. Grant it with "
        f"`ACL SETUSER {who} {grant}` (every rule the daemon needs: `kronos-stream redis-acl --user {who}`); "
        "retried until granted"
    )


def explain(exc: BaseException, user: str | None) -> str:
    """:func:`refusal`'s message when ``exc`` is a NOPERM, else ``repr(exc)`` (for a log line)."""
    return refusal(exc, user) or repr(exc)
