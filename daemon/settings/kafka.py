"""``KRONOS_KAFKA__*``: brokers, topics, consumer group, security and exactly-once."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from daemon.settings.base import Group


class KafkaSettings(Group):
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
