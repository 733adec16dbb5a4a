"""The daemon against a locked-down Redis (scripts/services redis-secure): TLS only, with a CA of its own,
and an ACL user per test holding exactly the daemon's rules (daemon/state/redis_access.acl_rules) for
the test's key prefix. The daemon works end to end over rediss:// as that user, and the server logs no
refusal; a user lacking a command gets an error naming the user, the command and the grant, readiness
is 503, nothing is committed, and the daemon goes on once the command is granted; an unknown CA names
KRONOS_REDIS__SSL_CA_CERTS. The same on a Redis Cluster of TLS masters (scripts/services
redis-cluster-secure: the bus over TLS too, the user on every node, the cluster client's rules).

Users and keys are set up and removed through the default user (the admin of users.env)."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError

from daemon.app import Daemon
from daemon.io.retry import Abandoned
from daemon.settings import load_settings
from daemon.state.base import meta_key
from daemon.state.redis_access import acl_rules, refusal
from kronos_core.stream_types import StreamForecaster
from tests.support.launcher import (
    Topics,
    bar_series,
    committed_offsets,
    daemon_settings,
    expected_ids,
    forecasts,
    metric,
    produce,
    read_topic,
    running_daemon,
    wait_committed,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(120)]


class SecureRedis:
    def __init__(self) -> None:
        self.url = os.environ["REDIS_SECURE_URL"]
        self.ca = Path(os.environ["REDIS_SECURE_CA"])
        lines = Path(os.environ["REDIS_SECURE_USERS"]).read_text().split()
        self.passwords = dict(line.split("=", 1) for line in lines)

    def admin(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(self.url, password=self.passwords["admin"], ssl_ca_certs=str(self.ca))


@pytest.fixture
def secure_redis() -> SecureRedis:
    if "REDIS_SECURE_URL" not in os.environ:
        reason = "no secured Redis: scripts/services up redis-secure (scripts/run-tests starts it)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
        pytest.skip(reason)
    return SecureRedis()


class AclUser:
    """A test's own ACL user with the daemon's rules for the test's prefix."""

    def __init__(self, server: SecureRedis | SecureCluster, name: str, prefix: str) -> None:
        self.server, self.name, self.prefix = server, name, prefix
        self.password = secrets.token_urlsafe(12)

    async def set(self, *rules: str) -> None:
        assert isinstance(self.server, SecureRedis)
        admin = self.server.admin()
        try:
            await admin.execute_command("ACL", "SETUSER", self.name, *rules)
        finally:
            await admin.aclose()

    def redis(self, **over: Any) -> dict[str, Any]:
        """The daemon's KRONOS_REDIS__* as this user."""
        return {
            "url": self.server.url,
            "key_prefix": self.prefix,
            "username": self.name,
            "password": self.password,
            "ssl_ca_certs": str(self.server.ca),
            **over,
        }

    async def refusals(self) -> list[dict[Any, Any]]:
        """The server's ACL LOG entries of this user (each refused command, key or channel)."""
        assert isinstance(self.server, SecureRedis)
        admin = self.server.admin()
        try:
            entries = await admin.acl_log()
        finally:
            await admin.aclose()
        return [e for e in entries if e.get("username") in (self.name, self.name.encode())]


@pytest.fixture
async def acl_user(secure_redis: SecureRedis, unique_id: str) -> AsyncIterator[AclUser]:
    prefix = f"sec:{unique_id}"
    user = AclUser(secure_redis, f"test-{unique_id}", prefix)
    await user.set("reset", "on", f">{user.password}", *acl_rules(prefix))
    yield user
    admin = secure_redis.admin()
    try:
        keys = [k async for k in admin.scan_iter(match=f"{prefix}:*")]
        if keys:
            await admin.delete(*keys)
        await admin.execute_command("ACL", "DELUSER", user.name)
    finally:
        await admin.aclose()


