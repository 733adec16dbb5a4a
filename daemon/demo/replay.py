"""``kronos-stream demo``: the whole daemon on the bundled real bars, with no external service.

The bars of ``daemon/assets/bars_5min_a_share.csv`` (five-minute bars of one Shanghai-listed stock;
naive timestamps are Asia/Shanghai local time, sent as UTC like ``kronos-stream replay --tz
Asia/Shanghai``) go through the daemon's own code path: :class:`~daemon.app.Daemon` with the
in-memory bus (:class:`~daemon.io.memory.MemoryBroker`) and state store in place of Kafka and Redis,
the real :class:`~daemon.pipeline.loop.ForecastLoop`, and kronos_core's ``StreamingForecaster`` built by
:func:`~daemon.model.build.build_forecaster` over the project's demo model
(``daemon/assets/demo-model``, trained by ``python -m trainer.demo_model`` through the trainer on
128-bar windows of the first 2,000 bars).

Sequence: ``warmup`` bars (default ``max_context``) are published first and their forecasts are
consumed without printing, so the replayed bars see a full context; then the last ``bars`` bars of
the file are published at ``speed`` and every forecast is printed as it arrives on the output topic.
At the end the forecasts are scored against the realised bars (by bar count: the k-th bar after the
forecast's bar) next to the persistence baseline (the last close), and a PNG and a JSON summary are
written.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TextIO
from zoneinfo import ZoneInfo

import numpy as np

from daemon.app import Daemon
from daemon.errors import ConfigError, DaemonError
from daemon.io.bus import Partition
from daemon.io.feeds import FeedBar, csv_bars, publish
from daemon.io.memory import MemoryBroker, MemoryInput, MemoryOutput
from daemon.io.messages import format_ts, quantile_key, to_ns
from daemon.logging import configure_logging
from daemon.scoring.calibration import build_calibrator
from daemon.scoring.online import (
    MODEL_BANDS_SUFFIX,
    MemoryScoreStore,
    OnlineScorer,
    PendingForecast,
    ScoreMetrics,
    report_dict,
)
from daemon.settings import Settings, load_settings
from daemon.state.memory import MemoryStateStore
from kronos_core.scoring import ScoreAccumulator

ASSETS = Path(__file__).resolve().parents[1] / "assets"
BARS_CSV = ASSETS / "bars_5min_a_share.csv"
MODEL_DIR = ASSETS / "demo-model"
CSV_TZ = "Asia/Shanghai"  # the CSV's naive timestamps are local time there
MAX_CONTEXT = 128  # the demo model was trained on 128-bar windows
HORIZON = 12
REFRESH_EVERY_BARS = 32  # incremental mode: refreeze the statistics every 32 bars (as results/compare_modes)
CALIBRATION_MIN = 50  # realised forecasts before the bands are calibrated
STALL_S = 120.0  # no forecast for this long: the demo gives up
HISTORY_BARS = 96  # bars of history drawn before the plotted forecast

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


@dataclass
class ReplayResult:
    forecasts: list[dict[str, Any]]  # the replayed bars' forecasts, in arrival order
    warmup_forecasts: int
    dead_letters: int  # bars the model failed on (none expected)
    model_load_s: float
    warmup_s: float
    replay_s: float
    latest_in_store: dict[str, Any] | None
    online: dict[str, ScoreAccumulator]  # the daemon's own scores of the replayed bars' forecasts
    device: str
    torch_threads: int
    retrain: dict[str, Any] | None = None  # what the retraining act did (None: --no-retrain)


# -- set-up ---------------------------------------------------------------------------------------


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


# -- the replay through the daemon ----------------------------------------------------------------


class _OutputReader:
    """Reads the output topic of the in-memory broker: each call returns the messages not seen yet."""

    def __init__(self, broker: MemoryBroker, topic: str, parse: bool = True) -> None:
        self._broker = broker
        self._topic = topic
        self._parse = parse  # False: count only (dead letters hold the input bytes, maybe not JSON)
        self._seen: dict[int, int] = {}

    def take(self) -> list[dict[str, Any]]:
        out = []
        for index, part in enumerate(self._broker.partitions(self._topic)):
            start = self._seen.get(index, 0)
            out += [json.loads(m.value) if self._parse else {} for m in part[start:] if m.value is not None]
            self._seen[index] = len(part)
        return out


async def _settled(broker: MemoryBroker, topic: str, group: str, serving: asyncio.Task[None]) -> None:
    """Wait until the daemon committed every input message: a forecast is published before its bar
    is stored, scored and committed, so the store is read only after that."""
    parts = [Partition(topic, i) for i in range(len(broker.partitions(topic)))]
    deadline = time.monotonic() + STALL_S
    while any(broker.committed(group, p) < len(broker.partitions(topic)[p.partition]) for p in parts):
        if serving.done():
            serving.result()
            raise DaemonError("the daemon stopped before it committed the replayed bars")
        if time.monotonic() > deadline:
            raise DaemonError(f"the daemon did not commit the replayed bars within {STALL_S:.0f} s")
        await asyncio.sleep(0.01)


async def _collect(
    reader: _OutputReader,
    dead: _OutputReader,
    broker: MemoryBroker,
    serving: asyncio.Task[None],
    expected: int,
    on_forecast: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Read forecasts off the output topic until ``expected`` bars are answered (a forecast, or a
    dead letter when the model failed on a bar), calling ``on_forecast`` on each forecast as it arrives.
    Returns the forecasts and the number of dead letters."""
    got: list[dict[str, Any]] = []
    dead_letters = 0
    last_progress = time.monotonic()
    while len(got) + dead_letters < expected:
        new = reader.take()
        failed = dead.take()
        for record in new:
            got.append(record)
            if on_forecast is not None:
                on_forecast(record)
        dead_letters += len(failed)
        if new or failed:
            last_progress = time.monotonic()
            continue
        if serving.done():
            serving.result()  # a fatal error in the loop surfaces here
            raise DaemonError(f"the daemon stopped after {len(got)} of {expected} forecasts")
        if time.monotonic() - last_progress > STALL_S:
            raise DaemonError(f"no forecast for {STALL_S:.0f} s ({len(got)} of {expected}); giving up")
        await broker.wait(0.2)
    return got, dead_letters


