"""Load benchmark of the daemon through the real Kafka broker and Redis server (issue #5).

For each mode (``exact``, ``incremental``) the script starts the daemon as a subprocess
(``python -m daemon run``, configured by ``KRONOS_*`` variables, its log in ``results/tmp/``), on
fresh topics (input and output with ``--partitions`` partitions, a dead-letter topic), its own
consumer group and its own Redis key prefix, and drives it from this process:

1. **warm-up** (not measured for latency): ``--warm-bars`` bars per symbol (default: max_context)
   published as fast as possible, then wait until every one has its forecast, so each symbol's
   window is full. Its drain rate is reported too (contexts grow from 1 bar to full).
2. **measured phase**: ``--duration`` seconds at ``--rate`` bars/s in total over ``--symbols``
   symbols (round-robin, a fixed schedule so a late send catches up). Per bar, the wall clock just
   before the send is kept; a collector in this process reads the output topic and notes each
   forecast's arrival. Reported: forecasts arrived per second during the phase (sustained rate),
   end-to-end latency percentiles (send until the forecast is read from the output topic; bars whose
   forecast comes after the phase get ``--grace`` seconds more, the rest are counted as missing), the
   daemon's own ``latency_ms`` fields from the forecasts (queue, model, end_to_end), and the group's
   lag on the input topic (end offsets minus committed offsets) when the phase ends.
3. **max throughput**: a backlog of about ``--drain-seconds`` worth of bars (sized from the warm-up
   rate, whole rounds of all symbols) published as fast as possible; drain rate = backlog / (time
   from the first send to the last forecast read).

Instead of these phases, ``--burst N,N,...`` runs bursts (after a warm-up of ``max(N)`` symbols, the
first N symbols each send one bar at the same instant: time to the last forecast, against one batched
engine call over the same windows) and ``--steady [N]`` a steady state (N symbols, default 1,000, one
bar each per ``--interval``, every bar landing at a random moment within ``--spread`` seconds of the
close; after ``--steady-warmup`` intervals, ``--intervals`` are measured: latency p50/p90/p99 from each
bar's send to its forecast read, the daemon's mean model batch, forecasts/s, lag at the end, and
whether every close's forecasts were out before the next). In incremental mode the daemon's model is
wrapped by scripts/bench_probe.py, which counts how each series was served (warm session, rebuilt,
refreshed) and the session pool's evictions; every symbol may keep a warm session
(``--max-sessions``). ``--model stub`` runs the deterministic stub forecaster of tests/daemon instead
of a model (~0 model time), so a burst measures the daemon's own overhead.

Then the daemon gets SIGTERM, and its topics and Redis keys are deleted (also after a failure).
The bars come from :func:`daemon.io.feeds.synthetic_bars` (same seed for both modes, so both see the
same bars). Every wait is bounded; only loopback addresses are used (``KAFKA_BOOTSTRAP`` and
``REDIS_URL`` from ``eval "$(scripts/services env)"``).

Output: a table on stdout, ``--out`` (JSON, default ``results/bench_load.json``,
``results/bench_burst.json`` or ``results/bench_steady.json``) and the same path with ``.md`` (the table
and the machine facts).

Run: ``.venv/bin/python scripts/bench_load.py`` (defaults: 20 symbols, 20 bars/s, 30 s, both modes,
the demo model, 4 sample paths, 1 torch thread; a few minutes in all).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from daemon.io.feeds import FeedBar, synthetic_bars
from daemon.io.messages import bar_to_json, format_ts, to_ns

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "demo": REPO / "daemon" / "assets" / "demo-model",
    "tiny": REPO / "tests" / "fixtures" / "kronos-tiny-a",
    "stub": REPO / "tests" / "daemon",  # the deterministic stub forecaster: ~0 model time
}
STUB_FACTORY = "tests.support.stub_forecaster:build"  # tests/daemon/stub_forecaster.py, as scripts/chaos.py loads it
PROBE_FACTORY = "bench_probe:build"  # scripts/bench_probe.py: counts how incremental calls served each series
BAR_START = datetime(2024, 1, 2, tzinfo=UTC)  # synthetic clock start; the same bars in every mode
BAR_INTERVAL_S = 60.0
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
Key = tuple[str, str]  # (symbol, bar ts as the forecast's "as_of")


# -- output topic reader ------------------------------------------------------------------------


@dataclass
class Arrival:
    at: float  # wall clock when this process read the forecast
    latency_ms: dict[str, float]


class Collector:
    """Reads the output topic from the beginning and keeps each forecast's first arrival."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.first: dict[Key, Arrival] = {}
        self.duplicates = 0
        self.times: list[float] = []  # arrival time of every first arrival, in order

    async def start(self, partitions: int) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=20,
            # a 1,000-forecast burst is ~6.6 MB: read it in one fetch, not 1 MB per partition at a time
            max_partition_fetch_bytes=16 << 20,
            fetch_max_bytes=64 << 20,
        )
        await self._consumer.start()
        parts = [TopicPartition(self._topic, p) for p in range(partitions)]
        self._consumer.assign(parts)
        await self._consumer.seek_to_beginning(*parts)
        self._task = asyncio.create_task(self._run(), name="bench-collector")

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=50, max_records=1000)
            now = time.time()
            for records in batch.values():
                for r in records:
                    msg = orjson.loads(r.value)  # ~10x faster than json on a 6.6 KB forecast
                    key = (msg["symbol"], msg["as_of"])
                    if key in self.first:
                        self.duplicates += 1
                        continue
                    self.first[key] = Arrival(now, msg.get("latency_ms") or {})
                    self.times.append(now)

    def count_between(self, t0: float, t1: float) -> int:
        return sum(1 for t in self.times if t0 <= t < t1)

    async def wait_for(self, keys: list[Key], timeout_s: float) -> bool:
        """True once every key has arrived; False after ``timeout_s`` (or if the reader died)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._task is not None and self._task.done():
                self._task.result()  # re-raise the reader's failure
                return False
            if all(k in self.first for k in keys):
                return True
            await asyncio.sleep(0.05)
        return all(k in self.first for k in keys)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


# -- publishing ---------------------------------------------------------------------------------


def key_of(symbol: str, ts: datetime) -> Key:
    return symbol, format_ts(to_ns(ts))


def encode_bars(bars: list[FeedBar]) -> list[tuple[bytes, bytes]]:
    """Each bar's Kafka key and value (the JSON the daemon reads)."""
    return [(s.encode(), bar_to_json(s, ts, v)) for s, ts, v in bars]


