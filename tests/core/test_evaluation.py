"""kronos_core.evaluation: bars as users have them, the baselines, the Diebold-Mariano test, the
publisher's per-symbol calibration and guard, and the walk-forward backtest (pure logic, a stub model)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kronos_core.evaluation import (
    GRID,
    BacktestConfig,
    Publisher,
    PublisherConfig,
    diebold_mariano,
    load_bars_csv,
    run_backtest,
    rw_vol_quantiles,
)
from kronos_core.evaluation.distribution import cdf_at, crps, from_samples, quantiles_at
from kronos_core.evaluation.stats import hac_variance
from kronos_core.exceptions import InputError
from kronos_core.stream_types import SeriesForecast, SeriesWindow


def _gbm(n: int, sigma: float, seed: int, start: float = 100.0) -> np.ndarray:
    return start * np.exp(np.cumsum(np.random.default_rng(seed).normal(0, sigma, n)))


# -- bars ------------------------------------------------------------------------------------------


def test_csv_columns_in_any_case_time_in_the_first_column_and_a_time_zone(tmp_path: Path) -> None:
    path = tmp_path / "eurusd.csv"
    path.write_text(",OPEN,High,low,Close\n2024-01-02 09:00,1,2,0.5,1.5\n2024-01-02 08:00,1,2,0.5,1.2\n")
    bars = load_bars_csv(path, tz="Europe/Berlin")["eurusd"]
    assert [str(t) for t in bars.timestamps] == ["2024-01-02T07:00:00.000000000", "2024-01-02T08:00:00.000000000"]
    assert bars.closes.tolist() == [1.2, 1.5]  # sorted by time
    assert bars.values[:, 4].tolist() == [0.0, 0.0]  # no volume: 0
    assert bars.values[:, 5].tolist() == pytest.approx([0.0, 0.0])


def test_csv_with_a_symbol_column_and_a_named_time_column(tmp_path: Path) -> None:
    path = tmp_path / "many.csv"
    rows = ["sym,when,open,high,low,close,volume"] + [
        f"{s},2024-01-0{d},1,2,0.5,{d},10" for s in ("A", "B") for d in (1, 2, 2)
    ]
    path.write_text("\n".join(rows).replace("sym,", "Symbol,") + "\n")
    bars = load_bars_csv(path, time_column="When")
    assert sorted(bars) == ["A", "B"] and len(bars["A"]) == 2  # a repeated timestamp keeps one row


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time,open,high,low\n2024-01-01,1,2,0\n", "lack the column"),
        ("time,open,high,low,close\nnot-a-time,1,2,0.5,1\n", "does not hold timestamps"),
        ("time,open,high,low,close\n2024-01-01,0,0,0,0\n", "no row has positive"),
    ],
)
def test_bad_csv_says_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_bars_csv(path)


# -- distributions, baselines, statistics ----------------------------------------------------------


def test_grid_quantiles_of_many_samples_match_the_distribution() -> None:
    samples = np.random.default_rng(0).normal(10, 2, size=(20000, 1))
    q = from_samples(samples)
    p10, p90 = quantiles_at(q, (0.1, 0.9))[:, 0]
    assert p10 == pytest.approx(10 - 1.2816 * 2, abs=0.06) and p90 == pytest.approx(10 + 1.2816 * 2, abs=0.06)
    assert cdf_at(q, np.array([10.0]))[0] == pytest.approx(0.5, abs=0.02)
    # CRPS of a Gaussian at its mean: sigma * (sqrt(2) - 1) / sqrt(pi) * 2 ... = 0.2337 * 2 * sigma / 2
    assert crps(q, np.array([10.0]))[0] == pytest.approx(2 * (np.sqrt(2) - 1) / np.sqrt(np.pi), rel=0.03)


def test_rolling_volatility_walk_widens_with_sqrt_of_the_step() -> None:
    closes = _gbm(300, 0.01, 1)
    q = rw_vol_quantiles(closes, 4, window=100)
    width = quantiles_at(q, (0.9,))[0] - quantiles_at(q, (0.1,))[0]
    assert width[3] / width[0] == pytest.approx(2.0, rel=0.02)
    assert np.median(q[:, 0]) == pytest.approx(closes[-1], rel=1e-3)


def test_hac_variance_of_white_noise_is_its_variance_and_grows_with_autocorrelation() -> None:
    rng = np.random.default_rng(3)
    e = rng.normal(0, 1, 20000)
    assert hac_variance(e, 5) == pytest.approx(1.0, rel=0.05)
    ma = e[1:] + e[:-1]  # MA(1): long-run variance 4, plain variance 2
    assert hac_variance(ma, 10) == pytest.approx(4.0, rel=0.1)


def test_diebold_mariano_finds_a_real_difference_and_not_a_spurious_one() -> None:
    rng = np.random.default_rng(4)
    assert diebold_mariano([rng.normal(-0.2, 1, 2000)], 0)["pvalue"] < 1e-6
    assert diebold_mariano([rng.normal(0.0, 1, 2000)], 0)["pvalue"] > 0.01
    assert diebold_mariano([np.zeros(2)], 0)["pvalue"] is None  # too few origins


# -- the publisher --------------------------------------------------------------------------------


def _replay(pub: Publisher, symbols: dict[str, np.ndarray], model_width: float, h: int, start: int) -> dict[str, list]:
    """Walk every symbol bar by bar: publish from a model whose spread is ``model_width`` x the truth,
    realise each forecast h bars later; returns per symbol the p10-p90 hits of the published bands."""
    hits: dict[str, list] = {s: [] for s in symbols}
    tickets: dict[tuple[str, int], object] = {}
    rng = np.random.default_rng(9)
    n = len(next(iter(symbols.values())))
    for i in range(start, n - h):
        for s, closes in symbols.items():
            sigma = float(np.std(np.diff(np.log(closes[max(0, i - 100) : i + 1]))))
            steps = np.sqrt(np.arange(1, h + 1))
            paths = closes[i] * np.exp(rng.normal(0, model_width * sigma, size=(32, h)) * steps)
            p = pub.publish(s, closes[max(0, i - 120) : i + 1], paths)
            tickets[(s, i)] = p.ticket
            if (s, i - h) in tickets:
                pub.realise(tickets.pop((s, i - h)), closes[i - h + 1 : i + 1])  # type: ignore[arg-type]
            if i > start + 300:
                lo, hi = quantiles_at(p.quantiles, (0.1, 0.9))
                y = closes[i + 1 : i + 1 + h]
                hits[s].append(((lo <= y) & (y <= hi)).mean())
    return hits


def test_per_symbol_coverage_holds_when_volatilities_differ_tenfold() -> None:
    """Eight symbols, daily sigma 0.2% .. 3%; the model's spread is half the truth's everywhere."""
    h = 3
    sigmas = np.geomspace(0.002, 0.03, 8)
    symbols = {f"S{i}": _gbm(900, s, 20 + i) for i, s in enumerate(sigmas)}
    hits = _replay(Publisher(PublisherConfig(h, min_symbol=50)), symbols, 0.5, h, 120)
    coverage = {s: float(np.mean(v)) for s, v in hits.items()}
    assert all(0.7 <= c <= 0.9 for c in coverage.values()), coverage


def test_coverage_follows_a_volatility_regime_change() -> None:
    h = 2
    calm, wild = _gbm(700, 0.005, 31), None
    wild = calm[-1] * np.exp(np.cumsum(np.random.default_rng(32).normal(0, 0.025, 700)))
    closes = np.concatenate([calm, wild])
    hits = _replay(Publisher(PublisherConfig(h, min_symbol=50)), {"X": closes}, 1.0, h, 120)["X"]
    after = float(np.mean(hits[-400:]))  # well after the change
    assert 0.7 <= after <= 0.9


def test_the_guard_follows_the_better_base() -> None:
    """A model far too wide loses its weight; the published CRPS stays near the walk's."""
    h = 2
    closes = _gbm(1200, 0.01, 5)
    pub = Publisher(PublisherConfig(h, min_symbol=50))
    _replay(pub, {"X": closes}, 8.0, h, 120)
    p = pub.publish("X", closes[-121:], closes[-1] * np.exp(np.random.default_rng(0).normal(0, 0.08, (32, h))))
    assert p.scope == "symbol" and float(p.weights.max()) < 0.2


