"""SymbolState's compact ring (numpy arrays as a circular buffer) against a plain deque model."""

from __future__ import annotations

import sys
import tracemalloc
from collections import deque

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.io.messages import Bar
from daemon.state.base import SymbolState


def _bar(i: int) -> Bar:
    p = 10.0 + (i * 7 % 13) / 3
    return Bar("S", 10**18 + i * 60 * 10**9, (p, p + 0.5, p - 0.5, p + 0.1, 100.0 + i, 1e3 * p))


@settings(max_examples=60, deadline=None)
@given(cap=st.integers(2, 40), preloaded=st.integers(0, 60), appended=st.integers(0, 100))
def test_ring_matches_a_deque_of_the_last_max_context_bars(cap: int, preloaded: int, appended: int) -> None:
    bars = [_bar(i) for i in range(preloaded + appended + 1)]
    model: deque[Bar] = deque(maxlen=cap)
    state = SymbolState("S", cap, [(b.ts_ns, b.values) for b in bars[:preloaded]])
    model.extend(bars[:preloaded])
    for b in bars[preloaded : preloaded + appended]:
        state.append(b, None, "v")
        model.append(b)
    assert len(state) == len(model)
    assert state.timestamps == [b.ts_ns for b in model]
    assert state.rows == [b.values for b in model]
    assert state.last_ts == (model[-1].ts_ns if model else None)
    nxt = bars[-1]
    values, stamps, ts_list = state.window(nxt)
    expect = ([*model, nxt])[-cap:]
    assert ts_list == [b.ts_ns for b in expect]
    np.testing.assert_array_equal(values, np.asarray([b.values for b in expect]))
    np.testing.assert_array_equal(stamps.astype(np.int64), np.asarray(ts_list, dtype=np.int64))
    assert state.nbytes() <= cap * (8 + 6 * 8)


def test_a_full_ring_takes_under_a_quarter_of_a_deque_of_tuples() -> None:
    def measure(build) -> int:  # type: ignore[no-untyped-def]
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        kept = [build(k) for k in range(20)]
        used = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert len(kept) == 20
        return used // 20

    def ring(k: int) -> SymbolState:
        s = SymbolState("S", 512)
        for i in range(512):
            s.append(_bar(i + k), None, "v")
        return s

    def tuples(k: int) -> tuple[deque[int], deque[tuple[float, ...]]]:  # the former layout
        ts: deque[int] = deque(maxlen=512)
        rows: deque[tuple[float, ...]] = deque(maxlen=512)
        for i in range(512):
            b = _bar(i + k)
            ts.append(b.ts_ns)
            rows.append(tuple(float(v) + 0.0 for v in b.values))
        return ts, rows

    compact, former = measure(ring), measure(tuples)
    print(f"bytes per symbol of 512 bars: ring {compact}, deque of tuples {former}", file=sys.stderr)
    assert compact * 4 < former