async def publish_encoded(producer: AIOKafkaProducer, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """Send already-encoded records as fast as the producer takes them; returns once every send is
    acknowledged."""
    acks = [await producer.send(topic, key=k, value=v) for k, v in records]
    await asyncio.gather(*acks)


async def publish_fast(producer: AIOKafkaProducer, topic: str, bars: list[FeedBar]) -> list[Key]:
    """Send all, as fast as the producer takes them; returns once every send is acknowledged."""
    await publish_encoded(producer, topic, encode_bars(bars))
    return [key_of(s, ts) for s, ts, _ in bars]


async def publish_paced(
    producer: AIOKafkaProducer, topic: str, bars: Iterator[FeedBar], rate: float, duration_s: float
) -> dict[Key, float]:
    """Bar n is sent at start + n / rate (late sends catch up); returns each bar's send time."""
    sent: dict[Key, float] = {}
    acks = []
    began = time.monotonic()
    for n in itertools.count():
        due = began + n / rate
        if due - began >= duration_s:
            break
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        symbol, ts, values = next(bars)
        sent[key_of(symbol, ts)] = time.time()
        acks.append(await producer.send(topic, key=symbol.encode(), value=bar_to_json(symbol, ts, values)))
        if len(acks) >= 1000:
            await asyncio.gather(*acks)
            acks = []
    await asyncio.gather(*acks)
    rest = began + duration_s - time.monotonic()
    if rest > 0:
        await asyncio.sleep(rest)  # the phase lasts duration_s, whatever the last send took
    return sent


# -- the daemon subprocess ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (a loopback URL we built)
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


@dataclass
class Run:
    """The names of one mode's run (all unique to it)."""

    mode: str
    uid: str
    partitions: int
    input: str = field(init=False)
    output: str = field(init=False)
    dead: str = field(init=False)
    group: str = field(init=False)
    prefix: str = field(init=False)

    def __post_init__(self) -> None:
        base = f"bench-load-{self.uid}-{self.mode}"
        self.input, self.output, self.dead = f"{base}-in", f"{base}-out", f"{base}-dlq"
        self.group = base
        self.prefix = f"bench-load:{self.uid}:{self.mode}"

    @property
    def probe_file(self) -> Path:
        return REPO / "results" / "tmp" / f"probe-{self.uid}-{self.mode}.json"


def daemon_env(
    args: argparse.Namespace, run: Run, bootstrap: str, redis_url: str, port: int
) -> dict[str, str]:
    model_dir = MODELS[args.model]
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("KRONOS_")}
    env.update(
        {
            "KRONOS_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "KRONOS_KAFKA__INPUT_TOPIC": run.input,
            "KRONOS_KAFKA__OUTPUT_TOPIC": run.output,
            "KRONOS_KAFKA__DEAD_LETTER_TOPIC": run.dead,
            "KRONOS_KAFKA__GROUP_ID": run.group,
            "KRONOS_KAFKA__CLIENT_ID": run.group,
            "KRONOS_REDIS__URL": redis_url,
            "KRONOS_REDIS__KEY_PREFIX": run.prefix,
            "KRONOS_MODEL__DEVICE": "cpu",
            "KRONOS_MODEL__THREADS": str(args.threads),
            "KRONOS_MODEL__MAX_CONTEXT": str(args.max_context),
            "KRONOS_MODEL__HORIZON": str(args.horizon),
            "KRONOS_MODEL__SAMPLE_COUNT": str(args.sample_count),
            "KRONOS_MODE": run.mode,
            "KRONOS_DEFAULT_BAR_INTERVAL_S": str(BAR_INTERVAL_S),
            "KRONOS_HTTP_HOST": "127.0.0.1",
            "KRONOS_HTTP_PORT": str(port),
            "KRONOS_GRACEFUL_SHUTDOWN_S": "10",
            "KRONOS_LOG_LEVEL": "INFO",
            "KRONOS_LOG_FORMAT": "json",
        }
    )
    paths = [str(REPO)]
    if args.model == "stub":
        paths.insert(0, str(model_dir))
        env.update({"KRONOS_MODEL__FACTORY": STUB_FACTORY, "STUB_FORECASTER_DELAY_MS": "0"})
    elif args.registry is not None:  # the registry's champion (and its challengers), not fixed folders
        env["KRONOS_MODEL__REGISTRY"] = str(args.registry)
        env["KRONOS_MODEL__CACHE_DIR"] = str(REPO / "results" / "tmp" / f"models-{run.uid}-{run.mode}")
    else:
        env["KRONOS_MODEL__TOKENIZER_DIR"] = str(model_dir / "tokenizer")
        env["KRONOS_MODEL__PREDICTOR_DIR"] = str(model_dir / "predictor")
    if run.mode == "incremental":  # count warm sessions, rebuilds and refreshes (scripts/bench_probe.py)
        paths.insert(0, str(REPO / "scripts"))
        env.update({"KRONOS_MODEL__FACTORY": PROBE_FACTORY, "BENCH_PROBE_FILE": str(run.probe_file)})
        if args.model == "stub":
            env["BENCH_PROBE_INNER"] = STUB_FACTORY
        if args.max_sessions is not None:
            env["KRONOS_MODEL__MAX_SESSIONS"] = str(args.max_sessions)
        if args.refresh_every is not None:
            env["KRONOS_REFRESH_EVERY_BARS"] = str(args.refresh_every)
    env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [env.get("PYTHONPATH")])])
    env.update(args.daemon_env)  # --daemon-env KEY=VALUE: last, so it overrides any of the above
    if args.max_batch is not None:
        env["KRONOS_BATCH__MAX_BATCH_SIZE"] = str(args.max_batch)
    if args.max_wait_ms is not None:
        env["KRONOS_BATCH__MAX_WAIT_MS"] = str(args.max_wait_ms)
    if args.profile is not None:
        env["BENCH_PROFILE"] = str(args.profile)
    return env


class DaemonProcess:
    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self._env = env
        self.port = port
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            profile = self._env.get("BENCH_PROFILE")  # a cProfile dump of the daemon (written at exit)
            prefix = ["-m", "cProfile", "-o", profile] if profile else []
            self._proc = subprocess.Popen(
                [sys.executable, *prefix, "-m", "daemon", "run"],
                cwd=REPO,
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def wait_ready(self, timeout_s: float) -> float:
        """Seconds until /readyz answered 200; raises if the process died or the time ran out."""
        began = time.monotonic()
        while time.monotonic() - began < timeout_s:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self._proc.returncode}:\n{self.log_tail()}")
            status, _ = await asyncio.to_thread(http_get, f"http://127.0.0.1:{self.port}/readyz")
            if status == 200:
                return time.monotonic() - began
            await asyncio.sleep(0.2)
        raise RuntimeError(f"the daemon was not ready within {timeout_s:.0f} s:\n{self.log_tail()}")

    async def metrics(self) -> dict[str, float]:
        status, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{self.port}/metrics")
        if status != 200:
            return {}
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    continue
                out[sample.name] = out.get(sample.name, 0.0) + float(sample.value)
                if "phase" in sample.labels:  # kronos_loop_phase_seconds: also per phase
                    key = f'{sample.name}{{phase="{sample.labels["phase"]}"}}'
                    out[key] = out.get(key, 0.0) + float(sample.value)
        return out

    async def stop(self, timeout_s: float = 20.0) -> int | None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
            await asyncio.to_thread(proc.wait, 5)
        return proc.returncode


# -- Kafka and Redis housekeeping ---------------------------------------------------------------


async def group_lag(admin: AIOKafkaAdminClient, probe: AIOKafkaConsumer, run: Run) -> int:
    """Messages of the input topic not yet committed by the daemon's group."""
    parts = [TopicPartition(run.input, p) for p in range(run.partitions)]
    ends = await probe.end_offsets(parts)
    committed = await admin.list_consumer_group_offsets(run.group)
    lag = 0
    for tp in parts:
        meta = committed.get(tp)
        done = meta.offset if meta is not None and meta.offset >= 0 else 0
        lag += max(0, ends[tp] - done)
    return lag


async def create_topics(admin: AIOKafkaAdminClient, run: Run) -> None:
    await admin.create_topics(
        [
            NewTopic(run.input, num_partitions=run.partitions, replication_factor=1),
            NewTopic(run.output, num_partitions=run.partitions, replication_factor=1),
            NewTopic(run.dead, num_partitions=1, replication_factor=1),
        ]
    )


