"""A typed client of the daemon's HTTP API (``/v1``; docs/api.md), beside :class:`ForecastReader`::

    async with ApiClient("http://kronos:8000", api_key="ks_...") as api:
        latest = await api.latest("600977.SH")            # ForecastMessage, or None
        async for event in api.stream(["600977.SH"]):     # live, resumed after a drop
            print(event.id, event.forecast.mean["close"][0])

Every error answer becomes :class:`ApiError` with the server's message (and ``retry_after`` on 429).
Needs ``httpx``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from kronos_contract.messages import ForecastMessage, parse_forecast


class ApiError(Exception):
    """An error answer: ``status`` and the server's ``message``; ``retry_after`` (s) on 429."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class ForecastSet:
    forecasts: dict[str, ForecastMessage]
    missing: list[str]


@dataclass(frozen=True)
class StreamEvent:
    """One ``forecast`` event of ``/v1/stream``: its id (resume after it) and the forecast."""

    id: str
    forecast: ForecastMessage


@dataclass
class _SseState:
    last_id: str | None
    fields: dict[str, str] = field(default_factory=dict)
    data: list[str] = field(default_factory=list)


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        message = str(response.json().get("message") or response.text)
    except (ValueError, AttributeError):
        message = response.text or response.reason_phrase
    retry = response.headers.get("Retry-After")
    raise ApiError(response.status_code, message, float(retry) if retry else None)


class ApiClient:
    """``base_url``: the API's address (``KRONOS_API__PORT``); ``api_key``: sent as a Bearer token."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout_s: float = 30.0, **options: Any) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout_s, **options)

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _get(self, path: str, **params: Any) -> Any:
        response = await self._client.get(path, params={k: v for k, v in params.items() if v is not None})
        _raise_for(response)
        return response

    async def latest(self, symbol: str) -> ForecastMessage | None:
        """``GET /v1/forecasts/{symbol}``: the latest forecast, None when there is none."""
        try:
            response = await self._get(f"/v1/forecasts/{quote(symbol, safe='')}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return parse_forecast(response.content)

    async def latest_many(self, symbols: Iterable[str]) -> ForecastSet:
        """``GET /v1/forecasts?symbols=``: the latest forecasts, and the symbols that have none."""
        body = (await self._get("/v1/forecasts", symbols=",".join(symbols))).json()
        forecasts = {s: ForecastMessage.model_validate(f) for s, f in body["forecasts"].items()}
        return ForecastSet(forecasts, list(body["missing"]))

    async def models(self) -> dict[str, Any]:
        """``GET /v1/models``: serving version, registry, champion, previous, challengers, versions."""
        return dict((await self._get("/v1/models")).json())

    async def scores(self, hours: int = 24, version: str | None = None) -> dict[str, Any]:
        """``GET /v1/scores``: ``{"hours", "versions": {version: scores}}``."""
        return dict((await self._get("/v1/scores", hours=hours, version=version)).json())

    async def symbols(self) -> list[str]:
        """``GET /v1/symbols``: the symbols with a latest forecast."""
        return list((await self._get("/v1/symbols")).json()["symbols"])

    async def bars(self, symbol: str, count: int = 64) -> dict[str, Any]:
        """``GET /v1/bars/{symbol}``: the last ``count`` bars (closes) of a symbol; ApiError 404 when
        Redis holds none."""
        return dict((await self._get(f"/v1/bars/{quote(symbol, safe='')}", count=count)).json())

    async def events(self) -> dict[str, Any]:
        """``GET /v1/events``: this replica's model swaps and dead letters since it started."""
        return dict((await self._get("/v1/events")).json())

    async def forecast(
        self,
        symbol: str,
        bars: Sequence[Mapping[str, Any]] | str,
        *,
        horizon: int | None = None,
        samples: int | None = None,
        quantile_levels: Sequence[float] | None = None,
    ) -> ForecastMessage:
        """``POST /v1/forecast``: forecast a supplied history of ``symbol``, oldest bar first, as dicts
        (``ts``, ``open``, ``high``, ``low``, ``close``, ``volume``[, ``amount``]) or CSV text with that
        header; unset options take the daemon's defaults."""
        options = {"symbol": symbol, "horizon": horizon, "samples": samples,
                   "quantile_levels": list(quantile_levels) if quantile_levels is not None else None}  # fmt: skip
        options = {k: v for k, v in options.items() if v is not None}
        if isinstance(bars, str):
            params = {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in options.items()}
            response = await self._client.post(
                "/v1/forecast", content=bars, params=params, headers={"Content-Type": "text/csv"}
            )
        else:
            response = await self._client.post("/v1/forecast", json={"bars": list(bars), **options})
        _raise_for(response)
        return parse_forecast(response.content)

    async def stream(
        self,
        symbols: Iterable[str] | None = None,
        *,
        last_event_id: str | None = None,
        reconnect: bool = True,
        retry_s: float = 1.0,
    ) -> AsyncIterator[StreamEvent]:
        """``GET /v1/stream``: new forecasts as they are published. After a dropped connection (or an
        ``overflow`` event) it reconnects with the last id, so no forecast is missed while the server's
        stream still holds it; a ``gap`` event (forecasts trimmed meanwhile) raises ApiError(410)."""
        params = {"symbols": ",".join(symbols)} if symbols is not None else {}
        state = _SseState(last_event_id)
        while True:
            headers = {"Last-Event-ID": state.last_id} if state.last_id else {}
            try:
                async with self._client.stream(
                    "GET", "/v1/stream", params=params, headers=headers, timeout=httpx.Timeout(None, connect=10)
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        _raise_for(response)
                    async for event in self._events(response, state):
                        yield event
            except (httpx.TransportError, _Reconnect):
                if not reconnect:
                    raise
            await asyncio.sleep(retry_s)

    @staticmethod
    async def _events(response: httpx.Response, state: _SseState) -> AsyncIterator[StreamEvent]:
        async for line in response.aiter_lines():
            if line == "":
                kind, data, event_id = state.fields.get("event", "message"), "\n".join(state.data), state.fields.get("id")
                state.fields, state.data = {}, []
                if kind == "forecast" and data and event_id:
                    yield StreamEvent(event_id, parse_forecast(data))
                    state.last_id = event_id  # resume after it (set once delivered)
                elif kind == "gap":
                    raise ApiError(410, json.loads(data).get("message", "forecasts were trimmed"))
                elif kind == "overflow":
                    raise _Reconnect()
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                state.data.append(value)
            else:
                state.fields[name] = value


class _Reconnect(Exception):
    pass
