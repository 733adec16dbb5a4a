"""Progress lines on stderr for long CLI jobs (``replay`` at real speed, ``synth``).

At most one line every ``every_s`` seconds, plus a last one, so a log file stays readable:
``replay: 1200 of 2500 bars published (48%), 215.3 bars/s, about 6 s left``.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        unit: str = "bars",
        every_s: float = 2.0,
        stream: TextIO | None = None,
        enabled: bool = True,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.every_s = every_s
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self._began = time.monotonic()
        self._last = self._began
        self.lines = 0

    def line(self, done: int) -> str:
        elapsed = max(time.monotonic() - self._began, 1e-9)
        rate = done / elapsed
        text = f"{self.label}: {done}"
        if self.total:
            text += f" of {self.total} {self.unit} ({done / self.total:.0%})"
        else:
            text += f" {self.unit}"
        text += f", {rate:.1f} {self.unit}/s"
        if self.total and rate > 0 and done < self.total:
            text += f", about {(self.total - done) / rate:.0f} s left"
        return text

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.enabled and now - self._last >= self.every_s:
            self._last = now
            self._emit(done)

    def finish(self, done: int) -> None:
        if self.enabled:
            self._emit(done)

    def _emit(self, done: int) -> None:
        print(self.line(done), file=self.stream, flush=True)
        self.lines += 1
