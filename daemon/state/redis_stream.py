"""The forecast stream: every forecast written to Redis is also appended to one Redis Stream.

``{prefix}:forecasts:stream`` holds the recent forecasts of every replica, oldest first, capped near
``KRONOS_API__STREAM_LENGTH`` entries (``XADD MAXLEN ~``); each entry has the fields ``symbol`` and
``forecast`` (the JSON published on the output topic). Its entry ids (``<ms>-<seq>``) are the ids of
``GET /v1/stream``'s server-sent events, so a client resumes from its last id on any replica.

On one Redis server the entry is added by the same Lua call that writes the latest forecast (atomic
with it). On a Redis Cluster the stream is one key in one slot, apart from the symbols' slots, so the
entries of a batch are added by one pipeline right after the batch's per-symbol writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

StreamEntry = tuple[str, str, bytes]  # (entry id, symbol, forecast JSON)


def stream_key(prefix: str) -> str:
    return f"{prefix}:forecasts:stream"


def entry_order(entry_id: str) -> tuple[int, int]:
    """``"1718674500000-3"`` -> (1718674500000, 3), for comparing ids; ValueError if malformed."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def decode_entries(raw: Sequence[Any]) -> list[StreamEntry]:
    """XRANGE/XREAD replies -> entries (entries lacking a field are skipped: not written by the daemon)."""
    out = []
    for entry_id, fields in raw:
        fields = {_text(k): v for k, v in fields.items()}
        if "symbol" in fields and "forecast" in fields:
            out.append((_text(entry_id), _text(fields["symbol"]), bytes(fields["forecast"])))
    return out


async def add_entries(client: Any, key: str, maxlen: int, entries: Sequence[tuple[str, bytes]]) -> None:
    """XADD each (symbol, forecast JSON) in one pipeline (the cluster path)."""
    async with client.pipeline() as pipe:
        for symbol, forecast in entries:
            pipe.xadd(key, {"symbol": symbol, "forecast": forecast}, maxlen=maxlen, approximate=True)
        await pipe.execute()


async def read_entries(client: Any, key: str, after: str, count: int, block_ms: int) -> list[StreamEntry]:
    """Entries after id ``after``, oldest first, at most ``count``; ``block_ms`` > 0 waits that long for one."""
    if block_ms > 0:
        reply = await client.xread({key: after}, count=count, block=block_ms)
        return decode_entries(reply[0][1]) if reply else []
    return decode_entries(await client.xrange(key, min=f"({after}", count=count))


async def last_id(client: Any, key: str) -> str:
    """The newest entry's id, "0-0" for an empty or absent stream."""
    reply = await client.xrevrange(key, count=1)
    return _text(reply[0][0]) if reply else "0-0"
