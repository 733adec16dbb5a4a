"""``POST /v1/forecast``: forecast a supplied history now (:mod:`daemon.pipeline.ondemand` serves it).

The body is JSON (``application/json``, :class:`ForecastRequest`) or CSV (``text/csv``: a header line
``ts,open,high,low,close,volume[,amount]``, one bar per line; ``symbol``, ``horizon``, ``samples`` and
``quantile_levels`` then come as query parameters). The answer is the forecast topic's message.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from daemon.api.errors import ERROR_RESPONSES
from daemon.api.limits import setting_name
from daemon.api.service import ApiService
from daemon.io.messages import TS_MAX, TS_MIN, BarFields, encode_json, to_ns
from daemon.pipeline.ondemand import Ask, History, OnDemandError, OnDemandService

CSV_COLUMNS = ("ts", "open", "high", "low", "close", "volume", "amount")


class ForecastRequest(BaseModel):
    """A JSON request: a symbol's bars, oldest first, and optionally what to forecast."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    symbol: str = Field(min_length=1, max_length=64, pattern=r"^\S+$", description="any symbol (names the forecast)")
    bars: list[BarFields] = Field(description="the history, oldest first, in strictly increasing time order")
    horizon: int | None = Field(default=None, description="bars to forecast (default: KRONOS_MODEL__HORIZON)")
    samples: int | None = Field(default=None, description="sample paths (default: KRONOS_MODEL__SAMPLE_COUNT)")
    quantile_levels: list[float] | None = Field(
        default=None, description="increasing levels in (0, 1) (default: KRONOS_MODEL__QUANTILE_LEVELS)"
    )


def _error(exc: OnDemandError) -> JSONResponse:
    return JSONResponse({"message": exc.message}, status_code=exc.status, headers=exc.headers)


