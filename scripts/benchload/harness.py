"""The load benchmark's harness: the output-topic collector, publishing, the daemon subprocess and its
environment, Kafka and Redis housekeeping, a daemon session, and the helpers every scenario shares."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from daemon.io.feeds import FeedBar
from daemon.io.messages import bar_to_json, format_ts, to_ns
from tests.support.launcher import launch_daemon

REPO = Path(__file__).resolve().parents[2]
MODELS = {
    "demo": REPO / "daemon" / "assets" / "demo-model",
    "tiny": REPO / "tests" / "fixtures" / "kronos-tiny-a",
    "stub": REPO / "tests" / "support",  # the deterministic stub forecaster: ~0 model time
}
STUB_FACTORY = "tests.support.stub_forecaster:build"  # as scripts/chaos.py loads it (repository root on the path)
PROBE_FACTORY = "benchload.probe:build"  # scripts/benchload/probe.py: counts how incremental calls served each series
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
        env.update({"KRONOS_MODEL__FACTORY": STUB_FACTORY, "STUB_FORECASTER_DELAY_MS": "0"})
    elif args.registry is not None:  # the registry's champion (and its challengers), not fixed folders
        env["KRONOS_MODEL__REGISTRY"] = str(args.registry)
        env["KRONOS_MODEL__CACHE_DIR"] = str(REPO / "results" / "tmp" / f"models-{run.uid}-{run.mode}")
    else:
        env["KRONOS_MODEL__TOKENIZER_DIR"] = str(model_dir / "tokenizer")
        env["KRONOS_MODEL__PREDICTOR_DIR"] = str(model_dir / "predictor")
    if run.mode == "incremental":  # count warm sessions, rebuilds and refreshes (scripts/benchload/probe.py)
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
    for key, value in args.env_overrides.items():  # main(env_overrides=...): after all else
        if value:
            env[key] = value
        else:
            env.pop(key, None)
    return env


class DaemonProcess:
    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self._env = env
        self.port = port
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        profile = self._env.get("BENCH_PROFILE")  # a cProfile dump of the daemon (written at exit)
        prefix = ["-m", "cProfile", "-o", profile] if profile else []
        self._proc = launch_daemon(self._env, self.log_path, python_args=prefix, append=False)

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
    from .probe import read_counts

    return read_counts(run.probe_file)