def test_publisher_state_round_trips_and_refuses_another_horizon() -> None:
    pub = Publisher(PublisherConfig(2))
    _replay(pub, {"A": _gbm(300, 0.01, 1)}, 1.0, 2, 120)
    again = Publisher(PublisherConfig(2))
    again.load(pub.to_dict())
    closes = _gbm(200, 0.01, 2)
    paths = np.tile(closes[-1] * np.array([0.99, 1.01]), (16, 1))
    a, b = pub.publish("A", closes, paths), again.publish("A", closes, paths)
    np.testing.assert_array_equal(a.quantiles, b.quantiles)
    with pytest.raises(ValueError, match="horizon"):
        Publisher(PublisherConfig(3)).load(pub.to_dict())


def test_p_up_is_a_probability_per_step() -> None:
    pub = Publisher(PublisherConfig(3))
    closes = _gbm(200, 0.01, 7)
    p = pub.publish("A", closes, closes[-1] * np.exp(np.random.default_rng(0).normal(0.01, 0.01, (32, 3))))
    assert p.p_up.shape == (3,) and np.all((p.p_up >= 0) & (p.p_up <= 1))
    expected, rq = p.returns((0.1, 0.9))
    assert rq.shape == (2, 3) and np.all(rq[0] < rq[1])
    assert expected.shape == (3,)
    assert len(GRID) == p.quantiles.shape[0]


