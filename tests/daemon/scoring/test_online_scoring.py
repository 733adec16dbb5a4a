"""Online scoring: forecasts scored once their horizon bars arrive, sums in Prometheus and the store,
and the published (calibrated, guarded) distribution."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from daemon.io.memory import MemoryBroker, MemoryInput, MemoryOutput
from daemon.io.messages import parse_bar
from daemon.scoring.calibration import GuardedCalibrator
from daemon.scoring.metrics import ScoreMetrics
from daemon.scoring.pending import PendingForecast, realised_closes
from daemon.scoring.scorer import OnlineScorer
from daemon.scoring.store import MemoryScoreStore, accumulator_fields, accumulator_from_fields, shape_field
from daemon.settings import Settings, load_settings
from daemon.state.memory import MemoryStateStore
from kronos_core.evaluation.publisher import POOLED, PublisherConfig, Ticket
from kronos_core.scoring import ScoreAccumulator
from kronos_core.stream_types import SeriesForecast, SeriesWindow
from tests.support.launcher import bar_series, interleave, metric, running_daemon, wait_until
from tests.support.stub_forecaster import StubForecaster

pytestmark = pytest.mark.timeout(60)

H = 3


class RecordingStub(StubForecaster):
    """The stub, keeping every answer by (symbol, as-of ns) for hand-computed expectations."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.answers: dict[tuple[str, int], tuple[SeriesForecast, float]] = {}

    def forecast(self, windows: Sequence[SeriesWindow], horizon: int) -> list[SeriesForecast]:
        out = super().forecast(windows, horizon)
        for w, r in zip(windows, out, strict=True):
            as_of = int(w.timestamps[-1].astype("datetime64[ns]").astype(np.int64))
            self.answers[(w.series_id, as_of)] = (r, float(w.values[-1, 3]))
        return out


def _settings(**scoring: Any) -> Settings:
    return load_settings(
        kafka={"input_topic": "in", "output_topic": "out", "dead_letter_topic": "dlq", "group_id": "g"},
        model={"max_context": 16, "horizon": H},
        batch={"max_batch_size": 7, "max_wait_ms": 10},
        scoring=scoring,
        http_port=None,
    )


def _expected(stub: RecordingStub, records: Sequence[tuple[bytes | None, bytes | None]]) -> ScoreAccumulator:
    bars = [parse_bar(k, v) for k, v in records]
    by_symbol: dict[str, list[Any]] = {}
    for b in bars:
        by_symbol.setdefault(b.symbol, []).append(b)
    acc = ScoreAccumulator(H, (0.1, 0.5, 0.9))
    for symbol, series in by_symbol.items():
        for i in range(len(series) - H):
            result, last = stub.answers[(symbol, series[i].ts_ns)]
            real = np.array([series[i + 1 + k].values[3] for k in range(H)])
            acc.add(real, last, paths=result.samples[:, :, 3], mean=result.mean[:, 3],
                    quantiles=result.quantiles[:, :, 3])  # fmt: skip
    return acc


async def _scored_sums(d: Any, want: dict[str, int], timeout_s: float = 10.0) -> dict[str, Any]:
    """The daemon's score sums once each version in ``want`` has that many forecasts scored (or the
    timeout passed: the caller's asserts then say what is missing). A bar's forecast is published
    before the scores its bar realises are committed, so the last bar's may come just after."""
    assert d.scorer is not None
    deadline = time.monotonic() + timeout_s
    while True:
        sums = await d.scorer.store.read(None, 1, time.time())
        if all(v in sums and sums[v].forecasts >= n for v, n in want.items()) or time.monotonic() > deadline:
            return sums
        await asyncio.sleep(0.05)


