"""The demo's set-up: the bundled assets, :class:`DemoConfig`, the daemon's settings and the feed.

The replay itself is in :mod:`daemon.demo.replay`, the scores, figure and summary in
:mod:`daemon.demo.report`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from daemon.errors import ConfigError
from daemon.io.feeds import FeedBar, csv_bars
from daemon.settings import Settings, load_settings

ASSETS = Path(__file__).resolve().parents[1] / "assets"
BARS_CSV = ASSETS / "bars_5min_a_share.csv"
MODEL_DIR = ASSETS / "demo-model"
CSV_TZ = "Asia/Shanghai"  # the CSV's naive timestamps are local time there
MAX_CONTEXT = 128  # the demo model was trained on 128-bar windows
HORIZON = 12
REFRESH_EVERY_BARS = 32  # incremental mode: refreeze the statistics every 32 bars (as results/compare_modes)
CALIBRATION_MIN = 50  # realised forecasts before the bands are calibrated

Mode = Literal["exact", "incremental"]


@dataclass(frozen=True)
class DemoConfig:
    bars: int = 240
    warmup: int | None = None  # None: max_context bars
    mode: Mode = "incremental"
    speed: float = 0.0  # multiple of real time; 0 = as fast as possible
    out: Path = Path("results/demo.png")
    symbol: str = "DEMO"
    sample_count: int = 16
    calibrate: bool = True  # the guarded distribution (scored both ways either way)
    retrain: bool = True  # halfway: archive, fine-tune, gate, publish, hot-swap (daemon/demo/retrain.py)
    retrain_steps: int = 30  # predictor steps of that fine-tune

    @property
    def warmup_bars(self) -> int:
        return MAX_CONTEXT if self.warmup is None else self.warmup


def demo_settings(config: DemoConfig, registry: str | None = None) -> Settings:
    """The daemon's settings for the demo: KRONOS_* variables apply (device, threads, ...), the demo's
    own choices win (model, context, horizon, mode, no HTTP port, warnings only). With ``registry`` the
    daemon follows that registry's champion instead of the bundled folders."""
    folders = registry is None
    model: dict[str, Any] = {
        "tokenizer_dir": MODEL_DIR / "tokenizer" if folders else None,
        "predictor_dir": MODEL_DIR / "predictor" if folders else None,
        "registry": registry,
        "registry_hint": False,  # no Redis in the demo: it wakes the follower itself
        "registry_poll_s": 3600.0,
        "preset": None,
        "factory": None,
        "version": None,  # manifest.json's version
        "max_context": MAX_CONTEXT,
        "horizon": HORIZON,
        "sample_count": config.sample_count,
        "calendar_tz": CSV_TZ,
        "exchange_calendar": "XSHG",  # horizon timestamps skip the lunch break, nights and holidays
    }
    overrides: dict[str, Any] = {
        "model": model,
        "scoring": {"enabled": True, "calibrate": config.calibrate, "calibration_min": CALIBRATION_MIN},
        "mode": config.mode,
        "refresh_every_bars": REFRESH_EVERY_BARS,
        "http_port": None,
        "log_level": "WARNING",
    }
    settings = load_settings(**overrides)
    if settings.model.threads is None:  # small model on a shared machine: one thread unless told
        settings = load_settings(**{**overrides, "model": {**model, "threads": 1}})
    return settings


def load_feed(config: DemoConfig) -> tuple[list[FeedBar], list[FeedBar]]:
    """(warm-up bars, replayed bars): the last ``warmup + bars`` bars of the bundled file."""
    rows = list(csv_bars(BARS_CSV, config.symbol, CSV_TZ))
    if config.bars < 1 or config.warmup_bars < 0:
        raise ConfigError(
            f"--bars must be >= 1 and --warmup >= 0, got {config.bars} and {config.warmup_bars}"
        )
    if config.bars + config.warmup_bars > len(rows):
        raise ConfigError(
            f"the file holds {len(rows)} bars; --bars {config.bars} plus --warmup {config.warmup_bars} "
            "do not fit: lower them"
        )
    if config.speed < 0 or not math.isfinite(config.speed):
        raise ConfigError(f"--speed must be >= 0, got {config.speed}")
    if config.sample_count < 1:
        raise ConfigError(f"--samples must be >= 1, got {config.sample_count}")
    start = len(rows) - config.bars - config.warmup_bars
    return rows[start : len(rows) - config.bars], rows[len(rows) - config.bars :]