def _up_scores(skill: bool, seed: int, n: int = 1200, h: int = 6) -> tuple[float, float, float]:
    """A drift that flips sign every 60 bars; a model that knows it (``skill``: its P(up) is informative)
    or not. Bar by bar, each forecast realised h bars later. (Brier of the published P(up), of the running
    frequency it is shrunk towards, the mean weight of the distribution's P(up) at the last step)."""
    rng = np.random.default_rng(seed)
    sigma = 0.01
    mu = np.where((np.arange(n) // 60) % 2 == 0, 1, -1) * 0.25 * sigma
    closes = 100 * np.exp(np.cumsum(mu + rng.normal(0, sigma, n)))
    pub, k = Publisher(PublisherConfig(h)), np.arange(1, h + 1)
    pending: dict[int, object] = {}
    briers, weights = [], []
    for i in range(120, n - h):
        drift = mu[i] if skill else 0.0
        p = pub.publish("X", closes[i - 119 : i + 1], closes[i] * np.exp(drift * k + sigma * np.sqrt(k) * rng.normal(0, 1, (32, h))))
        pending[i] = p
        if i - h in pending:
            q = pending.pop(i - h)
            pub.realise(q, closes[i - h + 1 : i + 1])  # type: ignore[arg-type]
            up = closes[i - h + 1 : i + 1] > closes[i - h]
            if i > 400:
                briers.append((np.mean((q.p_up - up) ** 2), np.mean((q.ticket.p_freq - up) ** 2)))  # type: ignore[attr-defined]
                weights.append((q.p_up[-1] - q.ticket.p_freq[-1]) / (q.ticket.p_dist[-1] - q.ticket.p_freq[-1] + 1e-12))  # type: ignore[attr-defined]
    b = np.mean(briers, axis=0)
    return float(b[0]), float(b[1]), float(np.median(weights))


def test_p_up_is_the_climatology_without_skill_and_better_with_it() -> None:
    """Without skill the weight stays 0 (the published P(up) is the running frequency: the same Brier
    score); with skill it grows and the Brier score beats the frequency's."""
    published, climatology, weight = _up_scores(skill=False, seed=4)
    assert weight == 0.0 and published <= climatology + 1e-5, (published, climatology)
    published, climatology, weight = _up_scores(skill=True, seed=4)
    assert weight > 0.3 and published < climatology - 0.005, (published, climatology, weight)


# -- the walk -------------------------------------------------------------------------------------


class NoisyPersistence:
    """A stub forecaster: the last close with noise; it checks that no window holds a future bar."""

    mode = "exact"
    max_context = 64
    model_version = "stub"

    def __init__(self) -> None:
        self.windows = 0

    def forecast(self, windows: Sequence[SeriesWindow], horizon: int) -> list[SeriesForecast]:
        out = []
        for w in windows:
            assert w.timestamps[-1] < w.future_timestamps[0] and len(w.future_timestamps) == horizon
            rng = np.random.default_rng(w.seed)
            samples = w.values[-1] * np.exp(rng.normal(0, 0.01, size=(16, horizon, 6)))
            out.append(SeriesForecast(w.series_id, samples.mean(0), samples, np.quantile(samples, (0.1, 0.5, 0.9), 0),
                                      (0.1, 0.5, 0.9)))  # fmt: skip
            self.windows += 1
        return out


def _frame(closes: np.ndarray, freq: str = "h") -> pd.DataFrame:
    ts = pd.date_range("2024-01-01", periods=len(closes), freq=freq)
    return pd.DataFrame({"time": ts, "open": closes, "high": closes * 1.001, "low": closes * 0.999, "close": closes})


def test_backtest_of_two_symbols_reports_what_backtest_json_promises(tmp_path: Path) -> None:
    from kronos_core.evaluation.data import frame_to_bars
    from kronos_core.evaluation.report import write_report

    bars = frame_to_bars(_frame(_gbm(600, 0.004, 1)), "A") | frame_to_bars(_frame(_gbm(600, 0.02, 2)), "B")
    model = NoisyPersistence()
    result = run_backtest(model, bars, BacktestConfig(horizon=4, origins=150, warmup=50, batch=32))
    s = result.summary
    assert model.windows == 2 * 200 and s["n_origins"] == 300
    for name in ("published", "model"):
        assert {"crps", "mae", "coverage_p10_p90", "brier_up"} <= set(s[name])
    for base in ("persistence", "rw_vol", "ewma_vol"):
        assert {"crps", "mae", "coverage_p10_p90", "brier_up"} <= set(s["baselines"][base])
        assert 0 <= s["dm_pvalue"][f"published_vs_{base}"] <= 1
    assert len(s["per_step"]["published"]["crps"]) == 4 and set(s["per_symbol"]) == {"A", "B"}
    assert sum(s["published"]["pit_histogram"]) == 300 * 4
    assert math.isfinite(s["guard"]["crps_vs_better_of_model_and_rw_vol"])
    paths = write_report(result, tmp_path)
    assert [p.name for p in paths] == ["backtest.json", "backtest.md", "backtest.png"]
    assert paths[2].stat().st_size > 10_000


def test_backtest_refuses_bars_too_short_for_an_origin() -> None:
    from kronos_core.evaluation.data import frame_to_bars

    bars = frame_to_bars(_frame(_gbm(60, 0.01, 1)), "A")
    with pytest.raises(InputError, match="hold no origin"):
        run_backtest(NoisyPersistence(), bars, BacktestConfig(horizon=4))


def test_predict_distribution_with_a_trained_publisher() -> None:
    from kronos_core.evaluation import predict_distribution
    from kronos_core.evaluation.data import frame_to_bars

    bars = frame_to_bars(_frame(_gbm(400, 0.01, 3)), "A")["A"]
    model = NoisyPersistence()
    trained = run_backtest(model, {"A": bars}, BacktestConfig(horizon=4, origins=100, warmup=50)).publisher
    p = predict_distribution(model, bars, horizon=4, publisher=trained)
    assert p.scope == "symbol" and p.quantiles.shape == (len(GRID), 4)
    assert np.all((p.p_up >= 0) & (p.p_up <= 1))
    with pytest.raises(InputError, match="horizon"):
        predict_distribution(model, bars, horizon=3, publisher=trained)
