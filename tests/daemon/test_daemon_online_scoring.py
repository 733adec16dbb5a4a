"""Online scoring: forecasts scored once their horizon bars arrive, sums in Prometheus and the store,
and the split-conformal calibration of the published bands."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from daemon_helpers import bar_series, interleave, metric, running_daemon, wait_until
from stub_forecaster import StubForecaster

from daemon.io.memory import MemoryBroker, MemoryInput, MemoryOutput
from daemon.io.messages import parse_bar
from daemon.scoring.calibration import ConformalCalibrator, conformal_shift, map_paths
from daemon.scoring.online import (
    MemoryScoreStore,
    PendingForecast,
    ScoreMetrics,
    accumulator_fields,
    accumulator_from_fields,
    realised_closes,
    shape_field,
)
from daemon.settings import Settings, load_settings
from daemon.state.memory import MemoryStateStore
from kronos_core.scoring import ScoreAccumulator
from kronos_core.stream_types import SeriesForecast, SeriesWindow

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


async def test_each_forecast_is_scored_once_its_horizon_is_realised() -> None:
    settings = _settings()
    broker = MemoryBroker(default_partitions=2)
    records = interleave(bar_series("A", 20), bar_series("B", 12, seed=3))
    for key, value in records:
        broker.append("in", key, value)
    stub = RecordingStub(max_context=16)
    store = MemoryStateStore("kronos", 16)
    parts = {"bus_in": MemoryInput(broker, "in", "g"), "bus_out": MemoryOutput(broker), "store": store}
    async with running_daemon(settings, stub, **parts) as d:
        await wait_until(lambda: len(broker.messages("out")) == 32, 10, "32 forecasts")
        assert d.scorer is not None
        sums = await d.scorer.store.read(None, 1, __import__("time").time())
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
                        rng.random((5, 4)), rng.random((5, 4)))  # fmt: skip
    q = PendingForecast.decode(p.encode())
    assert (q.version, q.as_of, q.last_close, q.levels) == ("v1", 123, 9.5, (0.1, 0.5, 0.9))
    for name in ("mean", "quantiles", "model_quantiles", "paths", "calibrated_paths"):
        np.testing.assert_array_equal(getattr(q, name), getattr(p, name))
    acc = ScoreAccumulator(4).add(rng.random(4), 0.5, paths=rng.random((5, 4)))
    back = accumulator_from_fields({**accumulator_fields(acc), "shape": shape_field(acc)})
    assert back.to_dict() == acc.to_dict()


def test_conformal_shift_uses_the_finite_sample_rank() -> None:
    residuals = np.arange(1.0, 10.0).reshape(9, 1, 1)  # 1..9, n = 9
    shift = conformal_shift(np.repeat(residuals, 3, axis=1), (0.1, 0.5, 0.9))
    # q=0.1: floor(10 * 0.1) = 1st smallest; q=0.5: ceil(5) = 5th; q=0.9: ceil(9) = 9th
    assert shift[:, 0].tolist() == [1.0, 5.0, 9.0]


def test_map_paths_takes_the_model_quantiles_onto_the_calibrated_ones() -> None:
    model_q = np.array([[9.0], [10.0], [11.0]])
    calibrated = np.array([[8.0], [10.0], [12.0]])  # twice as wide
    paths = np.array([[9.0], [10.5], [11.0], [13.0], [7.0]])
    # inside: piecewise linear through the knots; beyond: moved as far as the outer knot moved
    assert map_paths(paths, model_q, calibrated)[:, 0].tolist() == [8.0, 11.0, 12.0, 14.0, 6.0]


def test_calibration_widens_a_too_narrow_band_to_nominal_coverage() -> None:
    rng = np.random.default_rng(1)
    cal = ConformalCalibrator(window=400, min_count=50)
    levels = (0.1, 0.5, 0.9)
    inside_before, inside_after = [], []
    for i in range(1500):
        last = 100.0
        y = last + rng.normal(0, 1.0, size=2)  # the truth: N(last, 1)
        model_q = last + np.array([[-0.3] * 2, [0.0] * 2, [0.3] * 2])  # a band far too narrow
        window = SeriesWindow("S", np.full((1, 6), last), np.array([i], dtype="datetime64[ns]"),
                              np.array([i + 1, i + 2], dtype="datetime64[ns]"), 0)  # fmt: skip
        q6 = np.repeat(model_q[:, :, None], 6, axis=2)
        result = SeriesForecast("S", q6[1], np.repeat(q6[1][None], 4, axis=0), q6.copy(), levels)
        model_back, _ = cal.apply(window, result, "v")
        published = result.quantiles[:, :, 3]
        np.testing.assert_array_equal(model_back, model_q)
        np.testing.assert_array_equal(published[1], model_q[1])  # the median is kept
        if i >= 500:
            inside_before.append((model_q[0] <= y) & (y <= model_q[-1]))
            inside_after.append((published[0] <= y) & (y <= published[-1]))
        p = PendingForecast("v", i, last, levels, model_q[1], published, model_q, None)
        cal.observe(p, y)
    before, after = float(np.mean(inside_before)), float(np.mean(inside_after))
    assert before < 0.3
    assert 0.75 < after < 0.85


async def test_calibrated_daemon_keeps_both_scores() -> None:
    settings = _settings(calibrate=True, calibration_min=5)
    broker = MemoryBroker(default_partitions=1)
    for key, value in bar_series("A", 40):
        broker.append("in", key, value)
    async with running_daemon(settings, StubForecaster(max_context=16), **{
        "bus_in": MemoryInput(broker, "in", "g"), "bus_out": MemoryOutput(broker),
        "store": MemoryStateStore("kronos", 16),
    }) as d:  # fmt: skip
        await wait_until(lambda: len(broker.messages("out")) == 40, 10, "40 forecasts")
        assert d.scorer is not None
        sums = await d.scorer.store.read(None, 1, __import__("time").time())
        model_cov = metric(d, "kronos_score_band_coverage", model_version="stub-1", bands="model")
    out = [json.loads(m.value or b"") for m in broker.messages("out")]
    assert set(sums) == {"stub-1", "stub-1@model"}
    assert sums["stub-1"].forecasts == sums["stub-1@model"].forecasts == 40 - H
    # the first forecasts are published as the model made them; later ones are calibrated
    assert out[0]["quantiles"]["p10"]["close"] != out[-1]["quantiles"]["p10"]["close"]
    assert out[0]["bands"] == "model" and out[-1]["bands"] == "calibrated"  # said in the message
    first = next(i for i, f in enumerate(out) if f["bands"] == "calibrated")
    assert first == 5 + H  # the 5th forecast (bar 4) is realised at bar 4 + H, after that bar's own went out
    assert model_cov == pytest.approx(sums["stub-1@model"].report().coverage)


def test_memory_store_caps_pending_and_merges_sums() -> None:
    import asyncio

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