async def test_the_daemon_runs_end_to_end_over_tls_as_an_acl_user_with_only_its_rules(
    secure_redis: SecureRedis,
    acl_user: AclUser,
    kafka_bootstrap: str,
    topics: Topics,
    group_id: str,
    forecaster: StreamForecaster,
) -> None:
    series = {s: bar_series(s, 8, seed=i) for i, s in enumerate(["RA", "RB"])}
    await produce(kafka_bootstrap, topics.input, [r for recs in series.values() for r in recs])
    settings = daemon_settings(
        kafka_bootstrap, secure_redis.url, acl_user.prefix, group_id, topics, redis=acl_user.redis()
    )
    assert settings.redis.url.startswith("rediss://") and settings.scoring.enabled

    async with running_daemon(settings, forecaster) as d:
        out = forecasts(await read_topic(kafka_bootstrap, topics.output, 16))
        await wait_committed(kafka_bootstrap, group_id, topics.input)
        await wait_until(lambda: not d.outages.down(), 10, "no outage")
        assert metric(d, "kronos_scoring_errors_total") == 0  # the score store's calls were allowed too

    assert {f["id"] for f in out} == expected_ids(series, forecaster.model_version)
    admin = secure_redis.admin()
    try:  # the state is the user's, under its prefix
        assert await admin.hget(meta_key(acl_user.prefix, "RA"), "last_ts") is not None
    finally:
        await admin.aclose()
    assert await acl_user.refusals() == []  # not one command, key or channel refused on the way


async def test_the_user_reaches_its_prefix_and_hint_channel_and_nothing_else(
    secure_redis: SecureRedis, acl_user: AclUser
) -> None:
    client = aioredis.Redis.from_url(
        secure_redis.url, username=acl_user.name, password=acl_user.password, ssl_ca_certs=str(secure_redis.ca)
    )
    try:
        await client.set(f"{acl_user.prefix}:x", "1")
        with pytest.raises(NoPermissionError):
            await client.get("someone-else:x")
        with pytest.raises(NoPermissionError):
            await client.keys("*")  # no command outside the list
        await client.publish(f"{acl_user.prefix}:models", "{}")  # the decider's hint, on its own channel
        with pytest.raises(NoPermissionError):
            await client.publish("other:models", "{}")
        async with client.pubsub() as pubsub:
            await pubsub.subscribe(f"{acl_user.prefix}:models")
            confirmed = await pubsub.get_message(timeout=5.0)
            assert confirmed is not None and confirmed["type"] == "subscribe", confirmed
            with pytest.raises(NoPermissionError):  # the refusal is the reply to the SUBSCRIBE
                await pubsub.subscribe("other:models")
                await pubsub.get_message(timeout=5.0)
    finally:
        await client.aclose()


async def test_a_command_the_user_lacks_names_user_command_and_grant_and_recovers_once_granted(
    secure_redis: SecureRedis,
    acl_user: AclUser,
    kafka_bootstrap: str,
    topics: Topics,
    group_id: str,
    forecaster: StreamForecaster,
) -> None:
    await acl_user.set("-evalsha")  # the state store's atomic write
    series = {"RM": bar_series("RM", 6, seed=3)}
    await produce(kafka_bootstrap, topics.input, series["RM"])
    settings = daemon_settings(
        kafka_bootstrap, secure_redis.url, acl_user.prefix, group_id, topics, redis=acl_user.redis()
    )

    async with running_daemon(settings, forecaster) as d:
        await wait_until(lambda: "redis" in d.outages.down(), 30, "the refused write to be reported")
        error = d.outages.down()["redis"]
        assert f"ACL user {acl_user.name!r}" in error and "EVALSHA" in error, error
        assert f"ACL SETUSER {acl_user.name} +evalsha" in error and "KRONOS_REDIS__USERNAME" in error
        assert "Traceback" not in error
        ok, details = d.ready()
        assert not ok and "redis" in details["services_down"]
        await asyncio.sleep(1.0)
        assert await committed_offsets(kafka_bootstrap, group_id, topics.input) == {}
        logged = await acl_user.refusals()  # the server's own record agrees (and the check above can fail)
        assert logged and all(e.get("object") in ("evalsha", b"evalsha") for e in logged), logged

        await acl_user.set("+evalsha")
        out = forecasts(await read_topic(kafka_bootstrap, topics.output, 6))
        await wait_committed(kafka_bootstrap, group_id, topics.input)
        await wait_until(lambda: d.ready()[0], 30, "readiness once the command is granted")

    assert {f["id"] for f in out} == expected_ids(series, forecaster.model_version)


