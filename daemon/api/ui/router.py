"""The dashboard's routes: the page at ``/ui``, its static files, the chart as SVG and the small JSON
routes the page reads besides the API's own (``/v1/scores``, ``/v1/stream``).

``/ui`` and ``/ui/static/*`` hold no data and need no key; the page asks for the API key once (kept in
the tab's sessionStorage) and sends it on every call to the routes below, which take the API's own auth
dependencies.

| route | what |
|---|---|
| ``GET /ui`` | the page |
| ``GET /ui/static/{name}`` | its script and style sheet |
| ``GET /ui/chart.svg?symbol=S&bars=N`` | the fan chart of S: its last N bars and latest forecast (:mod:`daemon.api.ui.chart`) |
| ``GET /v1/symbols`` | the symbols with a latest forecast in Redis |
| ``GET /v1/bars/{symbol}?count=N`` | the last N bars' closes of a symbol's ring in Redis |
| ``GET /v1/events`` | recent model swaps, swaps by result and dead letters by kind, since the daemon started |
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from html import escape
from importlib import resources
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Query
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from daemon.api.errors import ERROR_RESPONSES, ApiError, ErrorBody
from daemon.api.service import ApiService
from daemon.api.ui.chart import fan_chart_svg
from daemon.api.ui.data import DashboardData, recent_bars_json
from daemon.errors import StateError

T = TypeVar("T")
MAX_BARS = 2048
SYMBOL = r"^\S+$"  # as the API's other routes take symbols: 1-64 characters, no spaces
_STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
# The page loads nothing from elsewhere: scripts, styles and calls only from the daemon itself.
_CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'"


def _static(name: str) -> bytes:
    return resources.files("daemon.api.ui").joinpath("static", name).read_bytes()


def ui_router(key_header: str = "X-API-Key") -> APIRouter:
    """The page and its static files: no data, no key needed (mounted beside the API's routes, outside
    its auth). ``key_header``: the header the page sends the API key in."""
    html = _static("index.html").decode().replace("{{KEY_HEADER}}", escape(key_header, quote=True)).encode()
    router = APIRouter()

    @router.get("/ui", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> Response:
        return Response(
            html,
            media_type="text/html; charset=utf-8",
            headers={"Content-Security-Policy": _CSP, "Referrer-Policy": "no-referrer"},
        )

    @router.get("/ui/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in _STATIC:
            raise ApiError(404, f"no static file {name!r}; there are {sorted(_STATIC)}")
        return Response(_static(name), media_type=_STATIC[name], headers={"Cache-Control": "no-cache"})

    return router


class SymbolsResponse(BaseModel):
    symbols: list[str] = Field(description="symbols with a latest forecast in Redis, sorted (at most 5,000)")


class BarClose(BaseModel):
    ts: str = Field(description="the bar's time (UTC, ISO-8601)")
    close: float


class BarsResponse(BaseModel):
    symbol: str
    bars: list[BarClose] = Field(description="the last bars of the symbol's ring in Redis, oldest first")


class SwapEvent(BaseModel):
    at: str = Field(description="when the new version went into service (UTC)")
    old_version: str
    new_version: str


class Swaps(BaseModel):
    recent: list[SwapEvent] = Field(description="the last swaps since the daemon started, newest first")
    by_result: dict[str, float] = Field(description="versions tried, by result (kronos_model_swaps_total)")


class DeadLetters(BaseModel):
    by_kind: dict[str, float] = Field(description="dead letters by kind (kronos_invalid_messages_total)")
    truncated: float = Field(description="sent truncated (kronos_dead_letters_truncated_total)")
    failed: float = Field(
        description="refused even truncated, only logged (kronos_dead_letters_failed_total)"
    )


class EventsResponse(BaseModel):
    swaps: Swaps
    dead_letters: DeadLetters


async def _read(call: Awaitable[T]) -> T:
    try:
        return await call
    except (RedisError, OSError, StateError) as exc:
        raise ApiError(503, f"the dashboard cannot read Redis now: {exc}; retry shortly") from exc


def reader_for(service: ApiService) -> DashboardData:
    """The dashboard's reader on the daemon of ``service``: its Redis store, metrics and swap log."""
    daemon = service.daemon
    try:
        return DashboardData.for_store(
            service.store, daemon.metrics.registry if daemon else None, daemon.swaps if daemon else None
        )
    except StateError as exc:
        raise ApiError(503, str(exc)) from exc


def dashboard_router(data: Callable[[], DashboardData]) -> APIRouter:
    """The routes the page reads (the API mounts them behind its keys). ``data()``: the reader, asked
    at each request (the daemon's Redis connection may come after the app is built)."""
    router = APIRouter(tags=["dashboard"])

    @router.get(
        "/ui/chart.svg",
        operation_id="get_chart",
        response_class=Response,
        responses={
            200: {"content": {"image/svg+xml": {"schema": {"type": "string"}}}, "description": "the chart"},
            404: {"model": ErrorBody, "description": "no bars and no forecast for this symbol"},
            **ERROR_RESPONSES,
        },
        summary="The fan chart of a symbol (SVG)",
    )
    async def chart(
        symbol: Annotated[str, Query(min_length=1, max_length=64, pattern=SYMBOL, description="the symbol")],
        bars: Annotated[int, Query(ge=1, le=MAX_BARS, description="recent bars shown")] = 64,
    ) -> Response:
        shown, fan, previous = await _read(data().chart_data(symbol, bars))
        if not shown and fan is None:
            raise ApiError(404, f"no bars and no forecast for symbol {symbol!r} in Redis")
        svg = fan_chart_svg(symbol, shown, fan, previous)
        return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "no-store"})

    @router.get(
        "/v1/symbols", operation_id="list_symbols", summary="Symbols with a latest forecast", response_model=SymbolsResponse,
        responses=ERROR_RESPONSES,
    )  # fmt: skip
    async def symbols() -> dict[str, list[str]]:
        return {"symbols": await _read(data().symbols())}

    @router.get(
        "/v1/bars/{symbol}", operation_id="get_bars", summary="A symbol's recent bars (closes)", response_model=BarsResponse,
        responses={404: {"model": ErrorBody, "description": "no bars for this symbol"}, **ERROR_RESPONSES},
    )  # fmt: skip
    async def recent_bars(
        symbol: Annotated[str, Path(min_length=1, max_length=64, pattern=SYMBOL, description="the symbol")],
        count: Annotated[int, Query(ge=1, le=MAX_BARS, description="how many of the last bars")] = 64,
    ) -> dict[str, Any]:
        got = await _read(data().bars(symbol, count))
        if not got:
            raise ApiError(404, f"no bars for symbol {symbol!r} in Redis")
        return recent_bars_json(symbol, got)

    @router.get(
        "/v1/events", operation_id="get_events", summary="Model swaps and dead letters since start", response_model=EventsResponse,
        responses=ERROR_RESPONSES,
    )  # fmt: skip
    async def events() -> dict[str, Any]:
        return data().events()

    return router
