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

This module runs the replay and the command; the set-up (assets, :class:`DemoConfig`, settings, feed)
is in :mod:`daemon.demo.config`, the scores, figure and summary in :mod:`daemon.demo.report`, the
retraining act in :mod:`daemon.demo.retrain`.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

import numpy as np

from daemon.app import Daemon
from daemon.demo.config import CSV_TZ, MODEL_DIR, DemoConfig, demo_settings, load_feed
from daemon.demo.report import forecast_line, plot, print_summary, score, summarise
from daemon.errors import DaemonError
from daemon.io.bus import Partition
from daemon.io.feeds import FeedBar, publish
from daemon.io.memory import MemoryBroker, MemoryInput, MemoryOutput
from daemon.io.messages import format_ts, to_ns
from daemon.logging import configure_logging
from daemon.scoring.calibration import build_calibrator
from daemon.scoring.metrics import ScoreMetrics
from daemon.scoring.pending import PendingForecast
from daemon.scoring.scorer import OnlineScorer
from daemon.scoring.store import MemoryScoreStore
from daemon.settings import Settings
from daemon.state.memory import MemoryStateStore
from kronos_core.scoring import ScoreAccumulator

STALL_S = 120.0  # no forecast for this long: the demo gives up


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


# -- the command ----------------------------------------------------------------------------------


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
    summary = summarise(
        config, settings, result, bars, accuracy, plotted, json_path, time.monotonic() - began
    )
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary, echo)
    return DemoOutcome(summary, result.forecasts)


def main(config: DemoConfig) -> int:
    """``kronos-stream demo``: warnings-only daemon logs on stderr, forecasts and summary on stdout."""
    configure_logging("WARNING", demo_settings(config).log_format)
    run_demo(config)
    return 0
