"""The one Redis client factory (daemon/state/redis_client.py): both stores get their clients from it,
so the score store's client checks idle connections like the state store's, and an unusable URL is
the same StateError for both."""

from __future__ import annotations

import pytest

from daemon.errors import StateError
from daemon.scoring.store_redis import RedisScoreStore
from daemon.settings import load_settings
from daemon.state.redis import RedisStateStore
from daemon.state.redis_client import HEALTH_CHECK_INTERVAL_S

pytestmark = [pytest.mark.redis, pytest.mark.timeout(30)]


def test_an_unusable_url_names_the_setting_for_both_stores() -> None:
    for make in (
        lambda: RedisStateStore.from_url("http://nowhere:6379/0", "p", 8),
        lambda: RedisScoreStore.from_url("http://nowhere:6379/0", "p", 24),
    ):
        with pytest.raises(StateError, match="KRONOS_REDIS__URL"):
            make()


async def test_both_stores_check_idle_connections_and_answer(redis_url: str) -> None:
    settings = load_settings(redis={"url": redis_url, "socket_timeout_s": 2.5})
    state = RedisStateStore.from_settings(settings.redis, 8)
    scores = RedisScoreStore.from_settings(settings)
    try:
        for store in (state, scores):
            kwargs = store._client.connection_pool.connection_kwargs  # noqa: SLF001
            assert kwargs["health_check_interval"] == HEALTH_CHECK_INTERVAL_S
            assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 2.5
            assert await store._client.ping()  # noqa: SLF001
    finally:
        await state.close()
        await scores.close()


async def test_the_acl_user_is_kept_for_refusal_messages(redis_url: str) -> None:
    store = RedisScoreStore.from_url(redis_url, "p", 24, username="someone")
    assert store.acl_user == "someone"
    await store.close()
