"""The symbol cache: the owned symbols' states, loaded from the store on first sight and kept in
memory while their partition stays assigned (the store stays the truth: a refused write, a lost
partition or a lost store drops them, and they are loaded again)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Protocol, TypeVar

import structlog

from daemon.errors import CorruptState
from daemon.io.bus import InMessage, Partition
from daemon.io.messages import Bar
from daemon.state.base import StateStore, SymbolState

log = structlog.get_logger("kronos.loop")

T = TypeVar("T")
Item = tuple[InMessage, Bar]


class Calls(Protocol):
    """Store calls retried through an outage, and the dead-letter topic (daemon/pipeline/context.py)."""

    async def io(self, service: str, what: str, fn: Callable[[], Awaitable[T]]) -> T: ...

    async def dead_letter(self, letters: Sequence[tuple[InMessage, str, str]]) -> None: ...


class SymbolCache:
    """Owned symbols' states (``states``) and the input partition each arrives on (``owner``)."""

    def __init__(
        self,
        store: StateStore,
        calls: Calls,
        on_size: Callable[[int], None],
        states: dict[str, SymbolState] | None = None,
    ) -> None:
        self._store = store
        self._calls = calls
        self._on_size = on_size  # the count of symbols held (kronos_symbols_cached)
        # owned symbols, loaded from the store on first sight (a dict the caller may share: read only)
        self.states: dict[str, SymbolState] = {} if states is None else states
        self.owner: dict[str, Partition] = {}  # symbol -> the input partition it arrives on
        self.partial: set[Partition] = set()  # partitions restored from a history missing older bars

    def __len__(self) -> int:
        return len(self.states)

    async def _load(self, symbols: list[str]) -> tuple[dict[str, SymbolState], dict[str, str]]:
        """Load symbols; when one's record is unreadable, the others one by one: (states, corrupt)."""
        io = self._calls.io
        try:
            return await io("redis", "loading state", lambda: self._store.load(symbols)), {}
        except CorruptState:
            pass
        states: dict[str, SymbolState] = {}
        corrupt: dict[str, str] = {}
        for symbol in symbols:
            one = [symbol]
            try:
                states.update(await io("redis", "loading state", partial(self._store.load, one)))
            except CorruptState as exc:
                corrupt[symbol] = str(exc)
        return states, corrupt

    async def load(self, items: Sequence[Item]) -> list[Item]:
        """Load from the store the symbols not held (seen for the first time since their partition was
        assigned, or dropped since); the items whose symbol could be loaded (the others' bars are
        dead-lettered)."""
        missing = sorted({bar.symbol for _, bar in items if bar.symbol not in self.states})
        if missing:
            loaded, corrupt = await self._load(missing)
            if corrupt:  # those symbols' bars are dead-lettered; the others go on
                letters = [(m, f"{corrupt[b.symbol]}", "state") for m, b in items if b.symbol in corrupt]
                for msg, reason, _ in letters:
                    log.error("stored state unreadable; dead-lettering the bar", source=msg.source, error=reason)
                await self._calls.dead_letter(letters)
                items = [(m, b) for m, b in items if b.symbol not in corrupt]
            for msg, bar in items:  # a symbol new to the store, on a partition restored only in part
                state = loaded.get(bar.symbol)
                if state is not None and state.last_ts is None and msg.tp in self.partial:
                    state.complete = False
            self.states.update(loaded)
            self._on_size(len(self.states))
        for msg, bar in items:
            self.owner[bar.symbol] = msg.tp
        return list(items)

    def forget(self, symbols: Iterable[str]) -> None:
        """Drop symbols whose stored state moved on (loaded again when they next come up)."""
        for s in symbols:
            self.states.pop(s, None)

    def drop(self, partitions: set[Partition]) -> list[str]:
        """Forget the partitions and their symbols (revoked, or the group moved on); the symbols."""
        self.partial -= partitions
        symbols = [s for s, p in self.owner.items() if p in partitions]
        for s in symbols:
            self.owner.pop(s, None)
            self.states.pop(s, None)
        self._on_size(len(self.states))
        return symbols