async def test_an_unknown_ca_names_the_setting_and_is_waited_out(
    secure_redis: SecureRedis,
    acl_user: AclUser,
    kafka_bootstrap: str,
    topics: Topics,
    group_id: str,
    forecaster: StreamForecaster,
) -> None:
    settings = daemon_settings(
        kafka_bootstrap, secure_redis.url, acl_user.prefix, group_id, topics,
        redis=acl_user.redis(ssl_ca_certs=None),
    )  # fmt: skip
    daemon = Daemon(settings, forecaster=forecaster)
    starting = asyncio.create_task(daemon.start())
    try:
        await wait_until(lambda: "redis" in daemon.outages.down(), 30, "the TLS failure to be reported")
        assert "KRONOS_REDIS__SSL_CA_CERTS" in daemon.outages.down()["redis"]
        assert not daemon.ready()[0]
        await asyncio.sleep(0.5)
        assert not starting.done()  # retried, not a crash
    finally:
        daemon.request_stop()
        with pytest.raises(Abandoned):
            await starting
        await daemon.close()


async def test_the_hint_publisher_user_publishes_with_credentials_in_the_url_and_the_daemon_user_hears_it(
    secure_redis: SecureRedis, acl_user: AclUser, unique_id: str
) -> None:
    """The trainer's form: user, password and CA in KRONOS_TRAIN__REDIS_URL; PUBLISH only, no key."""
    from urllib.parse import quote

    from kronos_contract.registry import publish_hint

    publisher = AclUser(secure_redis, f"pub-{unique_id}", acl_user.prefix)
    await publisher.set("reset", "on", f">{publisher.password}", *acl_rules(acl_user.prefix, publisher=True))
    listener = aioredis.Redis.from_url(
        secure_redis.url, username=acl_user.name, password=acl_user.password, ssl_ca_certs=str(secure_redis.ca)
    )
    try:
        async with listener.pubsub() as pubsub:
            await pubsub.subscribe(f"{acl_user.prefix}:models")
            assert (await pubsub.get_message(timeout=5.0) or {}).get("type") == "subscribe"
            host = secure_redis.url.split("://", 1)[1]
            url = (
                f"rediss://{publisher.name}:{quote(publisher.password, safe='')}@{host}"
                f"?ssl_ca_certs={secure_redis.ca}"
            )
            assert await publish_hint(url, acl_user.prefix, "v9") == 1
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
            assert message is not None and b"v9" in message["data"]
        as_publisher = aioredis.Redis.from_url(url)
        try:
            with pytest.raises(NoPermissionError):
                await as_publisher.get(f"{acl_user.prefix}:generation")  # no key at all
        finally:
            await as_publisher.aclose()
    finally:
        await listener.aclose()
        admin = secure_redis.admin()
        try:
            await admin.execute_command("ACL", "DELUSER", publisher.name)
        finally:
            await admin.aclose()


def test_redis_acl_prints_the_setuser_line(capsys: pytest.CaptureFixture[str]) -> None:
    from daemon.cli.main import main as cli_main

    assert cli_main(["redis-acl", "--user", "kd", "--prefix", "fx"]) == 0
    line = capsys.readouterr().out.strip()
    assert line == "ACL SETUSER kd reset on >PASSWORD " + " ".join(acl_rules("fx"))
    assert "~fx:*" in line and "&fx:models" in line and "+keys" not in line
    assert "+publish" in line and "+zadd" in line  # the decider's hint; the challengers' losses
    assert cli_main(["redis-acl", "--prefix", "fx", "--publisher"]) == 0
    line = capsys.readouterr().out.strip()
    assert "+publish" in line and "~" not in line.replace("resetkeys", "")