async def wait_for_leaders(probe: AIOKafkaConsumer, run: Run, timeout_s: float = 15.0) -> None:
    """Until the new topics' partitions all show up in the metadata (a leader is elected)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await probe._client.force_metadata_update()  # noqa: SLF001
        cluster = probe._client.cluster  # noqa: SLF001
        ready = True
        for topic in (run.input, run.output):
            parts = cluster.partitions_for_topic(topic) or set()
            leaders = [cluster.leader_for_partition(TopicPartition(topic, p)) for p in parts]
            ready = ready and len(parts) == run.partitions and all(x is not None and x >= 0 for x in leaders)
        if ready:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the topics of {run.group} have no leaders after {timeout_s} s")


async def delete_topics(admin: AIOKafkaAdminClient, run: Run) -> None:
    names = {run.input, run.output, run.dead}
    present = names & set(await admin.list_topics())
    if not present:
        return
    await admin.delete_topics(sorted(present))
    deadline = time.monotonic() + 15
    while names & set(await admin.list_topics()) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


async def delete_redis_keys(redis_url: str, prefix: str) -> int:
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i : i + 500])
        return len(keys)
    finally:
        await client.aclose()


@dataclass
class Session:
    """A started daemon on a run's fresh topics, with this process's clients around it."""

    daemon: DaemonProcess
    admin: AIOKafkaAdminClient
    probe: AIOKafkaConsumer
    producer: AIOKafkaProducer
    collector: Collector


@contextlib.asynccontextmanager
async def daemon_session(
    args: argparse.Namespace, run: Run, env: dict[str, str], bootstrap: str, redis_url: str,
    log_path: Path, result: dict[str, Any], *, producer_linger_ms: int = 0,
) -> AsyncIterator[Session]:
    """Create the run's topics, start the daemon and wait until it is ready, start the output reader;
    afterwards stop everything and delete the topics and Redis keys (also after a failure)."""
    s = Session(
        DaemonProcess(env, int(env["KRONOS_HTTP_PORT"]), log_path),
        AIOKafkaAdminClient(bootstrap_servers=bootstrap),
        AIOKafkaConsumer(bootstrap_servers=bootstrap),
        AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                         linger_ms=producer_linger_ms, max_batch_size=1 << 20),  # a burst in one batch per partition
        Collector(bootstrap, run.output),
    )
    result["daemon_log"] = str(log_path.relative_to(REPO))
    await s.admin.start()
    try:
        await create_topics(s.admin, run)
        await s.probe.start()
        await wait_for_leaders(s.probe, run)
        await s.producer.start()
        s.daemon.start()
        result["startup_s"] = round(await s.daemon.wait_ready(args.ready_timeout), 2)
        await s.collector.start(run.partitions)  # reads from the beginning; nothing is published yet
        print(f"[{run.mode}] daemon ready after {result['startup_s']} s", flush=True)
        yield s
    finally:
        result["exit_code"] = await s.daemon.stop()
        await s.collector.stop()
        await s.producer.stop()
        await s.probe.stop()
        try:
            await delete_topics(s.admin, run)
        finally:
            await s.admin.close()
        result["redis_keys_deleted"] = await delete_redis_keys(redis_url, run.prefix)
        run.probe_file.unlink(missing_ok=True)  # the probe's tallies are in the result by now


# -- one mode -----------------------------------------------------------------------------------


def percentiles(values: list[float], qs: tuple[int, ...] = (50, 90, 99)) -> dict[str, float | None]:
    if not values:
        empty: dict[str, float | None] = {f"p{q}": None for q in qs}
        empty["max"] = None
        return empty
    arr = np.asarray(values, dtype=float)
    out: dict[str, float | None] = {f"p{q}": round(float(np.percentile(arr, q)), 1) for q in qs}
    out["max"] = round(float(arr.max()), 1)
    return out


def round_robin(bars: Iterator[FeedBar], count: int) -> list[FeedBar]:
    return list(itertools.islice(bars, count))


async def bench_mode(
    args: argparse.Namespace, mode: str, bootstrap: str, redis_url: str, uid: str
) -> dict[str, Any]:
    run = Run(mode, uid, args.partitions)
    env = daemon_env(args, run, bootstrap, redis_url, free_port())
    log_path = REPO / "results" / "tmp" / f"bench_load-{mode}.log"
    bars = synthetic_bars(args.symbols, None, interval_s=BAR_INTERVAL_S, seed=args.seed, start=BAR_START)
    result: dict[str, Any] = {"mode": mode}
    began = time.monotonic()
    async with daemon_session(args, run, env, bootstrap, redis_url, log_path, result) as s:
        daemon, admin, probe, producer, collector = s.daemon, s.admin, s.probe, s.producer, s.collector

        # 1. warm-up: full windows for every symbol
        warm = round_robin(bars, args.symbols * args.warm_bars)
        t0 = time.time()
        keys = await publish_fast(producer, run.input, warm)
        complete = await collector.wait_for(keys, args.warm_timeout)
        last = max((collector.first[k].at for k in keys if k in collector.first), default=t0)
        got = sum(1 for k in keys if k in collector.first)
        result["warmup"] = {
            "bars": len(keys),
            "forecasts": got,
            "complete": complete,
            "seconds": round(last - t0, 2),
            "rate": round(got / max(last - t0, 1e-9), 1),
        }
        print(f"[{mode}] warm-up: {got}/{len(keys)} forecasts in {last - t0:.1f} s", flush=True)
        if not complete:
            raise RuntimeError(f"warm-up did not finish within {args.warm_timeout} s; lower --warm-bars")

        # 2. measured phase at the target rate
        before = await daemon.metrics()
        t_start = time.time()
        sent = await publish_paced(producer, run.input, bars, args.rate, args.duration)
        t_end = time.time()
        lag_end = await group_lag(admin, probe, run)
        in_phase = collector.count_between(t_start, t_end)
        missing_at_end = sum(1 for k in sent if k not in collector.first)
        after_phase = await daemon.metrics()
        await collector.wait_for(list(sent), args.grace)
        arrived = {k: collector.first[k] for k in sent if k in collector.first}
        e2e = [(a.at - sent[k]) * 1e3 for k, a in arrived.items()]
        own = {
            name: percentiles([float(a.latency_ms[name]) for a in arrived.values() if name in a.latency_ms])
            for name in ("queue", "model", "end_to_end")
        }
        calls = after_phase.get("kronos_batch_size_count", 0.0) - before.get("kronos_batch_size_count", 0.0)
        series = after_phase.get("kronos_batch_size_sum", 0.0) - before.get("kronos_batch_size_sum", 0.0)
        step_s = after_phase.get("kronos_model_step_seconds_sum", 0.0) - before.get(
            "kronos_model_step_seconds_sum", 0.0
        )
        phase_s = t_end - t_start
        result["measured"] = {
            "seconds": round(phase_s, 2),
            "bars_sent": len(sent),
            "send_rate": round(len(sent) / phase_s, 2),
            "forecasts_in_phase": in_phase,
            "sustained_rate": round(in_phase / phase_s, 2),
            "forecasts_missing_at_end": missing_at_end,
            "forecasts_missing_after_grace": len(sent) - len(arrived),
            "lag_at_end": lag_end,
            "e2e_ms": percentiles(e2e),
            "daemon_latency_ms": own,
            "model_calls": int(calls),
            "mean_batch": round(series / calls, 2) if calls else None,
            "model_busy_share": round(step_s / phase_s, 3),
            "mean_model_call_ms": round(step_s / calls * 1e3, 2) if calls else None,
        }
        m = result["measured"]
        print(
            f"[{mode}] measured: {m['sustained_rate']} forecasts/s (sent {m['send_rate']}/s), e2e p50 "
            f"{m['e2e_ms']['p50']} ms p99 {m['e2e_ms']['p99']} ms, lag at end {lag_end}",
            flush=True,
        )

        # 3. max throughput: drain a backlog
        backlog_rounds = max(1, round(result["warmup"]["rate"] * args.drain_seconds / args.symbols))
        backlog_rounds = min(backlog_rounds, args.max_backlog_rounds)
        drain = round_robin(bars, args.symbols * backlog_rounds)
        d0 = time.time()
        keys = await publish_fast(producer, run.input, drain)
        published_s = time.time() - d0
        complete = await collector.wait_for(keys, args.drain_timeout)
        got_at = sorted(collector.first[k].at for k in keys if k in collector.first)
        end = got_at[-1] if got_at else d0
        lag_drain = await group_lag(admin, probe, run)
        final = await daemon.metrics()
        result["drain"] = {
            "bars": len(keys),
            "publish_s": round(published_s, 2),
            "forecasts": len(got_at),
            "complete": complete,
            "seconds": round(end - d0, 2),
            "rate": round(len(got_at) / max(end - d0, 1e-9), 2),
            "lag_at_end": lag_drain,
        }
        calls = final.get("kronos_batch_size_count", 0.0) - after_phase.get("kronos_batch_size_count", 0.0)
        series = final.get("kronos_batch_size_sum", 0.0) - after_phase.get("kronos_batch_size_sum", 0.0)
        result["drain"]["mean_batch"] = round(series / calls, 2) if calls else None
        result["daemon_totals"] = {
            k.removeprefix("kronos_"): final.get(k, 0.0)
            for k in ("kronos_forecasts_out_total", "kronos_bars_in_total", "kronos_skipped_total",
                      "kronos_invalid_messages_total", "kronos_state_conflicts_total")
        }  # fmt: skip
        result["duplicates_read"] = collector.duplicates
        result["wall_s"] = round(time.monotonic() - began, 1)
        print(
            f"[{mode}] drain: {len(got_at)}/{len(keys)} in {end - d0:.1f} s = {result['drain']['rate']}/s",
            flush=True,
        )
    return result


# -- bursts -----------------------------------------------------------------------------------------


class ReferenceModel:
    """The daemon's model, built in this process from the daemon's own ``KRONOS_*`` settings, to time
    one batched call over the windows the daemon forecast in a burst (without the counting probe)."""

    def __init__(self, env: dict[str, str]) -> None:
        from daemon.model.build import build_forecaster
        from daemon.settings import load_settings

        kronos = {k: v for k, v in env.items() if k.startswith("KRONOS_")}
        if kronos.get("KRONOS_MODEL__FACTORY") == PROBE_FACTORY:  # the model itself, uncounted
            inner = env.get("BENCH_PROBE_INNER")
            if inner:
                kronos["KRONOS_MODEL__FACTORY"] = inner
            else:
                del kronos["KRONOS_MODEL__FACTORY"]
        if kronos.get("KRONOS_MODEL__FACTORY") == STUB_FACTORY and str(MODELS["stub"]) not in sys.path:
            sys.path.insert(0, str(MODELS["stub"]))  # the stub's module, as the daemon finds it
        saved = {k: v for k, v in os.environ.items() if k.startswith("KRONOS_")}
        try:
            for k in saved:
                del os.environ[k]
            os.environ.update(kronos)
            self.settings = load_settings()
        finally:
            for k in [k for k in os.environ if k.startswith("KRONOS_")]:
                del os.environ[k]
            os.environ.update(saved)
        self.forecaster = build_forecaster(self.settings)

    def windows(self, history: dict[str, list[FeedBar]], symbols: list[str], drop_last: int = 0) -> list[Any]:
        """What the daemon hands the model for each symbol's newest bar (window capped at max_context);
        ``drop_last``: as it was that many bars earlier."""
        from daemon.io.messages import horizon_ns, infer_interval_ns
        from kronos_core.stream_types import SeriesWindow, derive_seed

        s, out = self.settings, []
        for sym in symbols:
            bars = history[sym][: len(history[sym]) - drop_last][-s.model.max_context :]
            ts = [to_ns(t) for _, t, _ in bars]
            interval = infer_interval_ns(ts, int(s.default_bar_interval_s * 1e9))
            future = horizon_ns(ts[-1], interval, s.model.horizon)
            out.append(SeriesWindow(
                sym, np.asarray([v for _, _, v in bars], dtype=np.float64), np.asarray(ts, dtype="datetime64[ns]"),
                np.asarray(future, dtype="datetime64[ns]"),
                derive_seed(sym, ts[-1], self.forecaster.model_version, s.model.base_seed),
            ))
        return out

    def time_call(self, history: dict[str, list[FeedBar]], symbols: list[str], repeats: int = 2) -> float:
        """Seconds of one batched forecast call over the symbols' newest windows (the fastest of
        ``repeats``). Incremental mode: each timed call is warm, as the daemon's should be: an untimed
        call over the windows one bar earlier builds the warm sessions and token caches first."""
        horizon = self.settings.model.horizon
        windows = self.windows(history, symbols)
        best = float("inf")
        for _ in range(repeats):
            if self.settings.mode == "incremental":
                earlier = self.forecaster.forecast(self.windows(history, symbols, drop_last=1), horizon)
                windows = [dataclasses.replace(w, token_state=f.token_state)
                           for w, f in zip(windows, earlier, strict=True)]
            t0 = time.perf_counter()
            self.forecaster.forecast(windows, horizon)
            best = min(best, time.perf_counter() - t0)
        return best


def metric_delta(after: dict[str, float], before: dict[str, float], name: str) -> float:
    """How much a counter (or a histogram's _sum/_count) grew between two /metrics readings."""
    return after.get(name, 0.0) - before.get(name, 0.0)


def phase_ms_per_forecast(after: dict[str, float], before: dict[str, float], forecasts: int) -> dict[str, float]:
    """The daemon's own time per loop phase (``kronos_loop_phase_seconds{phase}``) between two
    readings, in ms per forecast."""
    prefix = 'kronos_loop_phase_seconds_sum{phase="'
    return {
        name.removeprefix(prefix).removesuffix('"}'): round(metric_delta(after, before, name) / forecasts * 1e3, 4)
        for name in after
        if name.startswith(prefix) and forecasts
    }


def count_delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """The probe's tallies (warm, rebuild, refresh...) between two readings."""
    return {k: after.get(k, 0) - before.get(k, 0) for k in after}


def served_counts(run: Run) -> dict[str, int] | None:
    """The probe's running tallies of how the daemon's incremental calls served each series (None
    in exact mode, where no probe runs)."""
    if run.mode != "incremental":
        return None
    from bench_probe import read_counts

    return read_counts(run.probe_file)


async def warm_up(
    args: argparse.Namespace, s: Session, run: Run, feed: Iterator[FeedBar], symbols: int,
    history: dict[str, list[FeedBar]], tag: str,
) -> dict[str, Any]:
    """``--warm-bars`` bars per symbol published as fast as possible; returns once every one has its
    forecast (raises after ``--warm-timeout``). ``history`` gets every bar sent."""
    warm = round_robin(feed, symbols * args.warm_bars)
    for bar in warm:
        history.setdefault(bar[0], []).append(bar)
    t0 = time.time()
    keys = await publish_fast(s.producer, run.input, warm)
    if not await s.collector.wait_for(keys, args.warm_timeout):
        raise RuntimeError(f"warm-up did not finish within {args.warm_timeout} s; lower --warm-bars")
    out: dict[str, Any] = {"bars": len(keys), "seconds": round(time.time() - t0, 2)}
    served = served_counts(run)
    if served is not None:
        out["served"] = served
    metrics = await s.daemon.metrics()
    out["symbols_cached"] = metrics.get("kronos_symbols_cached")
    print(f"[{tag}] warm-up: {len(keys)} forecasts in {out['seconds']:.1f} s"
          + (f", served {served}" if served else ""), flush=True)
    return out


async def bench_bursts(
    args: argparse.Namespace, mode: str, bootstrap: str, redis_url: str, uid: str
) -> dict[str, Any]:
    """One daemon, ``max(sizes)`` symbols warmed up, then bursts: the first N symbols each send one
    bar at the same instant; time until the last of their forecasts is read from the output topic."""
    sizes = args.burst_sizes
    run = Run(mode, f"{uid}-burst", args.partitions)
    env = daemon_env(args, run, bootstrap, redis_url, free_port())
    log_path = REPO / "results" / "tmp" / f"bench_burst-{mode}.log"
    total = max(sizes)
    feed = synthetic_bars(total, None, interval_s=BAR_INTERVAL_S, seed=args.seed, start=BAR_START)
    history: dict[str, list[FeedBar]] = {}
    result: dict[str, Any] = {"mode": mode, "bursts": []}
    reference = ReferenceModel(env)
    async with daemon_session(args, run, env, bootstrap, redis_url, log_path, result, producer_linger_ms=5) as s:
        daemon, producer, collector = s.daemon, s.producer, s.collector
        result["warmup"] = await warm_up(args, s, run, feed, total, history, f"burst {mode}")

        for size in sizes:
            for rep in range(args.burst_repeats):
                step = round_robin(feed, total)  # the next bar of every symbol; the first `size` are sent
                burst = step[:size]
                for bar in burst:
                    history[bar[0]].append(bar)
                before = await daemon.metrics()
                served_before = served_counts(run)
                records = encode_bars(burst)  # before the clock starts: the bars land at once
                keys = [key_of(sym, ts) for sym, ts, _ in burst]
                await asyncio.sleep(0.5)  # let the daemon's idle fetches settle
                b0 = time.time()
                await publish_encoded(producer, run.input, records)
                acked_s = time.time() - b0
                complete = await collector.wait_for(keys, args.drain_timeout)
                arrivals = [collector.first[k].at for k in keys if k in collector.first]
                burst_s = max(arrivals) - b0 if arrivals else float("nan")
                after = await settled_metrics(daemon, before, size)
                served_after = served_counts(run)
                model_s = metric_delta(after, before, "kronos_model_step_seconds_sum")
                calls = int(metric_delta(after, before, "kronos_batch_size_count"))
                series = metric_delta(after, before, "kronos_batch_size_sum")
                engine_s = reference.time_call(history, [b[0] for b in burst])
                entry = {
                    "symbols": size, "repeat": rep, "complete": complete, "forecasts": len(arrivals),
                    "publish_acked_s": round(acked_s, 3),
                    "time_to_last_forecast_s": round(burst_s, 3),
                    "daemon_model_calls": calls,
                    "daemon_mean_batch": round(series / calls, 1) if calls else None,
                    "daemon_model_s": round(model_s, 3),
                    "engine_one_call_s": round(engine_s, 3),
                    "efficiency": round(engine_s / burst_s, 3),
                    "model_share": round(model_s / burst_s, 3),
                    "overhead_ms_per_forecast": round((burst_s - model_s) / size * 1e3, 3),
                    "overhead_vs_engine_ms_per_forecast": round((burst_s - engine_s) / size * 1e3, 3),
                    # the daemon's own time per loop phase (kronos_loop_phase_seconds), ms per forecast
                    "phase_ms_per_forecast": phase_ms_per_forecast(after, before, size),
                }
                if served_before is not None and served_after is not None:
                    entry["served"] = count_delta(served_after, served_before)
                result["bursts"].append(entry)
                print(f"[burst {mode}] {size} symbols: last forecast after {burst_s * 1e3:.0f} ms, "
                      f"{calls} model call(s) ({model_s * 1e3:.0f} ms), one engine call {engine_s * 1e3:.0f} ms, "
                      f"efficiency {entry['efficiency']:.0%}"
                      + (f", served {entry['served']}" if "served" in entry else ""), flush=True)
    return result


async def settled_metrics(daemon: DaemonProcess, before: dict[str, float], forecasts: int) -> dict[str, float]:
    """The daemon's metrics once it has stored ``forecasts`` more forecasts and finished every fetch
    they came in: the loop's phase times are recorded after a batch's commit, a moment after its last
    forecast is out, and a burst can come in more than one batch, so the readings must also have
    stopped changing (two readings 0.1 s apart alike; at most 10 s)."""
    batches = 'kronos_loop_phase_seconds_count{phase="linger"}'  # one observation per processed batch
    deadline = time.monotonic() + 10
    last: dict[str, float] | None = None
    while True:
        after = await daemon.metrics()
        stored = metric_delta(after, before, "kronos_forecasts_out_total")
        done = stored >= forecasts and metric_delta(after, before, batches) > 0
        if (done and last is not None and last.get(batches) == after.get(batches)) or time.monotonic() > deadline:
            return after
        last = after if done else None
        await asyncio.sleep(0.1)


# -- steady state -----------------------------------------------------------------------------------


def spread_schedule(symbols: int, spread_s: float, rng: np.random.Generator) -> list[tuple[float, int]]:
    """One interval's sends: (seconds after the bar close, symbol index) for every symbol, in send
    order; each symbol's bar lands at a uniform random moment within ``spread_s`` of the close (a
    real feed's bars of one close arrive spread over about a second, not at one instant)."""
    offsets = rng.uniform(0.0, spread_s, size=symbols) if spread_s > 0 else np.zeros(symbols)
    order = np.argsort(offsets, kind="stable")
    return [(float(offsets[i]), int(i)) for i in order]


def kept_up(completions_s: list[float | None], interval_s: float, lag_at_end: int, missing: int) -> bool:
    """The daemon kept up when every measured interval's forecasts were all out (None: some never
    came) before the next bar close, nothing was left in its input at the end, and none was missing."""
    done = [c for c in completions_s if c is not None]
    return bool(done) and len(done) == len(completions_s) and max(done) < interval_s and lag_at_end == 0 and missing == 0


async def send_interval(
    producer: AIOKafkaProducer, topic: str, bars: list[FeedBar], schedule: list[tuple[float, int]], close: float,
    sent: dict[Key, float],
) -> list[Any]:
    """Sends bar ``i`` at ``close + offset`` (wall clock; bars already due go together), noting each
    bar's send time in ``sent``; returns the acknowledgement futures. Encoded before the close."""
    records, keys = encode_bars(bars), [key_of(symbol, ts) for symbol, ts, _ in bars]
    acks = []
    for offset, i in schedule:
        delay = close + offset - time.time()
        if delay > 0.001:
            await asyncio.sleep(delay)
        sent[keys[i]] = time.time()
        acks.append(await producer.send(topic, key=records[i][0], value=records[i][1]))
    return acks


During = Callable[["Session", dict[Key, float], float], Awaitable[dict[str, Any]]]


async def bench_steady(
    args: argparse.Namespace, mode: str, bootstrap: str, redis_url: str, uid: str, during: During | None = None
) -> dict[str, Any]:
    """One daemon, N symbols warmed up, then one bar per symbol per ``--interval``, spread over
    ``--spread`` seconds after each close: ``--steady-warmup`` intervals, then ``--intervals`` measured.

    ``during(session, sent, first_close)``: other load on the same daemon (scripts/bench_api.py), run
    from the warm-up's end until it returns (``sent``: each bar's send time, as bars go); its result is
    ``result["during"]``."""
    n, interval = args.steady, args.interval
    run = Run(mode, f"{uid}-steady", args.partitions)
    env = daemon_env(args, run, bootstrap, redis_url, free_port())
    log_path = REPO / "results" / "tmp" / f"bench_steady-{mode}.log"
    feed = synthetic_bars(n, None, interval_s=BAR_INTERVAL_S, seed=args.seed, start=BAR_START)
    rng = np.random.default_rng(args.seed)
    history: dict[str, list[FeedBar]] = {}
    result: dict[str, Any] = {"mode": mode, "intervals": []}
    async with daemon_session(args, run, env, bootstrap, redis_url, log_path, result, producer_linger_ms=5) as s:
        daemon, collector = s.daemon, s.collector
        result["warmup"] = await warm_up(args, s, run, feed, n, history, f"steady {mode}")
        first_close = time.time() + 1.0
        phase_start = first_close + args.steady_warmup * interval
        phase_end = phase_start + args.intervals * interval
        sent: dict[Key, float] = {}
        other = asyncio.create_task(during(s, sent, first_close)) if during is not None else None
        per_interval: list[tuple[float, list[Key]]] = []
        acks: list[Any] = []
        before: dict[str, float] = {}
        served_before: dict[str, int] | None = None
        for k in range(args.steady_warmup + args.intervals):
            close = first_close + k * interval
            if k == args.steady_warmup:
                await asyncio.sleep(max(0.0, close - 0.3 - time.time()))
                before, served_before = await daemon.metrics(), served_counts(run)
            bars = round_robin(feed, n)
            acks += await send_interval(s.producer, run.input, bars, spread_schedule(n, args.spread, rng), close, sent)
            if k >= args.steady_warmup:
                per_interval.append((close, [key_of(sym, ts) for sym, ts, _ in bars]))
            await asyncio.sleep(max(0.0, close + interval - 0.4 - time.time()))
            await asyncio.gather(*acks)
            acks = []
            print(f"[steady {mode}] close {k + 1}/{args.steady_warmup + args.intervals}: {len(collector.first)} "
                  "forecasts read so far", flush=True)
        await asyncio.sleep(max(0.0, phase_end - time.time()))
        if other is not None:
            result["during"] = await other
        lag_end = await group_lag(s.admin, s.probe, run)
        after, served_after = await daemon.metrics(), served_counts(run)  # the measured intervals only
        in_phase = collector.count_between(phase_start, phase_end)
        measured = [k for _, keys in per_interval for k in keys]
        missing_at_end = sum(1 for k in measured if k not in collector.first)
        await collector.wait_for(measured, args.grace)

        arrived = {k: collector.first[k] for k in measured if k in collector.first}
        e2e = [(a.at - sent[k]) * 1e3 for k, a in arrived.items()]
        own = [float(a.latency_ms["end_to_end"]) for a in arrived.values() if "end_to_end" in a.latency_ms]
        completions: list[float | None] = []
        for close, keys in per_interval:
            got = [collector.first[k].at for k in keys if k in collector.first]
            last_sent = max(sent[k] for k in keys)
            done = round(max(got) - close, 3) if len(got) == len(keys) else None
            completions.append(done)
            result["intervals"].append({
                "forecasts": len(got), "bars": len(keys),
                "latency_ms": percentiles([(collector.first[k].at - sent[k]) * 1e3 for k in keys if k in collector.first]),
                "last_forecast_after_close_s": done,
                "last_forecast_after_last_bar_s": round(max(got) - last_sent, 3) if got else None,
            })  # fmt: skip
        calls = metric_delta(after, before, "kronos_batch_size_count")
        series = metric_delta(after, before, "kronos_batch_size_sum")
        model_s = metric_delta(after, before, "kronos_model_step_seconds_sum")
        missing = len(measured) - len(arrived)
        finished = [c for c in completions if c is not None]  # closes whose forecasts all came
        result["measured"] = {
            "symbols": n, "interval_s": interval, "spread_s": args.spread, "intervals": args.intervals,
            "bars_sent": len(measured),
            "forecasts_per_s": round(in_phase / (phase_end - phase_start), 2),
            "bars_per_s": round(len(measured) / (phase_end - phase_start), 2),
            "latency_ms": percentiles(e2e),
            "daemon_end_to_end_ms": percentiles(own),
            "model_calls": int(calls),
            "mean_batch": round(series / calls, 1) if calls else None,
            "model_busy_share": round(model_s / (phase_end - phase_start), 3),
            # of the model time, what shadow challengers took (0 without any; daemon/model/challengers.py)
            "challenger_model_s": round(metric_delta(after, before, "kronos_challenger_model_seconds_total"), 3),
            "challenger_forecasts": int(metric_delta(after, before, "kronos_challenger_forecasts_total")),
            "model_s": round(model_s, 3),
            "phase_ms_per_forecast": phase_ms_per_forecast(after, before, len(measured)),
            "mean_model_call_ms": round(model_s / calls * 1e3, 1) if calls else None,
            "lag_at_end": lag_end,
            "forecasts_missing_at_end": missing_at_end,
            "forecasts_missing_after_grace": missing,
            "worst_interval_s": max(finished) if len(finished) == len(completions) else None,
            "median_interval_s": round(float(np.median(finished)), 3) if len(finished) == len(completions) else None,
            "kept_up": kept_up(completions, interval, lag_end, missing),
        }  # fmt: skip
        if served_before is not None and served_after is not None:
            result["measured"]["served"] = count_delta(served_after, served_before)
        result["duplicates_read"] = collector.duplicates
        m = result["measured"]
        print(f"[steady {mode}] {m['forecasts_per_s']} forecasts/s, latency p50 {m['latency_ms']['p50']} ms "
              f"p99 {m['latency_ms']['p99']} ms, mean batch {m['mean_batch']}, lag at end {lag_end}, "
              f"kept up: {m['kept_up']}", flush=True)
    return result


def phase_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """The daemon's loop phases over the measured intervals, ms per forecast, one line per mode."""
    lines = []
    for mode, r in results.items():
        phases = r.get("measured", {}).get("phase_ms_per_forecast")
        if phases:
            parts = ", ".join(f"{k} {v:.3f}" for k, v in sorted(phases.items(), key=lambda kv: -kv[1]) if v >= 0.0005)
            lines.append(f"- {mode}: the daemon's loop phases (`kronos_loop_phase_seconds`), ms per forecast: {parts}.")
    return [*lines, ""] if lines else []


def steady_table(results: dict[str, dict[str, Any]]) -> list[str]:
    rows = [
        "| mode | symbols | interval s | forecasts/s | latency p50 ms | p90 ms | p99 ms | max ms "
        "| daemon e2e p50/p99 ms | model calls (mean batch) | model busy | close to last forecast s (median/worst) | lag at end "
        "| kept up | warm/rebuilt/refreshed (evicted) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for mode, r in results.items():
        if "measured" not in r:
            error = " ".join(str(r.get("error", "?")).split())[:300].replace("|", "/")
            rows.append(f"| {mode} | failed: {error} ||||||||||||||")
            continue
        m = r["measured"]
        lat, own = m["latency_ms"], m["daemon_end_to_end_ms"]
        rows.append(
            f"| {mode} | {m['symbols']} | {m['interval_s']:g} | {m['forecasts_per_s']} | {lat['p50']} | {lat['p90']} "
            f"| {lat['p99']} | {lat['max']} | {own['p50']} / {own['p99']} | {m['model_calls']} ({m['mean_batch']}) "
            f"| {m['model_busy_share']:.0%} | {m['median_interval_s']} / {m['worst_interval_s']} | {m['lag_at_end']} "
            f"| {'yes' if m['kept_up'] else 'no'} | {served_cell(m.get('served'))} |"
        )
    return rows


SERVED_NOTE = (
    "how the daemon's model calls served the bars, counted by scripts/bench_probe.py around the daemon's "
    "model: from a warm session (only the new bar runs), rebuilt from the stored token cache (no matching "
    "warm session), or refreshed (new statistics, whole window: cold start, every refresh_every bars, a "
    "price beyond drift_sigma, or the window outgrew the cache); *evicted*: warm sessions the session pool "
    "dropped to give a batch one contiguous run of slots."
)


def machine_line(mf: dict[str, Any]) -> str:
    return (
        f"{mf['date']}; {mf['cores']} cores ({mf['cpu']}), torch {mf['torch']} on CPU with "
        f"{mf['torch_threads']} thread(s); load average before {mf['load_avg_before']}, after "
        f"{mf['load_avg_after']} (the machine is shared with other jobs). Daemon subprocess, broker and "
        "Redis on this machine (loopback)."
    )


def write_steady_markdown(path: Path, report: dict[str, Any]) -> None:
    a, mf = report["settings"], report["machine"]
    lines = [
        "# Daemon steady-state benchmark (real Kafka and Redis)",
        "",
        machine_line(mf),
        "",
        f"Model `{a['model']}`, max_context {a['max_context']}, horizon {a['horizon']}, sample_count "
        f"{a['sample_count']}; {a['steady']} symbols warmed up with {a['warm_bars']} bars each, then one bar per "
        f"symbol every {a['interval']:g} s, each landing at a random moment within {a['spread']:g} s of the close; "
        f"{a['steady_warmup']} interval(s) not measured, then {a['intervals']} measured; {a['partitions']} "
        f"partitions; daemon max_batch_size {a['max_batch']}, max_wait_ms {a['max_wait_ms']}. "
        "Command: `" + report["command"] + "`.",
        "",
        *steady_table(report["modes"]),
        "",
        *phase_lines(report["modes"]),
        "- *latency*: from just before this process sent a bar (its arrival) until it read that bar's "
        "forecast from the output topic. *daemon e2e*: the forecast's own `latency_ms.end_to_end` (the "
        "bar's Kafka timestamp until the forecast was handed to the producer).",
        "- *forecasts/s*: forecasts read during the measured intervals / their length. *model calls (mean "
        "batch)* and *model busy* (model time / measured time): the daemon's /metrics (`kronos_batch_size`, "
        "`kronos_model_step_seconds`) over the measured intervals.",
        "- *close to last forecast*: from a bar close until the last forecast of that close was read, the "
        "median and the worst of the measured closes. *lag at end*: input messages not yet committed by "
        "the daemon's group when the measured intervals ended. *kept up*: every close's forecasts out before the next close, no lag at the end, "
        "none missing.",
        "- *warm/rebuilt/refreshed (evicted)*, incremental mode, over the measured closes: " + SERVED_NOTE
        + f" Warm sessions allowed: max_sessions {a.get('max_sessions')}; refresh_every {a.get('refresh_every')}.",
        "",
    ]
    path.write_text("\n".join(lines))


def served_cell(served: dict[str, int] | None) -> str:
    """``warm/rebuilt/refreshed (evicted)`` of a burst (``-`` in exact mode)."""
    if not served:
        return "-"
    return (f"{served.get('warm', 0)}/{served.get('rebuild', 0)}/{served.get('refresh', 0)} "
            f"({served.get('evicted', 0)})")


def burst_table(results: dict[str, dict[str, Any]]) -> list[str]:
    rows = [
        "| mode | symbols | time to last forecast ms | model calls (mean batch) | daemon model ms "
        "| one engine call ms | efficiency | model share | overhead ms/forecast | publish acked ms "
        "| warm/rebuilt/refreshed (evicted) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, r in results.items():
        if "error" in r:
            rows.append(f"| {mode} | failed: {' '.join(str(r['error']).split())[:300]} |||||||||")
            continue
        for b in r["bursts"]:
            rows.append(
                f"| {mode} | {b['symbols']} | {b['time_to_last_forecast_s'] * 1e3:.0f} | {b['daemon_model_calls']} "
                f"({b['daemon_mean_batch']}) | {b['daemon_model_s'] * 1e3:.0f} | {b['engine_one_call_s'] * 1e3:.0f} "
                f"| {b['efficiency']:.0%} | {b['model_share']:.0%} | {b['overhead_ms_per_forecast']:.3f} "
                f"| {b['publish_acked_s'] * 1e3:.0f} | {served_cell(b.get('served'))} |"
            )
    return rows


def write_burst_markdown(path: Path, report: dict[str, Any]) -> None:
    a, mf = report["settings"], report["machine"]
    lines = [
        "# Daemon burst benchmark (real Kafka and Redis)",
        "",
        machine_line(mf),
        "",
        f"Model `{a['model']}`, max_context {a['max_context']}, horizon {a['horizon']}, sample_count "
        f"{a['sample_count']}; warm-up {a['warm_bars']} bars per symbol for {max(a['burst_sizes'])} symbols, "
        f"then the first N symbols each send one bar at the same instant ({a['burst_repeats']} bursts per N); "
        f"{a['partitions']} partitions; daemon max_batch_size {a['max_batch']}, max_wait_ms {a['max_wait_ms']}. "
        "Command: `" + report["command"] + "`.",
        "",
        *burst_table(report["modes"]),
        "",
        "- *time to last forecast*: from just before the first send of the burst until the last of its "
        "forecasts was read from the output topic (by this process).",
        "- *one engine call*: the same model, built in this process from the daemon's settings, forecasting "
        "the burst's windows in one batched call (fastest of two), after the burst.",
        "- *efficiency* = one engine call / time to last forecast. The engine call is timed at another "
        "moment than the burst, so on a busy machine it can come out above 100%; *model share* = the "
        "daemon's own model time during the burst / time to last forecast (timed together).",
        "- *overhead ms/forecast* = (time to last forecast - the daemon's model time) / N: JSON, Kafka, "
        "Redis and bookkeeping, the linger, plus the publishing (*publish acked*: until the broker "
        "acknowledged the whole burst) and the reading in this process.",
        "- Incremental mode: *one engine call* is a warm call (an untimed call over the windows one bar "
        "earlier builds the sessions first). *warm/rebuilt/refreshed (evicted)*, per burst: " + SERVED_NOTE
        + f" Warm sessions allowed: max_sessions {a.get('max_sessions')}; refresh_every {a.get('refresh_every')}.",
        "",
    ]
    path.write_text("\n".join(lines))


# -- report ----------------------------------------------------------------------------------------


def machine_facts(args: argparse.Namespace) -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        torch_version = dist_version("torch")
    except PackageNotFoundError:
        torch_version = "?"
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "torch_threads": args.threads,
        "python": platform.python_version(),
        "torch": torch_version,
        "load_avg_before": [round(x, 2) for x in os.getloadavg()],
    }


def table(results: dict[str, dict[str, Any]]) -> list[str]:
    rows = [
        "| mode | sent bars/s | sustained forecasts/s | e2e p50 ms | e2e p99 ms | daemon e2e p50/p99 ms "
        "| model call ms (mean) | mean batch | lag at end | drain bars/s (batch) | warm-up bars/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, r in results.items():
        if "measured" not in r or "drain" not in r:
            error = " ".join(str(r.get("error", "?")).split())[:300].replace("|", "/")
            rows.append(f"| {mode} | failed: {error} |||||||||")
            continue
        m, d = r["measured"], r["drain"]
        own = m["daemon_latency_ms"]["end_to_end"]
        rows.append(
            f"| {mode} | {m['send_rate']} | {m['sustained_rate']} | {m['e2e_ms']['p50']} | {m['e2e_ms']['p99']} "
            f"| {own['p50']} / {own['p99']} | {m['mean_model_call_ms']} | {m['mean_batch']} | {m['lag_at_end']} "
            f"| {d['rate']} ({d['mean_batch']}) | {r['warmup']['rate']} |"
        )
    return rows


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    a, mf = report["settings"], report["machine"]
    lines = [
        "# Daemon load benchmark (real Kafka and Redis)",
        "",
        f"{mf['date']}; {mf['cores']} cores ({mf['cpu']}), torch {mf['torch']} on CPU with "
        f"{mf['torch_threads']} thread(s), Python {mf['python']}; load average before "
        f"{mf['load_avg_before']}, after {mf['load_avg_after']}. The daemon ran as a subprocess "
        "(`python -m daemon run`); the producer and the output reader ran in the benchmark process, and "
        "broker and Redis on the same machine (loopback).",
        "",
        f"Model `{a['model']}` ({a['model_dir']}), max_context {a['max_context']}, horizon {a['horizon']}, "
        f"sample_count {a['sample_count']}; {a['symbols']} symbols, target {a['rate']} bars/s for "
        f"{a['duration']} s after a warm-up of {a['warm_bars']} bars per symbol; input/output topics with "
        f"{a['partitions']} partitions; daemon batch settings at their defaults (256 records per fetch, "
        "20 ms wait). Command: `" + report["command"] + "`.",
        "",
        *table(report["modes"]),
        "",
        "- *sustained*: forecasts read from the output topic during the measured phase / its length.",
        "- *e2e*: this process's clock just before sending a bar until it read that bar's forecast from "
        "the output topic. *daemon e2e*: the forecast's own `latency_ms.end_to_end` (the input message's "
        "Kafka timestamp until the forecast was handed to the producer).",
        "- *lag at end*: input messages not yet committed by the daemon's group when the phase ended.",
        "- *drain*: a backlog published as fast as possible; bars / (first send to last forecast read); "
        "*batch* = mean series per model call while draining.",
        "- *warm-up*: the same drain from empty state (contexts growing to max_context), not measured "
        "for latency.",
        "",
    ]
    path.write_text("\n".join(lines))


def parse_env_pairs(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings (``--daemon-env``) as a dict; a later pair wins."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or key != key.strip():
            raise ValueError(f"--daemon-env takes KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--symbols", type=int, default=20, help="number of symbols (default 20)")
    p.add_argument("--rate", type=float, default=20.0, help="bars/s, all symbols together (default 20)")
    p.add_argument("--duration", type=float, default=30.0, help="measured phase, seconds (default 30)")
    p.add_argument("--modes", default="exact,incremental", help="comma list of exact, incremental")
    p.add_argument(
        "--model", choices=sorted(MODELS), default="demo",
        help="demo model, tiny test checkpoint, or the stub forecaster of tests/daemon\n"
        "(stub: ~0 model time, so a burst measures the daemon's own overhead)",
    )
    p.add_argument("--max-context", type=int, default=128)
    p.add_argument("--horizon", type=int, default=12)
    p.add_argument("--sample-count", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of the daemon (default 1)")
    p.add_argument("--partitions", type=int, default=4, help="partitions of the input and output topics")
    p.add_argument(
        "--warm-bars", type=int, default=None, help="warm-up bars per symbol (default max_context)"
    )
    p.add_argument("--drain-seconds", type=float, default=12.0, help="target size of the backlog, in seconds")
    p.add_argument("--max-backlog-rounds", type=int, default=200, help="cap on backlog bars per symbol")
    p.add_argument("--grace", type=float, default=10.0, help="extra wait for the measured phase's forecasts")
    p.add_argument("--ready-timeout", type=float, default=60.0)
    p.add_argument("--warm-timeout", type=float, default=90.0)
    p.add_argument("--drain-timeout", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="default results/bench_load.json (bench_burst.json)")
    p.add_argument("--burst", default=None, metavar="N,N,...",
                   help="instead of the load phases: bursts of N symbols (e.g. 128,512,1000)")
    p.add_argument("--burst-repeats", type=int, default=2, help="bursts per size")
    p.add_argument("--max-batch", type=int, default=None, help="KRONOS_BATCH__MAX_BATCH_SIZE (burst default: max N)")
    p.add_argument("--profile", type=Path, default=None, help="run the daemon under cProfile, dump here")
    p.add_argument("--max-wait-ms", type=int, default=None, help="KRONOS_BATCH__MAX_WAIT_MS (default: the daemon's)")
    p.add_argument("--max-sessions", type=int, default=None,
                   help="KRONOS_MODEL__MAX_SESSIONS in incremental mode (default: every symbol gets a warm session)")
    p.add_argument("--daemon-env", action="append", default=[], metavar="KEY=VALUE",
                   help="an environment variable of the daemon, applied last (repeatable), e.g.\n"
                   "--daemon-env KRONOS_BATCH__PIPELINE=false --daemon-env KRONOS_BATCH__LINGER_IDLE_MS=0")
    p.add_argument("--refresh-every", type=int, default=None,
                   help="KRONOS_REFRESH_EVERY_BARS in incremental mode (default: the daemon's, 64); a refresh\n"
                   "keeps max_context - horizon - this many bars of tokens")
    p.add_argument("--registry", type=Path, default=None,
                   help="serve a model registry's champion (and score its challengers) instead of --model's\n"
                   "folders: KRONOS_MODEL__REGISTRY (exact mode; scripts/bench_challenger.py uses it)")
    p.add_argument("--steady", type=int, nargs="?", const=1000, default=None, metavar="N",
                   help="instead of the load phases: N symbols (default 1000), one bar each per --interval")
    p.add_argument("--interval", type=float, default=10.0, help="steady: seconds between bar closes (default 10)")
    p.add_argument("--spread", type=float, default=1.0,
                   help="steady: each symbol's bar lands within this many seconds after the close (default 1)")
    p.add_argument("--steady-warmup", type=int, default=1, help="steady: intervals before measuring (default 1)")
    p.add_argument("--intervals", type=int, default=5, help="steady: measured intervals (default 5)")
    args = p.parse_args(argv)
    try:
        args.daemon_env = parse_env_pairs(args.daemon_env)
    except ValueError as exc:
        p.error(str(exc))
    args.burst_sizes = sorted({int(n) for n in args.burst.split(",")}) if args.burst else []
    if args.burst_sizes and min(args.burst_sizes) < 1:
        p.error("--burst sizes must be positive")
    if args.burst_sizes and args.max_batch is None:
        args.max_batch = max(args.burst_sizes)
    if args.burst_sizes and args.steady is not None:
        p.error("--burst and --steady are two different benchmarks: pick one")
    if args.steady is not None and (args.steady < 1 or args.interval <= 0 or args.spread < 0
                                    or args.spread >= args.interval or args.intervals < 1 or args.steady_warmup < 0):
        p.error("--steady N needs N >= 1, --interval > --spread >= 0, --intervals >= 1, --steady-warmup >= 0")
    args.kind = "burst" if args.burst_sizes else "steady" if args.steady is not None else "load"
    if args.max_sessions is None:
        args.max_sessions = max(args.burst_sizes) if args.burst_sizes else args.steady or args.symbols
    args.out = args.out or Path(f"results/bench_{args.kind}.json")
    args.warm_bars = args.warm_bars or args.max_context
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("exact", "incremental") for m in modes):
        p.error(f"--modes takes exact and/or incremental, got {args.modes!r}")
    args.mode_list = modes
    if args.registry is not None and (modes != ["exact"] or args.model == "stub"):
        p.error("--registry serves a registry's versions in exact mode: pass --modes exact and a real --model")
    if args.symbols < 1 or args.rate <= 0 or args.duration <= 0 or args.partitions < 1:
        p.error("--symbols, --rate, --duration and --partitions must be positive")
    return args


def service_addresses() -> tuple[str, str]:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP", "")
    redis_url = os.environ.get("REDIS_URL", "")
    if not bootstrap or not redis_url:
        raise SystemExit('set KAFKA_BOOTSTRAP and REDIS_URL: eval "$(scripts/services env)"')
    hosts = [urlsplit(f"//{b}").hostname for b in bootstrap.split(",")] + [urlsplit(redis_url).hostname]
    if any(h not in LOOPBACK for h in hosts):
        raise SystemExit(f"only loopback services are benchmarked, got {bootstrap} and {redis_url}")
    return bootstrap, redis_url


async def main_async(args: argparse.Namespace, command: str) -> dict[str, Any]:
    bootstrap, redis_url = service_addresses()
    uid = uuid.uuid4().hex[:10]
    model_dir = MODELS[args.model]
    report: dict[str, Any] = {
        "command": command,
        "machine": machine_facts(args),
        "settings": {
            "symbols": args.symbols,
            "rate": args.rate,
            "duration": args.duration,
            "modes": args.mode_list,
            "model": args.model,
            "model_dir": str(model_dir.relative_to(REPO)),
            "max_context": args.max_context,
            "horizon": args.horizon,
            "sample_count": args.sample_count,
            "partitions": args.partitions,
            "warm_bars": args.warm_bars,
            "drain_seconds": args.drain_seconds,
            "grace": args.grace,
            "run_id": uid,
        },
        "modes": {},
    }
    report["settings"].update(max_sessions=args.max_sessions, refresh_every=args.refresh_every or "default",
                              daemon_env=args.daemon_env)
    if args.burst_sizes:
        report["settings"].update(burst_sizes=args.burst_sizes, burst_repeats=args.burst_repeats)
    if args.steady is not None:
        report["settings"].update(steady=args.steady, interval=args.interval, spread=args.spread,
                                  steady_warmup=args.steady_warmup, intervals=args.intervals)
    if args.kind != "load":
        report["settings"].update(max_batch=args.max_batch or "default", max_wait_ms=args.max_wait_ms or "default")
    began = time.monotonic()
    for mode in args.mode_list:
        try:
            bench = {"burst": bench_bursts, "steady": bench_steady, "load": bench_mode}[args.kind]
            report["modes"][mode] = await bench(args, mode, bootstrap, redis_url, uid)
        except Exception as exc:  # report what ran; the next mode still runs
            print(f"[{mode}] failed: {exc}", file=sys.stderr, flush=True)
            report["modes"][mode] = {"mode": mode, "error": f"{type(exc).__name__}: {exc}"}
    report["wall_s"] = round(time.monotonic() - began, 1)
    report["machine"]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python scripts/bench_load.py" + (
        "" if not (argv or sys.argv[1:]) else " " + " ".join(argv or sys.argv[1:])
    )
    report = asyncio.run(main_async(args, command))
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    writer = {"burst": write_burst_markdown, "steady": write_steady_markdown, "load": write_markdown}[args.kind]
    writer(out.with_suffix(".md"), report)
    print()
    print("\n".join({"burst": burst_table, "steady": steady_table, "load": table}[args.kind](report["modes"])))
    print(f"\nwrote {out} and {out.with_suffix('.md')} ({report['wall_s']} s)")
    return 0 if all("error" not in r for r in report["modes"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
