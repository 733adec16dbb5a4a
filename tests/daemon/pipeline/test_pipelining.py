"""Pipelining (the next fetch runs while the model works) on the in-process bus: in-order commits,
nothing lost, nothing forecast twice, and a fetch that overlapped a rebalance is dropped and read again."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
import structlog

from daemon.io.bus import InMessage, Partition
from daemon.io.memory import MemoryBroker, MemoryInput, MemoryOutput
from daemon.settings import Settings, load_settings
from daemon.state.memory import MemoryStateStore
from kronos_core.stream_types import SeriesForecast, SeriesWindow
from tests.support.launcher import bar_series, interleave, metric, running_daemon, wait_until
from tests.support.stub_forecaster import StubForecaster

pytestmark = pytest.mark.timeout(60)

SYMBOLS, BARS = 3, 10


def _settings(pipeline: bool) -> Settings:
    return load_settings(
        kafka={"input_topic": "in", "output_topic": "out", "dead_letter_topic": "dlq", "group_id": "g"},
        model={"max_context": 16, "horizon": 3},
        batch={"max_batch_size": 6, "max_wait_ms": 10, "pipeline": pipeline},
        http_port=None,
    )


class _Forecaster(StubForecaster):
    """The stub, slow enough that a fetch can happen during a call, and saying when it is in one."""

    def __init__(self) -> None:
        super().__init__(max_context=16, delay_ms=40)
        self.in_call = False

    def forecast(self, windows: Sequence[SeriesWindow], horizon: int) -> list[SeriesForecast]:
        self.in_call = True
        try:
            return super().forecast(windows, horizon)
        finally:
            self.in_call = False


class _RecordingInput(MemoryInput):
    """Notes each fetch that returned records (during a model call or not) and each commit."""

    def __init__(self, broker: MemoryBroker, forecaster: _Forecaster) -> None:
        super().__init__(broker, "in", "g")
        self.forecaster = forecaster
        self.fetches: list[tuple[bool, list[int]]] = []  # (during a model call, offsets)
        self.commits: list[int] = []

    async def fetch(self, max_records: int, timeout_ms: int) -> list[InMessage]:
        got = await super().fetch(max_records, timeout_ms)
        if got:
            self.fetches.append((self.forecaster.in_call, [m.offset for m in got]))
        return got

    async def commit(self, offsets: dict[Partition, int]) -> None:
        self.commits.append(offsets[Partition("in", 0)])
        await super().commit(offsets)


class _RevokingInput(_RecordingInput):
    """Kafka's behaviour on a rebalance: the first fetch made during a model call waits for a
    revocation of every partition (the loop's handler), then the positions go back to the committed
    offsets and the partitions come back; the records it drew come again from there."""

    def __init__(self, broker: MemoryBroker, forecaster: _Forecaster) -> None:
        super().__init__(broker, forecaster)
        self.revoked = False

    async def fetch(self, max_records: int, timeout_ms: int) -> list[InMessage]:
        during_call = self.forecaster.in_call
        got = await super().fetch(max_records, timeout_ms)
        if got and during_call and not self.revoked:
            self.revoked = True
            assert self._handler is not None
            parts = self.assignment()
            await self._handler.on_revoked(parts)
            self._positions = {p: self._broker.committed(self._group, p) for p in parts}
            await self._handler.on_assigned(parts)
        return got


def _broker() -> MemoryBroker:
    broker = MemoryBroker(default_partitions=1)
    series = [bar_series(f"S{i}", BARS) for i in range(SYMBOLS)]
    for key, value in interleave(*series):
        broker.append("in", key, value)
    return broker


def _parts(broker: MemoryBroker, bus_in: MemoryInput) -> dict[str, object]:
    return {"bus_in": bus_in, "bus_out": MemoryOutput(broker), "store": MemoryStateStore("kronos", 16)}


def _check_output(broker: MemoryBroker) -> None:
    out = [json.loads(m.value or b"") for m in broker.messages("out")]
    assert len(out) == SYMBOLS * BARS and len({f["id"] for f in out}) == SYMBOLS * BARS
    for i in range(SYMBOLS):
        mine = [f["as_of"] for f in out if f["symbol"] == f"S{i}"]
        assert mine == sorted(mine) and len(mine) == BARS


@pytest.mark.parametrize("pipeline", [True, False])
async def test_the_next_fetch_runs_while_the_model_works_and_commits_stay_in_order(pipeline: bool) -> None:
    broker = _broker()
    forecaster = _Forecaster()
    bus_in = _RecordingInput(broker, forecaster)
    async with running_daemon(_settings(pipeline), forecaster, **_parts(broker, bus_in)) as d:
        await wait_until(lambda: len(broker.messages("out")) == SYMBOLS * BARS, 20, "every forecast")
        await wait_until(lambda: broker.committed("g", Partition("in", 0)) == SYMBOLS * BARS, 5, "the commit")
        assert metric(d, "kronos_loop_phase_seconds_count", phase="model") >= 2
    _check_output(broker)
    during = [offsets for in_call, offsets in bus_in.fetches if in_call]
    assert bool(during) == pipeline  # pipelined: records were fetched while a call ran; otherwise never
    assert bus_in.commits == sorted(bus_in.commits)  # in order
    fetched = [o for _, offsets in bus_in.fetches for o in offsets]
    assert fetched == list(range(SYMBOLS * BARS))  # each record fetched once, in order


async def test_a_fetch_that_overlapped_a_rebalance_is_dropped_and_its_records_come_again() -> None:
    broker = _broker()
    forecaster = _Forecaster()
    bus_in = _RevokingInput(broker, forecaster)
    with structlog.testing.capture_logs() as logs:
        async with running_daemon(_settings(True), forecaster, **_parts(broker, bus_in)):
            await wait_until(lambda: len(broker.messages("out")) == SYMBOLS * BARS, 20, "every forecast")
            await wait_until(lambda: broker.committed("g", Partition("in", 0)) == SYMBOLS * BARS, 5, "the commit")
    assert bus_in.revoked
    dropped = [e for e in logs if e["event"].startswith("dropping a fetch that overlapped a rebalance")]
    assert len(dropped) == 1 and dropped[0]["size"] > 0
    _check_output(broker)  # each bar forecast once: the dropped fetch was read again, nothing repeated
    fetched = [o for _, offsets in bus_in.fetches for o in offsets]
    assert sorted(set(fetched)) == list(range(SYMBOLS * BARS))
    assert len(fetched) > len(set(fetched))  # the dropped fetch's records were fetched again
    assert bus_in.commits == sorted(bus_in.commits)


async def test_a_round_larger_than_a_publish_chunk_is_published_whole_before_it_is_stored() -> None:
    """150 symbols in one round go out in chunks of 64 while the rest are encoded; every forecast is
    published once, and the state store holds each symbol's bar only after all of them were sent."""
    symbols, bars = 150, 2
    broker = MemoryBroker(default_partitions=2)
    for key, value in interleave(*[bar_series(f"C{i:03d}", bars) for i in range(symbols)]):
        broker.append("in", key, value)
    settings = load_settings(
        kafka={"input_topic": "in", "output_topic": "out", "dead_letter_topic": "dlq", "group_id": "g"},
        model={"max_context": 16, "horizon": 3},
        batch={"max_batch_size": 1000, "max_wait_ms": 10},
        http_port=None,
    )
    forecaster = StubForecaster(max_context=16)
    store = MemoryStateStore("kronos", 16)
    out = MemoryOutput(broker)
    published_when_stored: list[int] = []
    apply = store.apply

    async def checked_apply(updates, ttl):  # type: ignore[no-untyped-def]
        published_when_stored.append(len(broker.messages("out")))
        return await apply(updates, ttl)

    store.apply = checked_apply  # type: ignore[method-assign]
    async with running_daemon(settings, forecaster, bus_in=MemoryInput(broker, "in", "g"), bus_out=out, store=store):
        await wait_until(lambda: len(broker.messages("out")) == symbols * bars, 20, "every forecast")
    ids = [json.loads(m.value or b"")["id"] for m in broker.messages("out")]
    assert len(set(ids)) == symbols * bars
    assert max(map(len, forecaster.calls)) == symbols  # one round of every symbol: one model call
    # each store write came after its whole round (150 forecasts per round) was published
    assert published_when_stored[:2] == [symbols, 2 * symbols]


async def test_pipelining_is_on_by_default_only_for_a_model_on_cuda() -> None:
    """KRONOS_BATCH__PIPELINE unset (auto): off for a CPU model (on 2 cores the fetch competed with
    the model, docs/benchmarks/daemon.md "Steady state"), on for one on CUDA; an explicit setting wins."""
    from types import SimpleNamespace

    from daemon.model.build import on_cuda

    def on(device: str) -> SimpleNamespace:
        return SimpleNamespace(engine=SimpleNamespace(device=SimpleNamespace(type=device)))

    assert on_cuda(on("cuda")) and not on_cuda(on("cpu"))
    assert on_cuda(SimpleNamespace(current=on("cuda")))  # a swappable forecaster's model
    assert not on_cuda(StubForecaster())
    settings = load_settings(
        kafka={"input_topic": "in", "output_topic": "out", "dead_letter_topic": "dlq", "group_id": "g"},
        model={"max_context": 16, "horizon": 3},
        http_port=None,
    )
    assert settings.batch.pipeline == "auto"
    assert load_settings(batch={"pipeline": "true"}).batch.pipeline is True
    for chosen, expected in ((settings, False), (_settings(True), True)):
        broker = _broker()
        async with running_daemon(chosen, StubForecaster(max_context=16), **_parts(broker, MemoryInput(broker, "in", "g"))) as d:
            assert d.loop is not None and d.loop._cfg.pipeline is expected