async def test_each_forecast_is_scored_once_its_horizon_is_realised() -> None:
    settings = _settings(calibrate=False)
    broker = MemoryBroker(default_partitions=2)
    records = interleave(bar_series("A", 20), bar_series("B", 12, seed=3))
    for key, value in records:
        broker.append("in", key, value)
    stub = RecordingStub(max_context=16)
    store = MemoryStateStore("kronos", 16)
    parts = {"bus_in": MemoryInput(broker, "in", "g"), "bus_out": MemoryOutput(broker), "store": store}
    async with running_daemon(settings, stub, **parts) as d:
        await wait_until(lambda: len(broker.messages("out")) == 32, 10, "32 forecasts")
        sums = await _scored_sums(d, {"stub-1": (20 - H) + (12 - H)})
        text = d.metrics.render()[0].decode()
        scored = metric(d, "kronos_scored_forecasts_total", model_version="stub-1")
        steps1 = metric(d, "kronos_score_steps_total", model_version="stub-1", step="1")
        abs1 = metric(d, "kronos_score_close_abs_error_total", model_version="stub-1", step="1")
        pending = await d.scorer.store.pending(["A", "B"])

    expected = _expected(stub, records)
    assert scored == (20 - H) + (12 - H) == expected.forecasts
    assert set(sums) == {"stub-1"}  # no calibration: no "@model" twin
    got = sums["stub-1"]
    for name in ("n", "abs_err", "persist_err", "inside", "crps_n", "crps", "pinball"):
        np.testing.assert_allclose(getattr(got, name), getattr(expected, name), rtol=1e-12, atol=1e-12)
    assert steps1 == expected.n[0] and abs1 == pytest.approx(expected.abs_err[0])
    report = expected.report()
    assert metric(d, "kronos_score_close_mae", model_version="stub-1") == pytest.approx(report.mae)
    assert metric(d, "kronos_score_skill", model_version="stub-1", metric="crps") == pytest.approx(
        report.skill_crps
    )
    assert metric(
        d, "kronos_score_band_coverage", model_version="stub-1", bands="published"
    ) == pytest.approx(report.coverage)
    assert 'symbol="' not in text  # no per-symbol labels
    assert [len(pending[s]) for s in ("A", "B")] == [H, H]  # the last H forecasts wait for their bars


def test_realised_closes_by_bar_count() -> None:
    p = PendingForecast("v", 20, 1.0, (0.5,), np.zeros(2), np.zeros((1, 2)), np.zeros((1, 2)), None)
    assert realised_closes([10, 20, 30], [1.0, 2.0, 3.0], p) is None  # one of two bars so far
    assert list(realised_closes([10, 20, 30, 45], [1.0, 2.0, 3.0, 4.0], p)) == [3.0, 4.0]  # a gap is fine
    assert realised_closes([30, 40, 50], [1.0, 2.0, 3.0], p) == "expired"  # its bar left the ring


def test_pending_and_sums_round_trip() -> None:
    rng = np.random.default_rng(0)
    p = PendingForecast("v1", 123, 9.5, (0.1, 0.5, 0.9), rng.random(4), rng.random((3, 4)), rng.random((3, 4)),
                        rng.random((5, 4)), rng.random((40, 4)), {"symbol": "A", "sigma": 0.01})  # fmt: skip
    q = PendingForecast.decode(p.encode())
    assert (q.version, q.as_of, q.last_close, q.levels) == ("v1", 123, 9.5, (0.1, 0.5, 0.9))
    assert q.ticket == {"symbol": "A", "sigma": 0.01}
    for name in ("mean", "quantiles", "model_quantiles", "paths", "calibrated_paths"):
        np.testing.assert_array_equal(getattr(q, name), getattr(p, name))
    acc = ScoreAccumulator(4).add(rng.random(4), 0.5, paths=rng.random((5, 4)))
    back = accumulator_from_fields({**accumulator_fields(acc), "shape": shape_field(acc)})
    assert back.to_dict() == acc.to_dict()


def _window(symbol: str, closes: np.ndarray, i: int, horizon: int) -> SeriesWindow:
    values = np.repeat(closes[:, None], 6, axis=1)
    ts = np.arange(i - len(closes) + 1, i + 1).astype("datetime64[ns]")
    future = np.arange(i + 1, i + 1 + horizon).astype("datetime64[ns]")
    return SeriesWindow(symbol, values, ts, future, 0)


def _forecast(last: float, offsets: np.ndarray, levels: tuple[float, ...]) -> SeriesForecast:
    samples = np.repeat((last + offsets)[:, :, None], 6, axis=2)  # [S, H, 6]
    return SeriesForecast("S", samples.mean(axis=0), samples, np.quantile(samples, levels, axis=0), levels)


def test_guarded_calibrator_brings_a_too_narrow_model_to_nominal_coverage() -> None:
    """A model whose band is far too narrow: the published p10-p90 holds about 80%, the model's own
    far less; the message's bands move, the model's stay available, and the state survives JSON."""
    rng = np.random.default_rng(1)
    h, levels, n = 2, (0.1, 0.5, 0.9), 1400
    cal = GuardedCalibrator(PublisherConfig(h, min_symbol=20, vol_window=50))
    closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    tickets: dict[int, Ticket] = {}
    inside_model, inside_pub = [], []
    for i in range(100, n - h):
        last = closes[i]
        result = _forecast(last, rng.normal(0, 0.002 * last, size=(32, h)), levels)  # ~5x too narrow
        done = cal.apply(_window("S", closes[i - 59 : i + 1], i, h), result, "v1")
        assert done is not None
        model_q, _, grid, published, _ = done
        assert grid.shape == (40, h) and np.all(np.diff(grid, axis=0) >= 0)
        np.testing.assert_allclose(result.quantiles[:, :, 3], published.quantiles[[3, 19, 35]], rtol=0.02)
        tickets[i] = Ticket.from_dict(published.ticket.to_dict())  # as it waits in Redis
        if i - h in tickets:  # the forecast made h bars ago is realised by this bar
            cal.observe(tickets.pop(i - h), closes[i - h + 1 : i + 1], "v1")
        if i >= 500:
            y = closes[i + 1 : i + 1 + h]
            inside_model.append((model_q[0] <= y) & (y <= model_q[-1]))
            q = result.quantiles[:, :, 3]
            inside_pub.append((q[0] <= y) & (y <= q[-1]))
    assert float(np.mean(inside_model)) < 0.4
    assert 0.74 < float(np.mean(inside_pub)) < 0.86
    changed = cal.changed()
    assert set(changed) == {("v1", POOLED), ("v1", "S")} and cal.changed() == {}
    again = GuardedCalibrator(PublisherConfig(h, min_symbol=20, vol_window=50))
    again.serve("v1")
    again.take("v1", ["S", POOLED], {k: json.loads(json.dumps(v)) for k, v in changed.items()})
    assert again.publisher.count("S") == cal.publisher_of("v1").count("S") > 1000