def _summary(exc: ValidationError, where: str = "") -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}{loc or 'body'}: {err['msg']}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is larger than ``limit`` bytes."""
    too_large = OnDemandError(
        413, f"the request body is larger than {limit} bytes ({setting_name('max_payload_bytes')}); send fewer bars"
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _history(symbol: str, bars: list[BarFields]) -> History:
    for i, bar in enumerate(bars):
        if not TS_MIN <= bar.ts <= TS_MAX:
            raise OnDemandError(400, f"bars.{i}.ts: {bar.ts.isoformat()} is outside {TS_MIN.date()} to {TS_MAX.date()}")
    import numpy as np

    values = np.array([bar.features() for bar in bars], dtype=np.float64).reshape(len(bars), 6)
    return History(symbol, [to_ns(bar.ts) for bar in bars], values)


def parse_json(body: bytes, defaults: Ask) -> tuple[History, Ask]:
    try:
        req = ForecastRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise OnDemandError(400, f"the body is not valid JSON: {first['msg']}") from exc
        raise OnDemandError(400, f"invalid request: {_summary(exc)}") from exc
    ask = Ask(
        req.horizon if req.horizon is not None else defaults.horizon,
        req.samples if req.samples is not None else defaults.samples,
        tuple(req.quantile_levels) if req.quantile_levels is not None else defaults.levels,
    )
    return _history(req.symbol, list(req.bars)), ask


def _int_param(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise OnDemandError(400, f"query parameter {name}={text!r} is not an integer") from None


def parse_csv(body: bytes, request: Request, defaults: Ask) -> tuple[History, Ask]:
    symbol = request.query_params.get("symbol")
    if not symbol or len(symbol) > 64 or any(c.isspace() for c in symbol):
        raise OnDemandError(400, "a CSV request names its symbol in the query: ?symbol=AAPL (1-64 characters, no space)")
    levels_text = request.query_params.get("quantile_levels")
    try:
        levels = defaults.levels if levels_text is None else tuple(float(x) for x in levels_text.split(",") if x.strip())
    except ValueError:
        raise OnDemandError(400, f"quantile_levels={levels_text!r}: give numbers separated by commas") from None
    ask = Ask(_int_param(request, "horizon", defaults.horizon), _int_param(request, "samples", defaults.samples), levels)
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise OnDemandError(400, "the CSV body is not UTF-8") from None
    rows = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in rows.fieldnames or []]
    missing = [c for c in CSV_COLUMNS[:-1] if c not in header]
    if missing:
        raise OnDemandError(
            400, f"the CSV header lacks {', '.join(missing)}; expected {','.join(CSV_COLUMNS)} (amount optional)"
        )
    rows.fieldnames = header
    bars = []
    for n, row in enumerate(rows, start=2):
        record: dict[str, Any] = {k: v.strip() for k, v in row.items() if k in CSV_COLUMNS and v is not None and v.strip()}
        try:
            bars.append(BarFields.model_validate(record, strict=False))
        except ValidationError as exc:
            raise OnDemandError(400, f"invalid bar on CSV line {n}: {_summary(exc)}") from exc
    return _history(symbol, bars), ask


def _ondemand(service: ApiService) -> OnDemandService:
    if service.daemon is None:
        raise OnDemandError(503, "the daemon is not running")
    return service.daemon.ondemand


def ondemand_router(service: ApiService) -> APIRouter:
    """The router of ``POST /v1/forecast``: the daemon's :class:`OnDemandService`, reached at request time."""
    router = APIRouter(tags=["forecasts"])
    from kronos_contract.messages import forecast_schema

    body_schema = inline_schema(ForecastRequest.model_json_schema())
    message_schema = inline_schema(forecast_schema())
    message_schema.pop("$id", None)  # its own base URI would not hold inside the API schema

    @router.post(
        "/v1/forecast",
        summary="Forecast a supplied history now",
        response_class=Response,
        responses={
            **ERROR_RESPONSES,
            200: {"description": "the forecast, in the forecast topic's message shape",
                  "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ForecastMessage"}}}},
            400: {**ERROR_RESPONSES[400], "description": "a malformed body, an invalid bar, or a limit exceeded "
                  "(the message names its setting)"},
            413: {**ERROR_RESPONSES[400], "description": f"a body over {setting_name('max_payload_bytes')}"},
            415: {**ERROR_RESPONSES[400], "description": "a body neither JSON nor CSV"},
            429: {**ERROR_RESPONSES[429], "description": "over the key's rate limit, or the on-demand queue is full; "
                  "retry after `Retry-After` seconds"},
            503: {**ERROR_RESPONSES[503], "description": "the model is not loaded yet, or the daemon is stopping"},
        },  # fmt: skip
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": body_schema},
                    "text/csv": {"schema": {"type": "string", "description": "ts,open,high,low,close,volume[,amount]"}},
                },
            }
        },
    )
    async def forecast(request: Request) -> Response:
        try:
            ondemand = _ondemand(service)
            body = await _read_body(request, ondemand.limits.max_payload_bytes)
            kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
            if kind in ("text/csv", "application/csv"):
                history, ask = parse_csv(body, request, ondemand.defaults)
            elif kind in ("application/json", ""):
                history, ask = parse_json(body, ondemand.defaults)
            else:
                raise OnDemandError(415, f"content type {kind!r} is not served; send application/json or text/csv")
            record = await ondemand.forecast(history, ask)
        except OnDemandError as exc:
            return _error(exc)
        return Response(encode_json(record), media_type="application/json")

    return router


def inline_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` written in place (the OpenAPI entry stands alone)."""
    defs = schema.get("$defs", {})

    def expand(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return expand(defs[ref.removeprefix("#/$defs/")])
            return {k: expand(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [expand(v) for v in node]
        return node

    out: dict[str, Any] = expand(schema)
    return out


__all__ = ["ForecastRequest", "inline_schema", "ondemand_router", "parse_csv", "parse_json"]
