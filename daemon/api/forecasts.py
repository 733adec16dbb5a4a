"""``GET /v1/forecasts/{symbol}`` and ``GET /v1/forecasts?symbols=A,B``: the latest forecasts, from Redis.

They read what ``kronos-stream forecast SYMBOL`` reads: the key ``{prefix}:{SYMBOL}:forecast``, the
JSON published on the output topic (docs/contracts/redis.md), unchanged.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from daemon.api.errors import ERROR_RESPONSES, ApiError, ErrorBody
from daemon.api.service import ApiService
from daemon.errors import StateError
from kronos_contract.messages import ForecastMessage

MAX_SYMBOLS_TEXT = 16_000  # characters of a symbols list (the server reads request lines up to 256 KiB)
# as the input contract's symbol (daemon/io/messages.py): 1-64 characters, no white space
_SYMBOL = re.compile(r"^\S{1,64}$")


class ForecastSet(BaseModel):
    forecasts: dict[str, ForecastMessage] = Field(description="symbol -> its latest forecast")
    missing: list[str] = Field(description="symbols asked for that have no forecast (never made, or expired)")


def parse_symbols(text: str | None, limit: int) -> list[str]:
    """``"A,B"`` -> ["A", "B"] (blanks dropped, order kept, repeats once); ApiError 400 when invalid."""
    symbols = list(dict.fromkeys(s.strip() for s in (text or "").split(",") if s.strip()))
    if not symbols:
        raise ApiError(400, "symbols: name at least one symbol, e.g. symbols=600977.SH,000001.SZ")
    if len(symbols) > limit:
        raise ApiError(400, f"symbols: {len(symbols)} named, at most {limit} (KRONOS_API__MAX_SYMBOLS)")
    bad = [s for s in symbols if not _SYMBOL.match(s)]
    if bad:
        raise ApiError(400, f"symbols: {bad[0]!r} is not a symbol (1-64 characters without spaces)")
    return symbols


async def _latest(service: ApiService, symbols: list[str]) -> list[dict[str, Any] | None]:
    store = service.store
    try:
        return list(await asyncio.gather(*(store.latest_forecast(s) for s in symbols)))
    except StateError as exc:
        raise ApiError(503, f"Redis cannot be read now: {exc}; retry shortly") from exc


def forecasts_router(service: ApiService) -> APIRouter:
    router = APIRouter(tags=["forecasts"])

    @router.get(
        "/v1/forecasts/{symbol}",
        operation_id="get_forecast",
        summary="The latest forecast of one symbol",
        response_model=ForecastMessage,
        responses={404: {"model": ErrorBody, "description": "no forecast for this symbol"}, **ERROR_RESPONSES},
    )
    async def one(
        symbol: str = Path(description="the symbol, as in the bars' `symbol`", max_length=64),  # noqa: B008
    ) -> Any:
        if not _SYMBOL.match(symbol):
            raise ApiError(400, f"symbol: {symbol!r} is not a symbol (1-64 characters without spaces)")
        (record,) = await _latest(service, [symbol])
        if record is None:
            raise ApiError(
                404, f"no forecast for {symbol!r} (never made, or expired after KRONOS_REDIS__FORECAST_TTL_S)"
            )
        return JSONResponse(record)  # as stored (no re-validation): what `kronos-stream forecast` prints

    @router.get(
        "/v1/forecasts",
        operation_id="get_forecasts",
        summary="The latest forecasts of several symbols",
        response_model=ForecastSet,
        responses=ERROR_RESPONSES,
    )
    async def several(
        symbols: str = Query(  # noqa: B008
            description="comma-separated symbols, at most `KRONOS_API__MAX_SYMBOLS`", max_length=MAX_SYMBOLS_TEXT
        ),
    ) -> Any:
        names = parse_symbols(symbols, service.settings.api.max_symbols)
        records = await _latest(service, names)
        return JSONResponse({
            "forecasts": {s: r for s, r in zip(names, records, strict=True) if r is not None},
            "missing": [s for s, r in zip(names, records, strict=True) if r is None],
        })  # fmt: skip

    return router
