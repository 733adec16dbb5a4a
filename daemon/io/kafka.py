"""What the Kafka consumer (:mod:`daemon.io.kafka_consumer`) and producer (:mod:`daemon.io.kafka_producer`)
share: aiokafka's connection options from the settings, starting a client, saying why a secured
connection fails, and aiokafka's errors as the daemon's bus errors (an outage or a refusal).
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.conn import create_conn
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    RequestTimedOutError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.helpers import create_ssl_context

from daemon.errors import BusError, BusUnavailable
from daemon.settings import KafkaSettings


def connection_config(settings: KafkaSettings) -> dict[str, Any]:
    """Bootstrap servers, client id and security options shared by consumer and producer."""
    config: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "request_timeout_ms": settings.request_timeout_ms,
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        cafile = str(settings.ssl_cafile) if settings.ssl_cafile else None
        config["ssl_context"] = create_ssl_context(cafile=cafile)
    if settings.security_protocol.startswith("SASL_"):
        assert settings.sasl_password is not None  # checked by KafkaSettings
        config["sasl_mechanism"] = settings.sasl_mechanism
        config["sasl_plain_username"] = settings.sasl_username
        config["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return config


_NOT_AUTHORISED = (
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)


def bus_error(message: str, exc: BaseException) -> BusError:
    """:class:`BusUnavailable` for what waiting can cure (no connection, a timeout, a retriable broker
    error such as no leader), else :class:`BusError` (a refusal: too large, not authorised...)."""
    unavailable = isinstance(
        exc, KafkaConnectionError | KafkaTimeoutError | RequestTimedOutError | TimeoutError | OSError
    ) or bool(getattr(exc, "retriable", False))
    if isinstance(exc, _NOT_AUTHORISED):
        message += (
            "; the broker's authorizer refused this client's principal (KRONOS_KAFKA__SASL_USERNAME): "
            "grant it the ACL the operation needs (READ on the input topic and on KRONOS_KAFKA__GROUP_ID "
            "to consume, WRITE on the output and dead-letter topics to publish); retried until granted"
        )
    return (BusUnavailable if unavailable else BusError)(message)


async def diagnose_connection(settings: KafkaSettings) -> str | None:
    """Why a secured connection to the first bootstrap server fails, naming the setting to fix; None
    when it succeeds or the cause is not a credential or certificate (aiokafka's bootstrap error only
    says it could not bootstrap, the cause is in its log)."""
    if settings.security_protocol == "PLAINTEXT":
        return None
    host, _, port = settings.bootstrap_servers.split(",")[0].strip().rpartition(":")
    config = connection_config(settings)
    config.pop("bootstrap_servers")
    config["request_timeout_ms"] = min(settings.request_timeout_ms, 10_000)
    try:
        conn = await create_conn(host.strip("[]"), int(port), **config)
    except SaslAuthenticationFailed as exc:
        return (
            f"SASL authentication as {settings.sasl_username!r} ({settings.sasl_mechanism}) failed: {exc}; "
            "check KRONOS_KAFKA__SASL_USERNAME, KRONOS_KAFKA__SASL_PASSWORD and KRONOS_KAFKA__SASL_MECHANISM"
        )
    except ssl.SSLCertVerificationError as exc:
        ca = settings.ssl_cafile or "the system's CAs"
        return (
            f"the broker's TLS certificate is not trusted ({exc.verify_message}) by {ca}: set "
            "KRONOS_KAFKA__SSL_CAFILE to the CA that signed the brokers' certificates"
        )
    except ssl.SSLError as exc:
        return (
            f"the TLS handshake failed ({exc}); check that KRONOS_KAFKA__SECURITY_PROTOCOL matches the "
            "listener at KRONOS_KAFKA__BOOTSTRAP_SERVERS"
        )
    except (KafkaError, OSError, ValueError):
        return None
    conn.close()
    return None


async def start_client(
    client: AIOKafkaConsumer | AIOKafkaProducer, what: str, settings: KafkaSettings
) -> None:
    """Start an aiokafka client; a failure closes it and says which settings to check."""
    try:
        await client.start()
    except (KafkaError, OSError) as exc:
        await client.stop()
        hint = await diagnose_connection(settings) or (
            "check KRONOS_KAFKA__BOOTSTRAP_SERVERS and the security settings"
        )
        message = f"cannot start the Kafka {what} at {settings.bootstrap_servers}: {exc!r}; {hint}"
        raise bus_error(message, exc) from exc
