"""The two ASGI apps: the API (``/v1``, keys and rate limit) and the operations endpoints.

:func:`build_api` is the API: its own routes plus any ``routers`` (on-demand forecasts...), all behind
the same key check and rate limit; ``public_routers`` are mounted without them (pages that load their
data from the authenticated routes). :func:`build_ops` serves ``/healthz``, ``/readyz`` and ``/metrics``
unauthenticated, on their own port, as the Kubernetes probes and Prometheus expect.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon.api.auth import Guard
from daemon.api.catalog import catalog_router
from daemon.api.errors import install_error_handlers
from daemon.api.forecasts import forecasts_router
from daemon.api.service import ApiService
from daemon.api.settings import ApiSettings
from daemon.api.stream import stream_router

API_TITLE = "kronos-stream API"
API_VERSION = "1"

Probe = Callable[[], tuple[bool, dict[str, Any]]]


def extra_routers(service: ApiService) -> list[APIRouter]:
    """Routers of other modules that join the API (the daemon and the schema generator both use this)."""
    from daemon.api.ondemand import ondemand_router
    from daemon.api.ui.router import dashboard_router, reader_for

    return [ondemand_router(service), dashboard_router(lambda: reader_for(service))]


def public_routers() -> list[APIRouter]:
    """Routers mounted outside the keys: pages that load their data from the authenticated routes."""
    from daemon.api.ui.router import ui_router

    return [ui_router()]


def build_api(
    service: ApiService,
    settings: ApiSettings | None = None,
    *,
    routers: Sequence[APIRouter] = (),
    public_routers: Sequence[APIRouter] = (),
) -> FastAPI:
    """The API app. ``settings`` default to the daemon's ``KRONOS_API__*``; with ``auth=keys`` and no
    usable keys file this raises ConfigError (the daemon stops at start-up, naming the setting)."""
    if settings is None:
        settings = service.settings.api
    guard = Guard(settings)
    app = FastAPI(
        title=API_TITLE,
        version=API_VERSION,
        description="Latest forecasts, a live stream, model versions and scores of a kronos-stream daemon. "
        "Every `/v1` route needs an API key (`Authorization: Bearer KEY` or `X-API-Key: KEY`) unless "
        "the daemon runs with `KRONOS_API__AUTH=none`; every error is JSON `{\"message\": ...}`.",
        docs_url="/docs",
        redoc_url=None,
    )
    install_error_handlers(app)
    app.state.service = service
    app.state.guard = guard
    auth = [Depends(guard)]
    for make in (forecasts_router, stream_router, catalog_router):
        app.include_router(make(service), dependencies=auth)
    for router in routers:
        app.include_router(router, dependencies=auth)
    for router in public_routers:
        app.include_router(router)
    _declare_400_not_422(app)
    if service.daemon is not None:
        from daemon.api.metrics import ApiMetrics, CountRequests

        metrics = ApiMetrics(service.daemon.metrics.registry, lambda: len(service.hub.subscribers))
        app.add_middleware(CountRequests, metrics=metrics)
    return app


def _declare_400_not_422(app: FastAPI) -> None:
    """Invalid requests answer 400 (errors.py): the schema says so instead of FastAPI's 422."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_ops(render_metrics: Callable[[str], tuple[bytes, str]], live: Probe, ready: Probe) -> ASGIApp:
    """``/healthz`` (liveness), ``/readyz`` (readiness): 200 or 503 with the details as JSON;
    ``/metrics``: Prometheus text (OpenMetrics when the Accept header asks for it)."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    install_error_handlers(app, not_found="try /healthz, /readyz or /metrics (the API has a port of its own)")

    def probe(check: Probe) -> Response:
        ok, details = check()
        body = json.dumps({"ok": ok, **details}).encode() + b"\n"
        return Response(body, status_code=200 if ok else 503, media_type="application/json")

    @app.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz() -> Response:
        return probe(live)

    @app.api_route("/readyz", methods=["GET", "HEAD"])
    async def readyz() -> Response:
        return probe(ready)

    @app.api_route("/metrics", methods=["GET", "HEAD"])
    async def metrics(request: Request) -> Response:
        body, ctype = render_metrics(request.headers.get("accept", ""))
        return Response(body, media_type=ctype)

    return ConnectionClose(app)


class ConnectionClose:
    """Answers with ``Connection: close`` (probes and scrapes open one connection per request)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        await self.app(scope, receive, closing)
