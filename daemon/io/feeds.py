"""Bar sources for ``kronos-stream replay`` and ``synth``, and a paced publisher for both.

A source yields ``(symbol, ts, values)`` with ``ts`` an aware datetime and ``values`` the six
features; :func:`publish` turns them into input messages (key = symbol) at the requested pace.
"""

from __future__ import annotations

import asyncio
import csv
import math
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from daemon.errors import DaemonError
from daemon.io.bus import OutputBus
from daemon.io.messages import bar_to_json

FeedBar = tuple[str, datetime, tuple[float, ...]]
CSV_COLUMNS = ("timestamps", "open", "high", "low", "close", "volume", "amount")


def timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise DaemonError(
            f"unknown time zone {name!r}; use an IANA name such as UTC or Asia/Shanghai"
        ) from exc


def csv_bars(path: Path, symbol: str, tz: str = "UTC") -> Iterator[FeedBar]:
    """Bars of a CSV with columns timestamps,open,high,low,close,volume[,amount]; naive times are
    read in ``tz``."""
    zone = timezone(tz)
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise DaemonError(f"cannot read {path}: {exc}") from exc
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in CSV_COLUMNS[:-1] if c not in (reader.fieldnames or [])]
        if missing:
            raise DaemonError(f"{path} lacks the columns {missing}; expected {','.join(CSV_COLUMNS)}")
        for line, row in enumerate(reader, start=2):
            try:
                ts = datetime.fromisoformat(row["timestamps"])
                ts = ts.replace(tzinfo=zone) if ts.tzinfo is None else ts
                values = [float(row[c]) for c in CSV_COLUMNS[1:6]]
                amount = row.get("amount")
                values.append(float(amount) if amount not in (None, "") else values[4] * sum(values[:4]) / 4)
            except (TypeError, ValueError) as exc:
                raise DaemonError(f"{path}:{line}: unreadable row {row}: {exc}") from exc
            yield symbol, ts, tuple(values)


def synthetic_bars(
    symbols: int,
    count: int | None = None,
    interval_s: float = 60.0,
    seed: int = 0,
    start: datetime | None = None,
) -> Iterator[FeedBar]:
    """Random-walk bars for ``symbols`` symbols (SYN0000, SYN0001, ...), one bar each per step;
    ``count`` bars in all, or endless."""
    rng = random.Random(seed)
    names = [f"SYN{i:04d}" for i in range(symbols)]
    price = {n: 10.0 + 90.0 * rng.random() for n in names}
    t0 = start or datetime.fromtimestamp(math.floor(time.time() / interval_s) * interval_s, UTC)
    step, produced = 0, 0
    while count is None or produced < count:
        ts = t0 + timedelta(seconds=interval_s * step)
        for name in names:
            if count is not None and produced >= count:
                return
            prev = price[name]
            close = prev * math.exp(rng.gauss(0.0, 0.002))
            high = max(prev, close) * (1 + abs(rng.gauss(0.0, 0.001)))
            low = min(prev, close) * (1 - abs(rng.gauss(0.0, 0.001)))
            volume = float(int(rng.lognormvariate(7.0, 0.5)))
            amount = volume * (prev + high + low + close) / 4
            price[name] = close
            produced += 1
            yield name, ts, (prev, high, low, close, volume, amount)
        step += 1


async def publish(
    bus: OutputBus,
    topic: str,
    bars: Iterator[FeedBar],
    *,
    speed: float = 0.0,
    rate: float | None = None,
    duration_s: float | None = None,
    chunk: int = 500,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Publish bars in order. ``speed``: multiple of real time from the bar timestamps (0 = as fast
    as possible); ``rate``: bars per second instead; ``duration_s``: stop after this long.
    Returns how many bars were published (each acknowledged); ``on_progress(sent)`` follows each batch."""
    began = time.monotonic()
    first_ts: datetime | None = None
    pending: list[tuple[bytes | None, bytes | None]] = []
    sent = 0
    for n, (symbol, ts, values) in enumerate(bars):
        if duration_s is not None and time.monotonic() - began >= duration_s:
            break
        first_ts = first_ts or ts
        due = None
        if rate:
            due = began + n / rate
        elif speed > 0:
            due = began + (ts - first_ts).total_seconds() / speed
        if due is not None and due > time.monotonic():
            if pending:
                await bus.send_batch(topic, pending)
                sent, pending = sent + len(pending), []
                if on_progress is not None:
                    on_progress(sent)
            await asyncio.sleep(due - time.monotonic())
        pending.append((symbol.encode(), bar_to_json(symbol, ts, values)))
        if len(pending) >= chunk:
            await bus.send_batch(topic, pending)
            sent, pending = sent + len(pending), []
            if on_progress is not None:
                on_progress(sent)
    if pending:
        await bus.send_batch(topic, pending)
        sent += len(pending)
    return sent
