"""Start-up checks that turn a new user's usual mistakes into messages naming the variable to fix.

- Kafka topics: a misspelt topic used to be auto-created by the broker and consumed forever in silence.
  :func:`ensure_topics` checks that the input, output and dead-letter topics exist and stops with a
  message when one is missing; with ``KRONOS_KAFKA__CREATE_TOPICS=N`` it creates the missing ones with
  N partitions (replication ``KRONOS_KAFKA__CREATE_TOPICS_REPLICATION``, default 1) instead.
- An HTTP port already taken: :func:`port_error` names ``KRONOS_HTTP_PORT`` (or ``KRONOS_API__PORT``).
- Redis refusing the credentials: :func:`credentials_error` names ``KRONOS_REDIS__PASSWORD`` (not the URL)
  and is not retried as an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from typing import Any

from daemon.errors import BusError, ConfigError, StateError
from daemon.settings import KafkaSettings

_AUTH_MARKERS = ("WRONGPASS", "NOAUTH", "invalid username-password", "Authentication required",
                 "authenticated", "AUTH")  # fmt: skip


async def ensure_topics(k: KafkaSettings) -> list[str]:
    """Check the daemon's three topics exist; create the missing ones when asked. Returns those created."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError, TopicAlreadyExistsError

    from daemon.io.kafka import connection_config

    wanted = {
        "KRONOS_KAFKA__INPUT_TOPIC": k.input_topic,
        "KRONOS_KAFKA__OUTPUT_TOPIC": k.output_topic,
        "KRONOS_KAFKA__DEAD_LETTER_TOPIC": k.dead_letter_topic,
    }
    admin = AIOKafkaAdminClient(**connection_config(k))
    try:
        await admin.start()
        missing = await _missing_topics(admin, wanted)
        if not missing:
            return []
        if k.create_topics is None:
            listed = ", ".join(f"{var}={name}" for var, name in missing.items())
            hidden = (
                " With an authorizer, a topic this principal may not DESCRIBE is hidden from it: grant "
                f"{k.sasl_username or 'the principal'} its ACLs (READ on the input topic, WRITE on the others)."
                if k.security_protocol != "PLAINTEXT"
                else ""
            )
            raise ConfigError(
                f"Kafka at {k.bootstrap_servers} has no topic {listed}. Check the name (a typo would "
                "otherwise be consumed forever in silence), create the topic, or set "
                "KRONOS_KAFKA__CREATE_TOPICS=<partitions> to let the daemon create the missing topics."
                + hidden
            )
        names = sorted(set(missing.values()))
        with contextlib.suppress(TopicAlreadyExistsError):  # another replica created them first
            response = await admin.create_topics(
                [NewTopic(n, k.create_topics, k.create_topics_replication) for n in names]
            )
            failed = [
                (t[0], t[2] if len(t) > 2 else t[1]) for t in response.topic_errors if t[1] not in (0, 36)
            ]
            if failed:
                raise BusError(f"creating the Kafka topics {names} failed: {failed}")
        return names
    except KafkaError as exc:
        from daemon.io.kafka import diagnose_connection

        hint = await diagnose_connection(k) or "check KRONOS_KAFKA__BOOTSTRAP_SERVERS and the security settings"
        raise BusError(f"checking the Kafka topics at {k.bootstrap_servers} failed: {exc}; {hint}") from exc
    finally:
        await admin.close()


async def _missing_topics(admin: Any, wanted: dict[str, str], settle_s: float = 3.0) -> dict[str, str]:
    """The wanted topics the cluster's metadata lacks. A topic created a moment ago may not be in every
    broker's metadata yet, so a missing one is looked for again for up to ``settle_s``."""
    deadline = time.monotonic() + settle_s
    while True:
        existing = set(await admin.list_topics())
        missing = {var: name for var, name in wanted.items() if name not in existing}
        if not missing or time.monotonic() >= deadline:
            return missing
        await asyncio.sleep(0.25)


def port_error(
    exc: OSError,
    host: str,
    port: int,
    what: str = "/healthz, /readyz and /metrics",
    variable: str = "KRONOS_HTTP_PORT",
) -> ConfigError:
    if exc.errno == errno.EADDRINUSE:
        why = f"port {port} is already in use (another daemon, or another program)"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        why = f"no permission to listen on port {port} (ports below 1024 need privileges)"
    else:
        why = f"{exc.strerror or exc}"
    return ConfigError(
        f"cannot serve {what} on {host}:{port}: {why}. Set {variable} to a free port (0 picks one), or "
        f"{variable.removesuffix('PORT')}HOST to another address."
    )


def credentials_error(exc: StateError) -> ConfigError | None:
    """A ConfigError naming KRONOS_REDIS__PASSWORD when Redis refused the credentials, else None (an
    outage, waited out)."""
    cause = exc.__cause__
    text = str(cause) if cause is not None else str(exc)
    if not any(marker in text for marker in _AUTH_MARKERS):
        return None
    return ConfigError(
        f"Redis refused the credentials ({text}). Set KRONOS_REDIS__PASSWORD to the server's password "
        "(or remove it if the server has none), and KRONOS_REDIS__USERNAME to the ACL user it belongs to "
        "(unset: the default user); a password in KRONOS_REDIS__URL is overridden by it."
    )
