"""The daemon against a secured broker (scripts/services kafka-secure): SASL_SSL with SCRAM-SHA-512,
a CA of its own, the KRaft StandardAuthorizer. The daemon's principal gets the ACLs it needs and no
more; a wrong password, an unknown CA or a missing ACL is a clear error naming the setting, readiness
is 503, nothing undelivered is committed, and the daemon goes on by itself once the ACL is granted.

Topics and ACLs are set up through the broker's loopback PLAINTEXT listener (the superuser's)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.protocol.admin import CreateAclsRequest

from daemon.app import Daemon
from daemon.io.retry import Abandoned
from kronos_core.stream_types import StreamForecaster
from tests.support.launcher import (
    Topics,
    bar_series,
    committed_offsets,
    daemon_settings,
    end_offsets,
    expected_ids,
    forecasts,
    produce,
    read_topic,
    running_daemon,
    wait_committed,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(120)]

TOPIC, GROUP = 2, 3  # ACL resource types
READ, WRITE, DESCRIBE = 3, 4, 8  # ACL operations
LITERAL, ALLOW = 3, 3
USER = "kronos-daemon"


class Secure:
    def __init__(self) -> None:
        self.bootstrap = os.environ["KAFKA_SECURE_BOOTSTRAP"]
        self.admin = os.environ["KAFKA_SECURE_ADMIN"]  # PLAINTEXT, superuser
        self.ca = Path(os.environ["KAFKA_SECURE_CA"])
        lines = Path(os.environ["KAFKA_SECURE_USERS"]).read_text().split()
        self.passwords = dict(line.split("=", 1) for line in lines)

    def kafka(self, **over: Any) -> dict[str, Any]:
        """The daemon's security settings (KRONOS_KAFKA__*) as its principal."""
        return {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": USER,
            "sasl_password": self.passwords[USER],
            "ssl_cafile": str(self.ca),
            "request_timeout_ms": 10_000,
            **over,
        }

    async def grant(self, resource_type: int, name: str, operation: int, user: str = USER) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.admin)
        await admin.start()
        try:
            request = CreateAclsRequest(resource_type, name, LITERAL, f"User:{user}", "*", operation, ALLOW)
            response = await admin._send_request(request)  # noqa: SLF001 (aiokafka's admin has no create_acls)
            assert all(code == 0 for code, _ in response.creation_responses), response
        finally:
            await admin.close()


@pytest.fixture
def secure() -> Secure:
    if "KAFKA_SECURE_BOOTSTRAP" not in os.environ:
        reason = "no secured broker: scripts/services up kafka-secure (scripts/run-tests starts it)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
        pytest.skip(reason)
    return Secure()


@pytest.fixture
async def secure_topics(secure: Secure) -> AsyncIterator[Topics]:
    """Input (2 partitions), output and dead-letter topics on the secured broker, deleted after."""
    names = [f"secure-{uuid.uuid4().hex[:12]}-{what}" for what in ("in", "out", "dlq")]
    admin = AIOKafkaAdminClient(bootstrap_servers=secure.admin)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, 2 if n.endswith("-in") else 1, 1) for n in names])
        yield Topics(*names)
    finally:
        await admin.delete_topics(names)
        await admin.close()


async def grant_daemon(secure: Secure, topics: Topics, group: str, output: bool = True) -> None:
    """What the daemon needs and nothing else: read the input topic and commit its group, write the
    output (unless ``output`` is False: then only describe it) and dead-letter topics."""
    await secure.grant(TOPIC, topics.input, READ)
    await secure.grant(GROUP, group, READ)
    await secure.grant(TOPIC, topics.dead, WRITE)
    await secure.grant(TOPIC, topics.output, WRITE if output else DESCRIBE)


async def test_the_daemon_runs_end_to_end_over_sasl_ssl_with_only_its_acls(
    secure: Secure,
    secure_topics: Topics,
    redis_url: str,
    key_prefix: str,
    group_id: str,
    forecaster: StreamForecaster,
) -> None:
    topics = secure_topics
    await grant_daemon(secure, topics, group_id)
    series = {s: bar_series(s, 8, seed=i) for i, s in enumerate(["SA", "SB"])}
    await produce(secure.admin, topics.input, [r for recs in series.values() for r in recs])
    settings = daemon_settings(secure.bootstrap, redis_url, key_prefix, group_id, topics, kafka=secure.kafka())

    async with running_daemon(settings, forecaster) as d:
        out = forecasts(await read_topic(secure.admin, topics.output, 16))
        await wait_committed(secure.admin, group_id, topics.input)
        await wait_until(lambda: not d.outages.down(), 10, "no outage")

    assert {f["id"] for f in out} == expected_ids(series, forecaster.model_version)


