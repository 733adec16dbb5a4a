"""uvicorn inside the daemon's event loop: one :class:`Listener` per port (the API, the operations).

The socket is bound before serving starts, so a taken port stops start-up at once with a message
naming the variable. uvicorn installs no signal handlers here (the daemon owns SIGTERM and stops the
listeners in its shutdown), configures no logging (its records go through the daemon's structlog),
and writes no access log.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING

import structlog
import uvicorn
from starlette.types import ASGIApp

from daemon.ops.startup_checks import port_error

if TYPE_CHECKING:
    from daemon.app import Daemon

log = structlog.get_logger("kronos.api")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the daemon handles SIGTERM/SIGINT and stops this server itself


class Listener:
    """``app`` served on ``host:port`` (0: any free port) while the daemon runs."""

    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        *,
        what: str,
        variable: str,
        event: str,
        grace_s: float = 3.0,
        before_stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.app, self.host, self._port, self.what, self.variable = app, host, port, what, variable
        self.event = event  # the log line once listening, e.g. "ops endpoints listening"
        self.grace_s = grace_s
        self.before_stop = before_stop  # e.g. end the open event streams, so connections can close
        self._bound: int | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        return self._bound if self._bound is not None else self._port

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._port))
        except OSError as exc:
            sock.close()
            raise port_error(exc, self.host, self._port, self.what, self.variable) from exc
        sock.listen(2048)
        sock.setblocking(False)
        self._bound = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="off", server_header=False,
            timeout_graceful_shutdown=int(max(1, self.grace_s)), proxy_headers=False,
            h11_max_incomplete_event_size=256 * 1024,  # long symbol lists fit (query limits say 400 beyond)
        )  # fmt: skip
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name=f"kronos-http-{self.port}")
        for _ in range(200):  # started within a moment: the socket is bound already
            if self._server.started or self._task.done():
                break
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()
        log.info(self.event, serves=self.what, host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        if self.before_stop is not None:
            await self.before_stop()
        self._server.should_exit = True
        try:
            async with asyncio.timeout(self.grace_s + 2):
                await self._task
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        except Exception as exc:  # a server that crashed: closing must go on
            log.warning("HTTP listener ended with an error", port=self.port, error=repr(exc))
        self._server = None
        self._task = None



def api_listener(daemon: Daemon) -> Listener:
    """The API of ``daemon`` on ``KRONOS_API__HOST:PORT`` (ConfigError now if its keys are unusable)."""
    from daemon.api.app import build_api, extra_routers, public_routers
    from daemon.api.service import ApiService

    service = ApiService(daemon)
    app = build_api(service, routers=extra_routers(service), public_routers=public_routers())
    s = daemon.settings.api
    assert s.port is not None
    return Listener(
        app, s.host, s.port, what="the API (/v1)", variable="KRONOS_API__PORT", event="API listening",
        before_stop=service.close,
    )  # fmt: skip
