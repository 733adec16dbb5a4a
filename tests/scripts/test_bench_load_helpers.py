"""Pure logic of scripts/bench_load.py (scripts/benchload/) and its probe (no broker, no daemon, no timing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kronos_core.stream_types import SeriesForecast, SeriesWindow, TokenState
from scripts.benchload import cli, measures, probe, process, report, steady


def test_percentiles_of_known_values_and_of_nothing() -> None:
    out = measures.percentiles([float(v) for v in range(1, 101)])
    assert out == {"p50": 50.5, "p90": 90.1, "p99": 99.0, "max": 100.0}
    assert measures.percentiles([]) == {"p50": None, "p90": None, "p99": None, "max": None}


def test_spread_schedule_sends_every_symbol_once_within_the_spread_in_order() -> None:
    schedule = steady.spread_schedule(500, 1.0, np.random.default_rng(3))
    offsets = [o for o, _ in schedule]
    assert sorted(i for _, i in schedule) == list(range(500))
    assert offsets == sorted(offsets) and offsets[0] >= 0.0 and offsets[-1] < 1.0
    assert offsets[-1] - offsets[0] > 0.9  # spread over the second, not bunched at one instant
    assert steady.spread_schedule(3, 0.0, np.random.default_rng(0)) == [(0.0, 0), (0.0, 1), (0.0, 2)]


@pytest.mark.parametrize(
    ("completions", "lag", "missing", "expected"),
    [
        ([1.2, 3.4, 2.0], 0, 0, True),
        ([1.2, 10.0, 2.0], 0, 0, False),  # one close's forecasts came only at the next close
        ([1.2, None, 2.0], 0, 0, False),  # one close's forecasts never all came
        ([1.2, 3.4], 7, 0, False),  # input left unconsumed at the end
        ([1.2, 3.4], 0, 1, False),
        ([], 0, 0, False),
    ],
)
def test_kept_up(completions: list[float | None], lag: int, missing: int, expected: bool) -> None:
    assert steady.kept_up(completions, 10.0, lag, missing) is expected


def test_metric_and_count_deltas() -> None:
    assert measures.metric_delta({"a": 5.0, "b": 1.0}, {"a": 2.0}, "a") == 3.0
    assert measures.metric_delta({"b": 1.0}, {"a": 2.0}, "b") == 1.0
    assert measures.metric_delta({}, {}, "x") == 0.0
    assert measures.count_delta({"warm": 9, "rebuild": 2}, {"warm": 4, "rebuild": 2}) == {"warm": 5, "rebuild": 0}
    assert report.served_cell(None) == "-"
    assert report.served_cell({"warm": 60, "rebuild": 3, "refresh": 1, "evicted": 2}) == "60/3/1 (2)"


def test_phase_ms_per_forecast_reads_the_labelled_sums() -> None:
    before = {'kronos_loop_phase_seconds_sum{phase="model"}': 1.0, "kronos_loop_phase_seconds_sum": 1.5}
    after = {
        'kronos_loop_phase_seconds_sum{phase="model"}': 3.0,
        'kronos_loop_phase_seconds_sum{phase="commit"}': 0.2,
        "kronos_loop_phase_seconds_sum": 4.7,  # the unlabelled total is not a phase
        'kronos_loop_phase_seconds_count{phase="model"}': 9.0,
    }
    assert measures.phase_ms_per_forecast(after, before, 1000) == {"model": 2.0, "commit": 0.2}
    assert measures.phase_ms_per_forecast(after, before, 0) == {}
    assert report.phase_lines({"exact": {"measured": {"phase_ms_per_forecast": {"model": 2.0, "x": 0.0}}}}) == [
        "- exact: the daemon's loop phases (`kronos_loop_phase_seconds`), ms per forecast: model 2.000.", ""
    ]


def test_parse_args_steady_defaults_and_refusals(tmp_path: Path) -> None:
    args = cli.parse_args(["--steady", "--modes", "exact"])
    assert (args.kind, args.steady, args.max_sessions) == ("steady", 1000, 1000)
    assert args.out == Path("results/bench_steady.json")
    args = cli.parse_args(["--burst", "512,128", "--model", "stub"])
    assert (args.kind, args.burst_sizes, args.max_batch, args.max_sessions) == ("burst", [128, 512], 512, 512)
    for bad in (["--steady", "10", "--burst", "5"], ["--steady", "10", "--interval", "1", "--spread", "2"]):
        with pytest.raises(SystemExit):
            cli.parse_args(bad)


def test_daemon_env_pairs_are_parsed_and_applied_last() -> None:
    assert cli.parse_env_pairs(["A=1", "B=x=y", "A=2", "C="]) == {"A": "2", "B": "x=y", "C": ""}
    for bad in (["A"], ["=1"], [" A=1"]):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            cli.parse_env_pairs(bad)
    args = cli.parse_args([
        "--steady", "10", "--modes", "incremental", "--model", "stub",
        "--daemon-env", "KRONOS_BATCH__PIPELINE=false", "--daemon-env", "KRONOS_MODEL__HORIZON=3",
    ])  # fmt: skip
    run = process.Run("incremental", "u1", 4)
    env = process.daemon_env(args, run, "127.0.0.1:9092", "redis://127.0.0.1:6379/0", 8080)
    assert env["KRONOS_BATCH__PIPELINE"] == "false" and env["KRONOS_MODEL__HORIZON"] == "3"
    # incremental: the probe wraps the stub, and every symbol may keep a warm session
    assert env["KRONOS_MODEL__FACTORY"] == "scripts.benchload.probe:build" and env["BENCH_PROBE_INNER"] == "tests.support.stub_forecaster:build"
    assert env["KRONOS_MODEL__MAX_SESSIONS"] == "10" and env["BENCH_PROBE_FILE"] == str(run.probe_file)
    with pytest.raises(SystemExit):
        cli.parse_args(["--daemon-env", "NOVALUE"])


def _window(token_state: TokenState | None) -> SeriesWindow:
    ts = np.array([0, 60], dtype="datetime64[s]").astype("datetime64[ns]")
    return SeriesWindow("AAA", np.ones((2, 6)), ts, ts + np.timedelta64(120, "s"), 1, token_state)


def _state(bars_since_refresh: int, last_ts: int = 1) -> TokenState:
    ids = np.arange(3, dtype=np.int64)
    return TokenState(ids, ids, np.zeros(6), np.ones(6), 0, last_ts, 0, bars_since_refresh)


def _result(token_state: TokenState | None) -> SeriesForecast:
    z = np.zeros((2, 6))
    return SeriesForecast("AAA", z, z[None], z[None], (0.5,), token_state)


def test_probe_classifies_warm_rebuilt_refreshed_and_exact() -> None:
    old = _state(3)
    assert probe.classify(_window(old), _result(_state(4, 2)), old.fingerprint(), True) == "warm"
    assert probe.classify(_window(old), _result(_state(4, 2)), "another", True) == "rebuild"
    assert probe.classify(_window(old), _result(_state(4, 2)), None, True) == "rebuild"
    assert probe.classify(_window(old), _result(_state(0, 2)), old.fingerprint(), True) == "refresh"
    assert probe.classify(_window(None), _result(_state(0)), None, True) == "refresh"
    assert probe.classify(_window(old), _result(_state(4, 2)), None, False) == "warm"  # no pool (the stub)
    assert probe.classify(_window(None), _result(None), None, True) == "exact"


def test_probe_wrapper_counts_writes_and_delegates(tmp_path: Path) -> None:
    class Inner:
        model_version, mode = "m1", "incremental"

        def __init__(self) -> None:
            self.dropped: list[str] = []

        def forecast(self, windows: list[SeriesWindow], horizon: int) -> list[SeriesForecast]:
            return [_result(_state(0 if w.token_state is None else w.token_state.bars_since_refresh + 1))
                    for w in windows]

        def drop(self, ids: list[str]) -> None:
            self.dropped += ids

    out = tmp_path / "probe.json"
    wrapped = probe.ProbeForecaster(Inner(), out)
    assert probe.read_counts(out)["calls"] == 0  # nothing written yet
    wrapped.forecast([_window(None), _window(_state(2))], 12)
    counts = probe.read_counts(out)
    assert (counts["calls"], counts["refresh"], counts["warm"], counts["rebuild"]) == (1, 1, 1, 0)
    assert wrapped.model_version == "m1" and wrapped.mode == "incremental"
    wrapped.drop(["AAA"])
    assert wrapped.inner.dropped == ["AAA"]
