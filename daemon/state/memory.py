"""The in-memory state store: the zero-setup default for the demo and for unit tests of pure logic.

Same semantics as the Redis store (capped ring, idempotent apply, forecast TTL), kept in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

from daemon.errors import CorruptState, StateError
from daemon.state.base import (
    StateStore,
    StateUpdate,
    SymbolState,
    decode_bar,
    decode_tokens,
    encode_bar,
    encode_row,
    encode_tokens,
    format_source,
)
from daemon.state.redis_stream import entry_order


class _Record:
    __slots__ = ("bars", "tokens", "last_ts", "meta", "forecast", "forecast_expires")

    def __init__(self) -> None:
        self.bars: list[bytes] = []
        self.tokens = b""
        self.last_ts: int | None = None
        self.meta: dict[str, str] = {}
        self.forecast: bytes | None = None
        self.forecast_expires: float | None = None


class MemoryStateStore(StateStore):
    def __init__(self, key_prefix: str = "kronos", max_context: int = 512, stream_length: int = 10_000) -> None:
        super().__init__(key_prefix, max_context)
        self._records: dict[str, _Record] = {}
        # the forecast stream (as daemon/state/redis_stream.py's): (id, symbol, forecast), oldest first
        self._stream: deque[tuple[str, str, bytes]] = deque(maxlen=max(1, stream_length))
        self._stream_seq = 0
        self._appended = asyncio.Condition()
        self._generation: str | None = None
        self._watermarks: dict[str, int] = {}

    def wipe(self) -> None:
        """Lose everything, as a Redis restarted without persistence would (for tests)."""
        self._records.clear()
        self._generation = None
        self._watermarks.clear()

    async def generation(self) -> str:
        if self._generation is None:
            self._generation = uuid.uuid4().hex
        return self._generation

    async def watermarks(self) -> dict[str, int]:
        return dict(self._watermarks)

    async def set_watermarks(self, marks: dict[str, int]) -> None:
        self._watermarks.update(marks)

    async def restore(self, states: Sequence[tuple[SymbolState, int | None]]) -> list[str]:
        written = []
        for state, expected in states:
            rec = self._records.setdefault(state.symbol, _Record())
            if rec.last_ts != expected:
                continue
            rec.bars = [encode_row(t, r) for t, r in zip(state.timestamps, state.rows, strict=True)]
            rec.tokens = b""
            rec.last_ts = state.last_ts
            rec.meta.update(
                {"source": format_source(state.source), "context_complete": "1" if state.complete else "0"}
            )
            written.append(state.symbol)
        return written

    async def load(self, symbols: Sequence[str]) -> dict[str, SymbolState]:
        states = {}
        for s in symbols:
            rec = self._records.get(s) or _Record()
            try:
                bars = [decode_bar(raw, f"memory:bars:{s}") for raw in rec.bars]
            except StateError as exc:
                raise CorruptState(str(exc), s) from exc
            token_state, token_version = decode_tokens(rec.tokens)
            source = rec.meta.get("source")
            states[s] = SymbolState(s, self.max_context, bars, token_state, token_version, rec.last_ts, source)
            states[s].complete = rec.meta.get("context_complete") != "0"
        return states

    async def apply(self, updates: Sequence[StateUpdate], forecast_ttl_s: int | None = None) -> list[str]:
        skipped = []
        now = time.time()
        for u in updates:  # no await inside: atomic with respect to other coroutines
            rec = self._records.setdefault(u.symbol, _Record())
            if rec.last_ts is not None and u.bar.ts_ns <= rec.last_ts:
                skipped.append(u.symbol)
                continue
            rec.bars.append(encode_bar(u.bar))
            del rec.bars[: -self.max_context]
            rec.tokens = encode_tokens(u.token_state, u.model_version)
            rec.last_ts = u.bar.ts_ns
            rec.meta = {
                **rec.meta,
                "model_version": u.model_version,
                "updated_ms": str(int(now * 1e3)),
                "source": u.source,
            }
            rec.forecast = u.forecast_json
            rec.forecast_expires = None if forecast_ttl_s is None else now + forecast_ttl_s
            self._stream_seq += 1
            self._stream.append((f"0-{self._stream_seq}", u.symbol, u.forecast_json))
        if len(skipped) < len(updates):
            async with self._appended:
                self._appended.notify_all()
        return skipped

    async def stream_tail(self) -> str:
        return self._stream[-1][0] if self._stream else "0-0"

    async def read_stream(self, after: str, count: int, block_ms: int = 0) -> list[tuple[str, str, bytes]]:
        def newer() -> list[tuple[str, str, bytes]]:
            cut = entry_order(after)
            return [e for e in self._stream if entry_order(e[0]) > cut][:count]

        found = newer()
        if not found and block_ms > 0:
            async with self._appended:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._appended.wait_for(lambda: bool(newer())), block_ms / 1e3)
            found = newer()
        return found

    async def latest_forecast(self, symbol: str) -> dict[str, Any] | None:
        rec = self._records.get(symbol)
        if rec is None or rec.forecast is None:
            return None
        if rec.forecast_expires is not None and time.time() >= rec.forecast_expires:
            return None
        return dict(json.loads(rec.forecast))

    async def forecast_from(self, symbol: str, source: str) -> bytes | None:
        rec = self._records.get(symbol)
        if rec is None or rec.meta.get("source") != source:
            return None
        return rec.forecast

    def ring_length(self, symbol: str) -> int:
        rec = self._records.get(symbol)
        return 0 if rec is None else len(rec.bars)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
