"""``kronos-stream demo`` in this process: a short replay through the daemon with the demo model."""

from __future__ import annotations

import io
import json
import os
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from daemon.cli.main import build_parser
from daemon.demo.config import BARS_CSV, CSV_TZ, DemoConfig, load_feed
from daemon.demo.replay import run_demo
from daemon.errors import ConfigError

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _no_kronos_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("KRONOS_"):
            monkeypatch.delenv(name)


def test_demo_replays_bars_through_the_daemon(tmp_path: Path) -> None:
    config = DemoConfig(bars=20, warmup=16, sample_count=4, out=tmp_path / "out" / "demo.png", retrain=False)
    echo = io.StringIO()
    outcome = run_demo(config, echo)

    # One forecast per replayed bar, printed as it arrived, in bar order, with unique ids.
    _, bars = load_feed(config)
    zone = ZoneInfo(CSV_TZ)
    expected = [ts.astimezone(zone).strftime("%Y-%m-%d %H:%M") for _, ts, _ in bars]
    lines = [line for line in echo.getvalue().splitlines() if line.startswith("DEMO  ")]
    assert [line.split()[1] + " " + line.split()[2] for line in lines] == expected
    assert [datetime.fromisoformat(r["as_of"]) for r in outcome.forecasts] == [ts for _, ts, _ in bars]
    ids = [r["id"] for r in outcome.forecasts]
    assert len(set(ids)) == len(ids) == 20
    assert all(r["horizon"] == 12 and r["mode"] == "incremental" for r in outcome.forecasts)
    assert all(r["sample_count"] == 4 for r in outcome.forecasts)
    assert outcome.forecasts[-1]["model_version"].startswith("demo-")  # manifest.json's version

    summary = outcome.summary
    assert summary["forecasts"] == {
        "replayed": 20,
        "warmup": 16,
        "dead_letters": 0,
        "unique_ids": True,
        "latest_in_store_is_last_published": True,
    }
    assert summary["accuracy"]["horizon_1"]["n"] == 19  # the last bar's next bar is not in the file
    assert summary["accuracy"]["horizon_end"]["n"] == 20 - 12
    online = summary["online_scores"]  # the daemon's own scorer, replayed bars only
    assert online["calibrated"] is True
    assert online["model_bands"]["count"] == online["published_bands"]["count"] == 20 - 12
    # the accuracy section scores the published mean (the guarded distribution's), as the scorer does
    assert online["published_bands"]["mae"] == pytest.approx(summary["accuracy"]["all_steps"]["model_mae"], abs=1e-5)
    assert all(r["bands"] == "guarded" and len(r["probabilities"]["p_up"]) == 12 for r in outcome.forecasts)
    # horizon timestamps follow XSHG: a forecast made at 11:30 continues at 13:05
    noon = [r for r in outcome.forecasts if r["as_of"].endswith("03:30:00Z")]
    assert noon and all(r["timestamps"][0].endswith("05:05:00Z") for r in noon)

    png = config.out.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert json.loads(config.out.with_suffix(".json").read_text()) == summary


def test_cli_defaults_match_the_demo_config() -> None:
    args = build_parser().parse_args(["demo"])
    defaults = DemoConfig()
    assert (args.bars, args.warmup, args.mode, args.speed, args.out, args.symbol, args.samples, args.calibrate) == (
        defaults.bars, defaults.warmup, defaults.mode, defaults.speed, defaults.out, defaults.symbol,
        defaults.sample_count, defaults.calibrate,
    )  # fmt: skip
    assert not args.no_retrain and defaults.retrain
    assert build_parser().parse_args(["demo", "--no-retrain"]).no_retrain


def test_demo_refuses_more_bars_than_the_file_holds() -> None:
    rows = sum(1 for _ in BARS_CSV.open()) - 1
    with pytest.raises(ConfigError, match="do not fit"):
        load_feed(DemoConfig(bars=rows, warmup=1))
    with pytest.raises(ConfigError, match="--speed"):
        load_feed(DemoConfig(speed=-1.0))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_retrains_halfway_and_the_daemon_hot_swaps(tmp_path: Path) -> None:
    config = DemoConfig(bars=60, warmup=200, sample_count=2, out=tmp_path / "demo.png", retrain_steps=10)
    echo = io.StringIO()
    outcome = run_demo(config, echo)

    retrain = outcome.summary["retrain"]
    assert retrain["bars_archived"] == 200 + 30 and retrain["steps"] == 10
    assert retrain["version"] is not None and retrain["version"].startswith("demo-ft-"), retrain
    versions = [r["model_version"] for r in outcome.forecasts]
    first = versions[0]
    assert first.startswith("demo-2")  # the bundled model, served from the temporary registry
    expected = [first] * 30 + [retrain["version"] if retrain["promoted"] else first] * 30
    assert versions == expected  # one forecast per bar; the new version from the bar after the act
    assert set(outcome.summary["accuracy_by_version"]) == set(versions)
    assert len({r["id"] for r in outcome.forecasts}) == 60
    assert "--- retrain on the 230 bars seen so far" in echo.getvalue()