def _learn(cal: GuardedCalibrator, version: str, symbol: str, n: int, seed: int) -> None:
    """``n`` forecasts of ``symbol`` by ``version`` (a model too narrow by 5x), each realised at once."""
    rng, h, levels = np.random.default_rng(seed), 2, (0.1, 0.5, 0.9)
    closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n + 62)))
    for i in range(60, 60 + n):
        result = _forecast(closes[i], rng.normal(0, 0.002 * closes[i], size=(32, h)), levels)
        done = cal.apply(_window(symbol, closes[i - 59 : i + 1], i, h), result, version)
        assert done is not None
        cal.observe(done.published.ticket, closes[i + 1 : i + 1 + h], version)


async def test_each_version_has_its_own_calibration_copied_from_the_champion_on_first_use() -> None:
    """v1 learns; v2 replaces it and starts from a copy of v1's states (read from the store), then
    learns on its own; a challenger beside v2 copies v2's; a version with nothing stored and no parent
    reads the unversioned keys of older releases."""
    store, config = MemoryScoreStore(), PublisherConfig(2, min_symbol=20, vol_window=50)
    cal = GuardedCalibrator(config)
    cal.serve("v1")
    await cal.load(store, "v1", ["S"])
    _learn(cal, "v1", "S", 80, seed=1)
    await store.commit({}, {}, cap=4, now=0.0, calibration=cal.changed())
    assert await store.calibration([("v1", "S"), ("v1", POOLED)]) != {}

    restarted = GuardedCalibrator(config)  # a new process that serves v2 from its start
    restarted.serve("v1")
    restarted.serve("v2")
    assert restarted.parent("v2") == "v1" and restarted.champion == "v2"
    await restarted.load(store, "v2", ["S"])
    assert restarted.publisher_of("v2").count("S") == 80 and restarted.publisher_of("v2").scope("S")[1] == "symbol"
    copied = restarted.changed()  # the copies are v2's own now, stored under v2's keys
    assert set(copied) == {("v2", "S"), ("v2", POOLED)}
    await store.commit({}, {}, cap=4, now=0.0, calibration=copied)
    _learn(restarted, "v2", "S", 10, seed=2)
    await store.commit({}, {}, cap=4, now=0.0, calibration=restarted.changed())
    stored = await store.calibration([("v1", "S"), ("v2", "S")])
    assert stored[("v1", "S")]["count"] == 80 and stored[("v2", "S")]["count"] == 90  # v1's is untouched

    restarted.serve("c1", champion=False)  # a challenger beside v2: v2 stays the champion
    assert restarted.champion == "v2" and restarted.parent("c1") == "v2"
    await restarted.load(store, "c1", ["S"])
    assert restarted.publisher_of("c1").count("S") == 90  # v2's state, held in memory

    legacy = MemoryScoreStore()  # a state of an older release, unversioned
    legacy._calibration[(None, "S")] = json.dumps(stored[("v1", "S")]).encode()
    fresh = GuardedCalibrator(config)
    fresh.serve("v9")
    await fresh.load(legacy, "v9", ["S"])
    assert fresh.publisher_of("v9").count("S") == 80