async def replay(
    config: DemoConfig, settings: Settings, warm: Sequence[FeedBar], bars: Sequence[FeedBar], echo: TextIO
) -> ReplayResult:
    """Run the daemon on the in-memory bus and store; publish, collect and print the forecasts."""
    s = settings
    work_dir = Path(tempfile.mkdtemp(prefix="kronos-demo-")) if config.retrain else None
    if work_dir is not None:
        from daemon.demo.retrain import publish_demo_model

        registry = str(work_dir / "registry")
        publish_demo_model(registry, MODEL_DIR)
        s = demo_settings(config, registry)
    broker = MemoryBroker()
    store = MemoryStateStore(s.redis.key_prefix, s.model.max_context)
    daemon = Daemon(
        s,
        bus_in=MemoryInput(broker, s.kafka.input_topic, s.kafka.group_id),
        bus_out=MemoryOutput(broker),
        store=store,
    )
    daemon.scorer = HeldOutScorer(
        to_ns(bars[0][1]) if bars else 0,
        MemoryScoreStore(),
        ScoreMetrics(daemon.metrics.registry),
        s.model.horizon,
        build_calibrator(s),
    )
    producer = MemoryOutput(broker)  # what `kronos-stream replay` does with a Kafka producer
    reader = _OutputReader(broker, s.kafka.output_topic)
    dead = _OutputReader(broker, s.kafka.dead_letter_topic, parse=False)
    closes = {format_ts(to_ns(ts)): values[3] for _, ts, values in (*warm, *bars)}
    zone = ZoneInfo(CSV_TZ)

    def show(record: dict[str, Any]) -> None:
        print(forecast_line(record, closes.get(record["as_of"]), zone), file=echo, flush=True)

    began = time.monotonic()
    tasks: list[asyncio.Task[Any]] = []
    try:
        await daemon.start()  # builds the forecaster from the settings (in a worker thread)
        loaded = time.monotonic()
        serving = asyncio.create_task(daemon.serve(), name="kronos-demo-daemon")
        tasks.append(serving)
        await publish(producer, s.kafka.input_topic, iter(warm))
        warm_records, warm_dead = await _collect(reader, dead, broker, serving, len(warm))
        warmed = time.monotonic()
        halves = [bars[: len(bars) // 2], bars[len(bars) // 2 :]] if work_dir is not None else [bars]
        records, dead_letters, retrained = [], 0, None
        for half in halves:
            if retrained is None and work_dir is not None and half is halves[1]:
                retrained = await _retrain_act(
                    daemon, [*warm, *halves[0]], work_dir, config.retrain_steps, echo
                )
            feeding = asyncio.create_task(
                publish(producer, s.kafka.input_topic, iter(half), speed=config.speed)
            )
            tasks.append(feeding)
            got, failed = await _collect(reader, dead, broker, serving, len(half), show)
            records += got
            dead_letters += failed
            await feeding
        done = time.monotonic()
        await _settled(broker, s.kafka.input_topic, s.kafka.group_id, serving)
        latest = await store.latest_forecast(config.symbol)
        online = await daemon.scorer.store.read(None, 24 * 366, time.time())
    finally:
        await daemon.close()
        if work_dir is not None:
            shutil.rmtree(work_dir, ignore_errors=True)
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    import torch  # loaded by the forecaster already

    forecaster = daemon.forecaster
    engine = getattr(forecaster, "engine", None)
    return ReplayResult(
        forecasts=records,
        warmup_forecasts=len(warm_records),
        dead_letters=warm_dead + dead_letters,
        model_load_s=loaded - began,
        warmup_s=warmed - loaded,
        replay_s=done - warmed,
        latest_in_store=latest,
        online=online,
        device=str(getattr(engine, "device", "cpu")),
        torch_threads=torch.get_num_threads(),
        retrain=retrained,
    )


class HeldOutScorer(OnlineScorer):
    """The daemon's online scorer, scoring only forecasts made on the replayed (held-out) bars; the
    calibration learns from the warm-up forecasts too (they are realised before the replay)."""

    def __init__(self, first_ns: int, *args: Any) -> None:
        super().__init__(*args)
        self.first_ns = first_ns

    def _score_all(
        self, sums: dict[str, ScoreAccumulator], done: Sequence[tuple[PendingForecast, np.ndarray]]
    ) -> None:
        super()._score_all(sums, [(p, realised) for p, realised in done if p.as_of >= self.first_ns])
        self.learn([(p, realised) for p, realised in done if p.as_of < self.first_ns])


async def _retrain_act(
    daemon: Daemon, seen: Sequence[FeedBar], work_dir: Path, steps: int, echo: TextIO
) -> dict[str, Any]:
    """Archive, fine-tune, gate, publish; then wake the daemon's follower and wait for the new version."""
    from daemon.demo.retrain import RetrainConfig, describe, retrain

    assert daemon.models is not None and daemon.models.forecaster is not None
    print(f"--- halfway: archiving {len(seen)} bars and fine-tuning the champion ...", file=echo, flush=True)
    registry = str(daemon.settings.model.registry)
    outcome = await asyncio.to_thread(retrain, seen, work_dir, registry, RetrainConfig(steps=steps))
    print(describe(outcome), file=echo, flush=True)
    if outcome["promoted"]:
        began = time.monotonic()
        daemon.models.wake()  # the registry's hint, in process
        while daemon.models.forecaster.target_version != outcome["version"]:
            if time.monotonic() - began > STALL_S:
                raise DaemonError(f"the daemon did not load {outcome['version']} within {STALL_S:.0f} s")
            await asyncio.sleep(0.05)
        outcome["swap_ready_s"] = round(time.monotonic() - began, 2)
        print(
            f"--- the daemon loaded {outcome['version']}; it serves from the next bar on",
            file=echo,
            flush=True,
        )
    return outcome


def forecast_line(record: dict[str, Any], last_close: float | None, zone: ZoneInfo) -> str:
    """One compact line per forecast: symbol, as-of (local time), next-bar close mean [p10, p90],
    horizon-end close mean, model time."""
    as_of = datetime.fromisoformat(record["as_of"]).astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")
    mean = record["mean"]["close"]
    lo, hi = _band(record)
    last = "" if last_close is None else f"close {last_close:.2f}  "
    return (
        f"{record['symbol']}  {as_of}  {last}next {mean[0]:.3f} [{lo[0]:.3f}-{hi[0]:.3f}]  "
        f"+{record['horizon']} bars {mean[-1]:.3f}  model {record['latency_ms']['model']:.0f} ms"
    )


def _band(record: dict[str, Any]) -> tuple[list[float], list[float]]:
    """The outermost quantile band of the close (p10 and p90 with the default levels)."""
    levels, bands = record["quantile_levels"], record["quantiles"]
    return bands[quantile_key(levels[0])]["close"], bands[quantile_key(levels[-1])]["close"]


# -- scoring --------------------------------------------------------------------------------------


def _mae_block(pred: list[float], base: list[float], real: list[float], inside: list[bool]) -> dict[str, Any]:
    if not real:
        return {"n": 0}
    p, b, r = np.asarray(pred), np.asarray(base), np.asarray(real)
    model_mae = float(np.mean(np.abs(p - r)))
    base_mae = float(np.mean(np.abs(b - r)))
    return {
        "n": len(real),
        "model_mae": round(model_mae, 5),
        "persistence_mae": round(base_mae, 5),
        "skill_vs_persistence": round(1.0 - model_mae / base_mae, 4) if base_mae > 0 else None,
        "band_coverage": round(float(np.mean(inside)), 4),
    }


def score(forecasts: Sequence[dict[str, Any]], bars: Sequence[FeedBar]) -> dict[str, Any]:
    """Close MAE of the forecast mean at horizon step 1, at the last step and over all steps, against
    the realised bars (the k-th bar after the forecast's bar) and against persistence (the last close);
    ``band_coverage`` is the share of realised closes inside the outermost quantile band (p10-p90)."""
    index = {format_ts(to_ns(ts)): i for i, (_, ts, _) in enumerate(bars)}
    closes = [values[3] for _, _, values in bars]
    steps: dict[str, tuple[list[float], list[float], list[float], list[bool]]] = {
        name: ([], [], [], []) for name in ("horizon_1", "horizon_end", "all_steps")
    }
    for record in forecasts:
        i = index[record["as_of"]]
        horizon = record["horizon"]
        mean = record["mean"]["close"]
        lo, hi = _band(record)
        for k in range(horizon):
            if i + 1 + k >= len(closes):
                break
            real = closes[i + 1 + k]
            names = ["all_steps"] if i + horizon < len(closes) else []
            names += ["horizon_1"] if k == 0 else []
            names += ["horizon_end"] if k == horizon - 1 else []
            for name in names:
                pred, base, realised, inside = steps[name]
                pred.append(mean[k])
                base.append(closes[i])
                realised.append(real)
                inside.append(lo[k] <= real <= hi[k])
    return {name: _mae_block(*lists) for name, lists in steps.items()}


# -- the figure -----------------------------------------------------------------------------------


def _tick_labels(axis: Any, positions: Sequence[int], stamps: Sequence[datetime], count: int = 6) -> None:
    if not positions:
        return
    step = max(1, len(positions) // count)
    chosen = list(range(0, len(positions), step))
    axis.set_xticks([positions[j] for j in chosen])
    axis.set_xticklabels([stamps[j].strftime("%m-%d %H:%M") for j in chosen], fontsize=8)


def plot(
    path: Path,
    forecasts: Sequence[dict[str, Any]],
    history: Sequence[FeedBar],
    bars: Sequence[FeedBar],
    title: str,
) -> dict[str, Any] | None:
    """Two panels: the last forecast whose horizon is fully realised (history, realised continuation,
    mean path, p10-p90 band), and the horizon-1 forecast against the realised close over the replay.
    Returns the plotted forecast."""
    from matplotlib.figure import Figure

    zone = ZoneInfo(CSV_TZ)
    every = [*history, *bars]
    stamps = [ts.astimezone(zone) for _, ts, _ in every]
    closes = [values[3] for _, _, values in every]
    index = {format_ts(to_ns(ts)): i for i, (_, ts, _) in enumerate(every)}
    realised_ok = [r for r in forecasts if index[r["as_of"]] + r["horizon"] < len(every)]
    chosen = realised_ok[-1] if realised_ok else None

    fig = Figure(figsize=(11, 8), layout="constrained")
    top, bottom = fig.subplots(2, 1)
    if chosen is not None:
        i, h = index[chosen["as_of"]], chosen["horizon"]
        lo, hi = _band(chosen)
        first = max(0, i - HISTORY_BARS)
        xs = list(range(first, i + 1))
        future = list(range(i + 1, i + 1 + h))
        top.plot(xs, closes[first : i + 1], color="black", lw=1.2, label="close (history)")
        top.plot([i, *future], closes[i : i + 1 + h], color="tab:green", lw=1.5, label="realised")
        top.plot([i, *future], [closes[i], *chosen["mean"]["close"]], color="tab:blue", lw=1.5,
                 label=f"forecast mean ({chosen['sample_count']} paths)")  # fmt: skip
        top.fill_between(future, lo, hi, color="tab:blue", alpha=0.2, label="p10-p90")
        top.axvline(i, color="grey", lw=0.8, ls="--")
        when = stamps[i].strftime("%Y-%m-%d %H:%M %Z")
        top.set_title(f"{title}: the last forecast with a fully realised horizon (as of {when})", fontsize=10)
        _tick_labels(top, list(range(first, i + 1 + h)), stamps[first : i + 1 + h])
        top.legend(fontsize=8, loc="best")
    top.set_ylabel("close")
    top.set_xlabel("five-minute bars (trading time; breaks and nights closed up)")

    pos, real, pred, lo1, hi1 = [], [], [], [], []
    for record in forecasts:
        j = index[record["as_of"]] + 1
        if j < len(every):
            lo, hi = _band(record)
            pos.append(j)
            real.append(closes[j])
            pred.append(record["mean"]["close"][0])
            lo1.append(lo[0])
            hi1.append(hi[0])
    bottom.plot(pos, real, color="black", lw=1.0, label="realised close")
    bottom.plot(pos, pred, color="tab:blue", lw=1.0, label="forecast for the next bar (mean)")
    bottom.fill_between(pos, lo1, hi1, color="tab:blue", alpha=0.2, label="p10-p90")
    bottom.set_title("Next-bar forecasts over the replay", fontsize=10)
    bottom.set_ylabel("close")
    bottom.set_xlabel("the bar forecast (trading time)")
    _tick_labels(bottom, pos, [stamps[j] for j in pos])
    bottom.legend(fontsize=8, loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return chosen


# -- the command ----------------------------------------------------------------------------------


def _command(config: DemoConfig) -> str:
    parts = ["kronos-stream demo", f"--bars {config.bars}", f"--mode {config.mode}"]
    if config.warmup is not None:
        parts.append(f"--warmup {config.warmup}")
    parts += [f"--speed {config.speed:g}", f"--samples {config.sample_count}", f"--symbol {config.symbol}"]
    if not config.calibrate:
        parts.append("--no-calibration")
    parts += [] if config.retrain else ["--no-retrain"]
    return " ".join([*parts, f"--out {config.out}"])


def _summary(
    config: DemoConfig, settings: Settings, result: ReplayResult, bars: Sequence[FeedBar], accuracy: dict[str, Any],
    plotted: dict[str, Any] | None, json_path: Path, wall_s: float,
) -> dict[str, Any]:  # fmt: skip
    forecasts = result.forecasts
    model_ms = np.asarray([r["latency_ms"]["model"] for r in forecasts] or [0.0])
    ids = [r["id"] for r in forecasts]
    manifest = json.loads((MODEL_DIR / "manifest.json").read_text())
    train_last = datetime.fromisoformat(manifest["data"]["train"]["last"]).replace(tzinfo=ZoneInfo(CSV_TZ))
    in_training = sum(1 for _, ts, _ in bars if ts <= train_last)
    zone = ZoneInfo(CSV_TZ)
    m = settings.model
    last = forecasts[-1] if forecasts else None
    return {
        "command": _command(config),
        "symbol": config.symbol,
        "model_version": last["model_version"] if last else None,
        "mode": settings.mode,
        "device": result.device,
        "torch_threads": result.torch_threads,
        "settings": {
            "max_context": m.max_context,
            "horizon": m.horizon,
            "sample_count": m.sample_count,
            "temperature": m.temperature,
            "top_p": m.top_p,
            "top_k": m.top_k,
            "quantile_levels": list(m.quantile_levels),
            "refresh_every_bars": settings.refresh_every_bars,
            "drift_sigma": settings.drift_sigma,
            "calendar_tz": m.calendar_tz,
            "exchange_calendar": m.exchange_calendar,
        },
        "data": {
            "csv": "daemon/assets/bars_5min_a_share.csv",
            "warmup_bars": config.warmup_bars,
            "replayed_bars": len(bars),
            "first_replayed_local": bars[0][1].astimezone(zone).isoformat() if bars else None,
            "last_replayed_local": bars[-1][1].astimezone(zone).isoformat() if bars else None,
            "replayed_bars_in_model_training_rows": in_training,
        },
        "forecasts": {
            "replayed": len(forecasts),
            "warmup": result.warmup_forecasts,
            "dead_letters": result.dead_letters,
            "unique_ids": len(set(ids)) == len(ids),
            "latest_in_store_is_last_published": bool(
                last and result.latest_in_store and result.latest_in_store["id"] == last["id"]
            ),
        },
        "timing": {
            "wall_s": round(wall_s, 2),
            "model_load_s": round(result.model_load_s, 2),
            "warmup_s": round(result.warmup_s, 2),
            "replay_s": round(result.replay_s, 2),
            "bars_per_s": round(len(forecasts) / result.replay_s, 1) if result.replay_s > 0 else None,
            "model_ms": {
                "mean": round(float(model_ms.mean()), 2),
                "p50": round(float(np.percentile(model_ms, 50)), 2),
                "p90": round(float(np.percentile(model_ms, 90)), 2),
            },
            "speed": config.speed,
        },
        "accuracy": {
            "note": "close MAE in price units of the forecast mean vs the realised k-th next bar; "
            "persistence = the last close; band_coverage = share of realised closes inside p10-p90",
            **accuracy,
        },
        "accuracy_by_version": {
            version: score([r for r in forecasts if r["model_version"] == version], bars)
            for version in dict.fromkeys(r["model_version"] for r in forecasts)
        },
        "retrain": result.retrain,
        "online_scores": _online(result.online, settings),
        "plot": {
            "png": str(config.out),
            "json": str(json_path),
            "as_of": plotted["as_of"] if plotted else None,
        },
    }


def _merged(accs: Sequence[ScoreAccumulator]) -> ScoreAccumulator | None:
    merged: ScoreAccumulator | None = None
    for acc in accs:
        merged = ScoreAccumulator.from_dict(acc.to_dict()) if merged is None else merged.merge(acc)
    return merged


def _online(sums: dict[str, ScoreAccumulator], settings: Settings) -> dict[str, Any]:
    """All model versions together (a retrain swaps the model halfway), and each version alone."""
    versions = [v for v in sums if not v.endswith(MODEL_BANDS_SUFFIX)]
    published = _merged([sums[v] for v in versions])
    model = _merged([sums.get(v + MODEL_BANDS_SUFFIX, sums[v]) for v in versions])
    return {
        "note": "the daemon's online scores (daemon/scoring/online.py) of the forecasts made on the replayed "
        "bars, all steps, every model version together; model_bands: the bands the model made; "
        "published_bands: as published (when calibrated is true: the calibrated distribution guarded by the "
        "rolling-volatility walk, learning per symbol from every earlier realised forecast, warm-up and "
        "model versions included, daemon/scoring/calibration.py)",
        "calibrated": settings.scoring.calibrate,
        "calibration_min": settings.scoring.calibration_min,
        "model_bands": report_dict(model) if model is not None else None,
        "published_bands": report_dict(published) if published is not None else None,
        "by_version": {v: {"published_bands": report_dict(sums[v])} for v in versions},
    }


def _online_lines(online: dict[str, Any]) -> list[str]:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:+.1%}"

    lines = [
        "  online scores (the daemon's scorer; forecasts of the replayed bars, all steps):",
        "    bands                  close MAE  persistence  skill    CRPS      CRPS skill  p10-p90 coverage  n",
    ]
    rows = [("model", online["model_bands"])]
    if online["calibrated"]:
        rows.append(("published (guarded)", online["published_bands"]))
    for label, rep in rows:
        if not rep or rep["mae"] is None:
            lines.append(f"    {label:<22} (nothing realised yet)")
            continue
        lines.append(
            f"    {label:<22} {rep['mae']:<10.4f} {rep['persistence_mae']:<12.4f} {pct(rep['skill_mae']):<8} "
            f"{rep['crps']:<9.4f} {pct(rep['skill_crps']):<11} {rep['coverage']:<17.0%} {rep['count']}"
        )
    return lines


def print_summary(summary: dict[str, Any], echo: TextIO) -> None:
    t, f, a = summary["timing"], summary["forecasts"], summary["accuracy"]
    lines = [
        "",
        f"{f['replayed']} forecasts for {summary['data']['replayed_bars']} bars of {summary['symbol']} "
        f"(after {f['warmup']} warm-up bars), model {summary['model_version']}, {summary['mode']} mode, "
        f"{summary['settings']['sample_count']} paths, {summary['device']}, {summary['torch_threads']} thread(s)",
        f"  throughput {t['bars_per_s']} bars/s over {t['replay_s']} s (speed {t['speed']:g}); "
        f"model {t['model_ms']['mean']} ms mean, {t['model_ms']['p90']} ms p90; wall {t['wall_s']} s "
        f"(model load {t['model_load_s']} s, warm-up {t['warmup_s']} s)",
        f"  ids unique: {f['unique_ids']}; latest forecast in the state store = last published: "
        f"{f['latest_in_store_is_last_published']}; dead letters: {f['dead_letters']}",
        "  close MAE vs realised bars     model     persistence   skill    p10-p90 coverage     n",
    ]
    for name, label in (("horizon_1", "next bar"), ("horizon_end", f"+{summary['settings']['horizon']} bars"),
                        ("all_steps", "all steps")):  # fmt: skip
        b = a[name]
        if b["n"] == 0:
            lines.append(f"    {label:<28} (nothing realised yet)")
            continue
        skill = "n/a" if b["skill_vs_persistence"] is None else f"{b['skill_vs_persistence']:+.1%}"
        lines.append(
            f"    {label:<28} {b['model_mae']:<9.4f} {b['persistence_mae']:<13.4f} {skill:<8} "
            f"{b['band_coverage']:<20.0%} {b['n']}"
        )
    by_version = summary.get("accuracy_by_version") or {}
    if len(by_version) > 1:
        lines.append(
            "  by model version (each on the bars it forecast)   next bar: model / persistence   all steps: model / persistence"
        )
        for version, v in by_version.items():
            h1, al = v["horizon_1"], v["all_steps"]
            lines.append(
                f"    {version:<44} {_mae(h1, 'model_mae')} / {_mae(h1, 'persistence_mae')} (n {h1['n']})"
                f"   {_mae(al, 'model_mae')} / {_mae(al, 'persistence_mae')} (n {al['n']})"
            )
    lines += _online_lines(summary["online_scores"])
    verdict = a["horizon_1"].get("skill_vs_persistence")
    if verdict is not None and verdict < 0:
        lines.append("  (the demo model is tiny and briefly trained: persistence beats it here)")
    lines.append(f"  figure {summary['plot']['png']}, summary {summary['plot']['json']}")
    print("\n".join(lines), file=echo, flush=True)


def _mae(block: dict[str, Any], key: str) -> str:
    return "n/a" if not block["n"] else f"{block[key]:.4f}"


@dataclass(frozen=True)
class DemoOutcome:
    summary: dict[str, Any]  # also written as JSON beside the PNG
    forecasts: list[dict[str, Any]]  # the replayed bars' forecast messages, as published


def run_demo(config: DemoConfig, echo: TextIO | None = None) -> DemoOutcome:
    """The demo: replay, print each forecast, score, plot, summarise."""
    echo = echo or sys.stdout
    began = time.monotonic()
    settings = demo_settings(config)
    warm, bars = load_feed(config)
    print(
        f"kronos-stream demo: {len(warm)} warm-up bars, then {len(bars)} bars of {config.symbol} through the "
        f"daemon (in-memory bus and state store, {settings.mode} mode); loading the model ...",
        file=echo,
        flush=True,
    )
    result = asyncio.run(replay(config, settings, warm, bars, echo))
    accuracy = score(result.forecasts, bars)
    title = f"{config.symbol}, model {result.forecasts[-1]['model_version']}, {settings.mode}"
    plotted = plot(config.out, result.forecasts, warm, bars, title)
    json_path = config.out.with_suffix(".json")
    summary = _summary(config, settings, result, bars, accuracy, plotted, json_path, time.monotonic() - began)
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary, echo)
    return DemoOutcome(summary, result.forecasts)


def main(config: DemoConfig) -> int:
    """``kronos-stream demo``: warnings-only daemon logs on stderr, forecasts and summary on stdout."""
    configure_logging("WARNING", demo_settings(config).log_format)
    run_demo(config)
    return 0