async def _start_failing(settings: Any, forecaster: StreamForecaster) -> tuple[Daemon, asyncio.Task[None]]:
    daemon = Daemon(settings, forecaster=forecaster)
    return daemon, asyncio.create_task(daemon.start())


@pytest.mark.parametrize(
    ("case", "names"),
    [
        ("wrong password", ("KRONOS_KAFKA__SASL_PASSWORD", "SaslAuthenticationFailed")),
        ("unknown CA", ("KRONOS_KAFKA__SSL_CAFILE", "not trusted")),
    ],
)
async def test_bad_credentials_or_an_unknown_ca_name_the_setting_and_are_waited_out_not_fatal(
    case: str,
    names: tuple[str, ...],
    secure: Secure,
    secure_topics: Topics,
    redis_url: str,
    key_prefix: str,
    group_id: str,
    forecaster: StreamForecaster,
) -> None:
    over = {"sasl_password": "not-the-password"} if case == "wrong password" else {"ssl_cafile": None}
    settings = daemon_settings(
        secure.bootstrap, redis_url, key_prefix, group_id, secure_topics, kafka=secure.kafka(**over)
    )
    daemon, starting = await _start_failing(settings, forecaster)
    try:
        await wait_until(lambda: "kafka" in daemon.outages.down(), 30, "the Kafka failure to be reported")
        error = daemon.outages.down()["kafka"]
        assert all(name in error for name in names), error
        assert not daemon.ready()[0]
        await asyncio.sleep(1.0)
        assert not starting.done()  # retried, not a crash (a pod would not crash-loop)
    finally:
        daemon.request_stop()
        with pytest.raises(Abandoned):
            await starting
        await daemon.close()


async def test_a_missing_acl_on_the_output_topic_commits_nothing_and_recovers_once_granted(
    secure: Secure,
    secure_topics: Topics,
    redis_url: str,
    key_prefix: str,
    group_id: str,
    forecaster: StreamForecaster,
) -> None:
    topics = secure_topics
    await grant_daemon(secure, topics, group_id, output=False)
    series = {"SM": bar_series("SM", 6, seed=4)}
    await produce(secure.admin, topics.input, series["SM"])
    settings = daemon_settings(secure.bootstrap, redis_url, key_prefix, group_id, topics, kafka=secure.kafka())

    async with running_daemon(settings, forecaster) as d:
        await wait_until(lambda: "kafka" in d.outages.down(), 30, "the refused publish to be reported")
        error = d.outages.down()["kafka"]
        assert "TopicAuthorizationFailed" in error and "KRONOS_KAFKA__SASL_USERNAME" in error, error
        assert "WRITE on the output" in error
        ok, details = d.ready()
        assert not ok and "kafka" in details["services_down"]
        await asyncio.sleep(1.0)
        assert await committed_offsets(secure.admin, group_id, topics.input) == {}  # nothing undelivered

        await secure.grant(TOPIC, topics.output, WRITE)
        out = forecasts(await read_topic(secure.admin, topics.output, 6))
        await wait_committed(secure.admin, group_id, topics.input)
        await wait_until(lambda: d.ready()[0], 30, "readiness once the ACL is granted")

    assert {f["id"] for f in out} == expected_ids(series, forecaster.model_version)


async def test_the_archiver_runs_with_its_own_principal_and_only_its_acls(
    secure: Secure, secure_topics: Topics, tmp_path: Path
) -> None:
    """kronos-archiver may read the input topic and commit its own group, nothing else: it archives
    every bar; the daemon's principal and ACLs are not involved."""
    from daemon.archive.archiver import Archiver
    from daemon.settings import ArchiveSettings, KafkaSettings

    topics = secure_topics
    group = f"archive-{uuid.uuid4().hex[:8]}"
    await secure.grant(TOPIC, topics.input, READ, user="kronos-archiver")
    await secure.grant(GROUP, group, READ, user="kronos-archiver")
    bars = bar_series("AR", 12, seed=1)
    await produce(secure.admin, topics.input, bars)
    kafka = KafkaSettings(
        **secure.kafka(sasl_username="kronos-archiver", sasl_password=secure.passwords["kronos-archiver"]),
        session_timeout_ms=6000, heartbeat_interval_ms=500,
    )  # fmt: skip
    archive = ArchiveSettings(root=str(tmp_path), topic=topics.input, group_id=group, fetch_timeout_ms=100)
    archiver = Archiver(kafka, archive)
    stop = asyncio.Event()
    task = asyncio.create_task(archiver.run(stop))
    try:
        await wait_until(lambda: archiver.stats.consumed >= 12 or task.done(), 60, "the archiver to read the bars")
    finally:
        stop.set()
    stats = await task
    assert (stats.consumed, stats.archived) == (12, 12)
    ends = {p: o for p, o in (await end_offsets(secure.admin, topics.input)).items() if o > 0}
    assert await committed_offsets(secure.admin, group, topics.input) == ends  # its own group
