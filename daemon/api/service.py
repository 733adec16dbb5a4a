"""What the routes reach the daemon through: its store, settings, scorer, model and stream hub.

``ApiService(daemon)`` is handed to every router factory (``ondemand_router(service)``...): routers read
the daemon's parts at request time, so the app can be built (and its OpenAPI schema generated) before
the daemon has started, or with no daemon at all (``ApiService(None)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from daemon.api.errors import ApiError
from daemon.api.stream_hub import StreamHub

if TYPE_CHECKING:
    from daemon.app import Daemon
    from daemon.settings import Settings
    from daemon.state.base import StateStore


class ApiService:
    def __init__(self, daemon: Daemon | None) -> None:
        self.daemon = daemon
        self.hub = StreamHub(self._store_for_hub, daemon.settings.api if daemon is not None else None)
        if daemon is not None:  # a blocking read must end before the Redis client's socket timeout
            self.hub.block_ms = min(self.hub.block_ms, max(1, int(daemon.settings.redis.socket_timeout_s * 500)))

    @property
    def settings(self) -> Settings:
        if self.daemon is None:
            raise ApiError(503, "the daemon is not running")
        return self.daemon.settings

    @property
    def store(self) -> StateStore:
        """The daemon's state store; 503 while it is not connected yet."""
        store = self.daemon.store if self.daemon is not None else None
        if store is None:
            raise ApiError(503, "the daemon is starting (not connected to Redis yet); retry shortly")
        return store

    def _store_for_hub(self) -> StateStore | None:
        return self.daemon.store if self.daemon is not None else None

    @property
    def scorer(self) -> Any:
        return self.daemon.scorer if self.daemon is not None else None

    @property
    def serving_version(self) -> str | None:
        forecaster = self.daemon.forecaster if self.daemon is not None else None
        return forecaster.model_version if forecaster is not None else None

    async def close(self) -> None:
        await self.hub.close()