class SecureCluster:
    """scripts/services redis-cluster-secure: three TLS masters (the bus over TLS too), the same ACL users."""

    def __init__(self) -> None:
        self.url = os.environ["REDIS_CLUSTER_SECURE_URL"]
        self.nodes = os.environ["REDIS_CLUSTER_SECURE_NODES"].split(",")
        self.ca = Path(os.environ["REDIS_CLUSTER_SECURE_CA"])
        lines = Path(os.environ["REDIS_CLUSTER_SECURE_USERS"]).read_text().split()
        self.passwords = dict(line.split("=", 1) for line in lines)

    def node_admins(self) -> list[aioredis.Redis]:
        """The admin on each node: ACL users are per node in a cluster."""
        return [
            aioredis.Redis.from_url(f"rediss://{n}/0", password=self.passwords["admin"], ssl_ca_certs=str(self.ca))
            for n in self.nodes
        ]


@pytest.fixture
async def cluster_user(unique_id: str) -> AsyncIterator[tuple[SecureCluster, AclUser]]:
    """An ACL user with the daemon's cluster rules, on every node of the TLS cluster."""
    if "REDIS_CLUSTER_SECURE_URL" not in os.environ:
        reason = "no secured Redis Cluster: scripts/services up redis-cluster-secure (scripts/run-tests starts it)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
        pytest.skip(reason)
    cluster = SecureCluster()
    prefix = f"csec:{unique_id}"
    user = AclUser(cluster, f"test-{unique_id}", prefix)
    admins = cluster.node_admins()
    try:
        for admin in admins:
            await admin.execute_command(
                "ACL", "SETUSER", user.name, "reset", "on", f">{user.password}", *acl_rules(prefix, cluster=True)
            )
        yield cluster, user
        for admin in admins:
            keys = [k async for k in admin.scan_iter(match=f"{prefix}:*")]
            for key in keys:  # one by one: the keys of a node lie in different slots
                await admin.delete(key)
            await admin.execute_command("ACL", "DELUSER", user.name)
    finally:
        for admin in admins:
            await admin.aclose()


async def test_the_daemon_runs_end_to_end_on_a_tls_cluster_as_an_acl_user_with_only_its_rules(
    cluster_user: tuple[SecureCluster, AclUser],
    kafka_bootstrap: str,
    topics: Topics,
    group_id: str,
    forecaster: StreamForecaster,
) -> None:
    cluster, user = cluster_user
    series = {s: bar_series(s, 8, seed=i) for i, s in enumerate(["CA", "CB", "CC"])}
    await produce(kafka_bootstrap, topics.input, [r for recs in series.values() for r in recs])
    settings = daemon_settings(
        kafka_bootstrap, cluster.url, user.prefix, group_id, topics, redis=user.redis(cluster=True)
    )

    async with running_daemon(settings, forecaster) as d:
        out = forecasts(await read_topic(kafka_bootstrap, topics.output, 24))
        await wait_committed(kafka_bootstrap, group_id, topics.input)
        await wait_until(lambda: not d.outages.down(), 10, "no outage")
        assert metric(d, "kronos_scoring_errors_total") == 0

    assert {f["id"] for f in out} == expected_ids(series, forecaster.model_version)
    refused = []
    for admin in cluster.node_admins():
        try:
            entries = await admin.acl_log()
            refused += [e for e in entries if e.get("username") in (user.name, user.name.encode())]
            stored = await admin.keys(f"{user.prefix}:*")
        finally:
            await admin.aclose()
        assert stored, "every node holds some of the state (three symbols, three masters)"
    assert refused == []  # on no node was a command, key or channel refused


def test_a_ca_without_rediss_is_a_configuration_error() -> None:
    from daemon.errors import ConfigError
    from daemon.state.redis_access import client_options

    r = load_settings(redis={"url": "redis://h:6379/0", "ssl_ca_certs": "/etc/ca.crt"}).redis
    with pytest.raises(ConfigError, match="rediss://"):
        client_options(r)


def test_refusal_names_the_command_or_the_key_and_is_none_for_other_errors() -> None:
    command = NoPermissionError("this user has no permissions to run the 'hincrbyfloat' command")
    assert "`ACL SETUSER u +hincrbyfloat`" in (refusal(command, "u") or "")
    key = NoPermissionError("this user has no permissions to access one of the keys used as arguments")
    assert "~<prefix>:*" in (refusal(key, None) or "") and "'default'" in (refusal(key, None) or "")
    assert refusal(ConnectionError("refused"), "u") is None
