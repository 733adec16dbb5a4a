"""Operations endpoints on a tiny asyncio HTTP server (three GET routes need no web framework).

``/healthz``  liveness: 200 while the loop has ticked within ``KRONOS_HEALTH_STALE_S``, else 503 (stuck,
              not idle: idle fetches and retries during an outage tick too).
``/readyz``   readiness: 200 while the model is loaded, the consumer owns partitions and Kafka and Redis
              answer (periodic probes, no call waiting out an outage), else 503.
``/metrics``  Prometheus text format from this daemon's own registry.

Bodies of /healthz and /readyz are JSON with the details, so a probe's failure explains itself.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable
from typing import Any

import structlog

from daemon.ops.metrics import Metrics

log = structlog.get_logger("kronos.ops")

Probe = Callable[[], tuple[bool, dict[str, Any]]]

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class OpsServer:
    def __init__(
        self, metrics: Metrics, live: Probe, ready: Probe, host: str = "0.0.0.0", port: int = 8080
    ) -> None:
        self._metrics = metrics
        self._live = live
        self._ready = ready
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        log.info("ops endpoints listening", host=self._host, port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def respond(self, method: str, path: str, accept: str = "") -> tuple[int, str, bytes]:
        """Status, content type and body for one request (no I/O: tested directly). ``accept``: the
        request's Accept header (``application/openmetrics-text`` gets OpenMetrics)."""
        path = path.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET\n"
        if path == "/metrics":
            body, ctype = self._metrics.render(accept)
            return 200, ctype, body
        if path in ("/healthz", "/readyz"):
            ok, details = (self._live if path == "/healthz" else self._ready)()
            body = json.dumps({"ok": ok, **details}).encode() + b"\n"
            return (200 if ok else 503), "application/json", body
        return 404, "text/plain", b"try /healthz, /readyz or /metrics\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request = await reader.readline()
                accept = ""
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "accept":
                        accept = value.strip()
            parts = request.decode("latin-1").split()
            method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("GET", "/")
            status, ctype, body = self.respond(method, path, accept)
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError) as exc:
            log.debug("ops request dropped", error=repr(exc))
        finally:
            writer.close()


def check(url: str, timeout_s: float = 3.0) -> bool:
    """GET ``url`` and say whether it answered 200 (``kronos-stream check``: a ready-made probe)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (local probe)
            return bool(response.status == 200)
    except OSError:
        return False
