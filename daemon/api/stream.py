"""``GET /v1/stream``: new forecasts as server-sent events, resumable with ``Last-Event-ID``.

Each event is ``id: <stream id>``, ``event: forecast``, ``data: <the forecast JSON, one line>``. The
ids come from the Redis forecast stream, shared by every replica: a client that reconnects with
``Last-Event-ID`` (browsers' ``EventSource`` do it by themselves) first gets the forecasts it missed,
up to the stream's length, then the live ones, from any replica. Other events:

- ``gap``: the resume id is older than the stream's oldest entry: forecasts in between were trimmed
  (read the latest ones with ``GET /v1/forecasts``).
- ``overflow``: this client fell too far behind; the stream ends, reconnect with the last id.
A comment line (``: keep-alive``) every ``KRONOS_API__STREAM_HEARTBEAT_S`` keeps proxies from closing
an idle stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from daemon.api.errors import ERROR_RESPONSES, ApiError
from daemon.api.forecasts import MAX_SYMBOLS_TEXT, parse_symbols
from daemon.api.service import ApiService
from daemon.api.stream_hub import Entry, Subscriber
from daemon.errors import StateError
from daemon.state.base import StateStore
from daemon.state.redis_stream import entry_order

_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
BACKLOG_PAGE = 500
SUBSCRIBE_TIMEOUT_S = 5.0


def sse(entry: Entry) -> bytes:
    return b"id: " + entry[0].encode() + b"\nevent: forecast\ndata: " + entry[2].replace(b"\n", b"") + b"\n\n"


def sse_notice(event: str, message: str) -> bytes:
    return f"event: {event}\ndata: {json.dumps({'message': message})}\n\n".encode()


def stream_router(service: ApiService) -> APIRouter:
    router = APIRouter(tags=["stream"])

    @router.get(
        "/v1/stream",
        operation_id="stream_forecasts",
        summary="New forecasts as server-sent events",
        response_class=StreamingResponse,
        responses={
            200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                  "description": "`text/event-stream`: one `forecast` event per forecast published"},
            **ERROR_RESPONSES,
        },
    )  # fmt: skip
    async def stream(
        symbols: str | None = Query(  # noqa: B008
            default=None,
            description="comma-separated symbols (at most `KRONOS_API__MAX_SYMBOLS`); absent: every symbol",
            max_length=MAX_SYMBOLS_TEXT,
        ),
        last_event_id: str | None = Header(  # noqa: B008
            default=None, description="resume after this event id (sent by `EventSource` on reconnect)"
        ),
    ) -> StreamingResponse:
        settings = service.settings.api
        wanted = frozenset(parse_symbols(symbols, settings.max_symbols)) if symbols else None
        if last_event_id is not None and not _ID.match(last_event_id.strip()):
            raise ApiError(400, f"Last-Event-ID must be a stream id like 1718674500000-0, got {last_event_id!r}")
        store = service.store
        if service.hub.full():
            raise ApiError(
                503, f"{service.hub.max_clients} streams are open on this daemon (KRONOS_API__STREAM_CLIENTS); retry later"
            )
        try:
            sub = await asyncio.wait_for(service.hub.subscribe(wanted), SUBSCRIBE_TIMEOUT_S)
        except (TimeoutError, StateError) as exc:
            why = str(exc) or f"no answer within {SUBSCRIBE_TIMEOUT_S:g} s"
            raise ApiError(503, f"the forecast stream cannot be read from Redis now ({why}); retry shortly") from exc
        resume = last_event_id.strip() if last_event_id else None
        events = _events(service, store, sub, resume, settings.stream_heartbeat_s)
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return router


async def _backlog(store: StateStore, after: str) -> AsyncIterator[bytes | Entry]:
    """The entries after ``after`` (all symbols), preceded by a ``gap`` notice when some were trimmed."""
    read = store.read_stream
    oldest = await read("0-0", 1)
    if oldest and entry_order(oldest[0][0]) > entry_order(after):
        yield sse_notice("gap", f"forecasts after {after} were trimmed from the stream; GET /v1/forecasts has the latest")
    while True:
        page = await read(after, BACKLOG_PAGE)
        for entry in page:
            yield entry
        if len(page) < BACKLOG_PAGE:
            return
        after = page[-1][0]


async def _events(
    service: ApiService, store: StateStore, sub: Subscriber, resume: str | None, heartbeat_s: float
) -> AsyncIterator[bytes]:
    sent = entry_order(resume) if resume else (-1, -1)
    try:
        yield b"retry: 2000\n\n"
        if resume is not None:
            async for item in _backlog(store, resume):
                if isinstance(item, bytes):
                    yield item
                elif sub.symbols is None or item[1] in sub.symbols:
                    sent = max(sent, entry_order(item[0]))
                    yield sse(item)
        while not service.hub.closed.is_set():
            sub.wake.clear()
            while not sub.queue.empty():
                entry = sub.queue.get_nowait()
                if entry_order(entry[0]) > sent:
                    sent = entry_order(entry[0])
                    yield sse(entry)
            if sub.overflowed:
                yield sse_notice("overflow", "this client fell too far behind; reconnect with Last-Event-ID")
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sub.wake.wait(), heartbeat_s)
                continue
            yield b": keep-alive\n\n"
    finally:
        service.hub.unsubscribe(sub)