async def test_calibrated_forecasts_keep_their_extras_by_symbol_and_bar_not_by_object() -> None:
    """adjust() hands each calibrated forecast's model bands, published grid and ticket to stored() by
    (version, symbol, bar): an equal copy of the result object gets them, and nothing is left over."""
    rng, levels = np.random.default_rng(4), (0.1, 0.5, 0.9)
    scorer = OnlineScorer(MemoryScoreStore(), ScoreMetrics(CollectorRegistry()), 2,
                          GuardedCalibrator(PublisherConfig(2, min_symbol=20, vol_window=50)))  # fmt: skip
    closes = {s: 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 60))) for s in ("A", "B")}
    windows = [_window(s, c, 59, 2) for s, c in closes.items()]
    results = [_forecast(c[-1], rng.normal(0, 0.002 * c[-1], size=(32, 2)), levels) for c in closes.values()]
    model_q = [r.quantiles[:, :, 3].copy() for r in results]
    await scorer.adjust(windows, results, "v1")
    states = [SimpleNamespace(symbol=w.series_id, timestamps=list(w.timestamps), rows=list(w.values)) for w in windows]
    await scorer.stored([(s, w, dataclasses.replace(r)) for s, w, r in zip(states, windows, results, strict=True)], "v1")
    pending = await scorer.store.pending(["A", "B"])
    for (symbol, raw), q in zip(pending.items(), model_q, strict=True):
        p = PendingForecast.decode(raw[-1])
        assert p.ticket is not None and p.ticket["symbol"] == symbol and p.calibrated_paths is not None, symbol
        np.testing.assert_array_equal(p.model_quantiles, q)  # the model's own, not the published ones
        assert not np.array_equal(p.quantiles, q)
    assert scorer._extra == {}


async def test_guarded_daemon_keeps_both_scores() -> None:
    settings = _settings(calibrate=True, calibration_min=5, publish_paths=2)
    broker = MemoryBroker(default_partitions=1)
    for key, value in bar_series("A", 40):
        broker.append("in", key, value)
    async with running_daemon(settings, StubForecaster(max_context=16), **{
        "bus_in": MemoryInput(broker, "in", "g"), "bus_out": MemoryOutput(broker),
        "store": MemoryStateStore("kronos", 16),
    }) as d:  # fmt: skip
        await wait_until(lambda: len(broker.messages("out")) == 40, 10, "40 forecasts")
        assert d.scorer is not None
        sums = await _scored_sums(d, {"stub-1": 40 - H, "stub-1@model": 40 - H})
        model_cov = metric(d, "kronos_score_band_coverage", model_version="stub-1", bands="model")
    out = [json.loads(m.value or b"") for m in broker.messages("out")]
    assert set(sums) == {"stub-1", "stub-1@model"}
    assert sums["stub-1"].forecasts == sums["stub-1@model"].forecasts == 40 - H
    # every forecast is published through the guard (the pooled state until the symbol's own has 5)
    assert all(f["bands"] == "guarded" for f in out)
    assert [f["guard"]["scope"] for f in out[: 5 + H]] == ["pooled"] * (5 + H)
    assert out[-1]["guard"]["scope"] == "symbol"
    for f in out:
        assert len(f["probabilities"]["p_up"]) == H and all(0 <= p <= 1 for p in f["probabilities"]["p_up"])
        assert set(f["model_quantiles"]) == {"p10", "p50", "p90"}
        assert f["quantiles"]["p10"]["close"] != f["model_quantiles"]["p10"]
        assert len(f["model_paths"]) == 2 and all(len(p) == H for p in f["model_paths"])  # capped
    assert model_cov == pytest.approx(sums["stub-1@model"].report().coverage)
    # P(up) scored online: every step of every realised forecast in one reliability bin, and its Brier sum
    bins = [metric(d, "kronos_score_up_forecasts_total", model_version="stub-1", bin=f"{b / 10:.1f}") for b in range(10)]
    assert sum(bins) == (40 - H) * H
    assert 0 < metric(d, "kronos_score_brier_up_total", model_version="stub-1", step="1") < 40 - H


def test_memory_store_caps_pending_and_merges_sums() -> None:
    store = MemoryScoreStore()
    acc = ScoreAccumulator(2).add(np.array([1.0, 2.0]), 1.0, paths=np.ones((3, 2)))

    async def go() -> None:
        for i in range(5):
            await store.commit({"A": (0, str(i).encode())}, {"v": acc}, cap=3, now=0.0)
        assert await store.pending(["A"]) == {"A": [b"2", b"3", b"4"]}
        await store.commit({"A": (2, b"5")}, {}, cap=3, now=0.0)
        assert await store.pending(["A"]) == {"A": [b"4", b"5"]}
        assert (await store.read(["v"], 1, 0.0))["v"].forecasts == 5

    asyncio.run(go())


def test_score_metrics_labels_are_version_and_step_only() -> None:
    from prometheus_client import CollectorRegistry

    r = CollectorRegistry()
    m = ScoreMetrics(r)
    m.add("v", ScoreAccumulator(2).add(np.array([1.0, 2.0]), 1.0, paths=np.ones((3, 2))))
    labels = {k for fam in r.collect() for s in fam.samples for k in s.labels}
    assert labels <= {"model_version", "step", "level", "metric", "bands"}
