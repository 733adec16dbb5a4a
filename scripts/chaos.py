"""Chaos run (not a test): the faults of issue #9, a 10,000-message fuzz and a 1,000-symbol soak against
a daemon process and private Kafka and Redis servers this script starts (never the shared ones).

    KAFKA_JARS_DIR=... PYTHONPATH=$PWD .venv/bin/python scripts/chaos.py [--quick]

The daemon runs as ``python -m daemon run`` with the deterministic stub forecaster of the tests
(tests/support/stub_forecaster.py): the run exercises the daemon, not the model. A supervisor restarts
it whenever it exits, as Kubernetes would, and counts the exits. Phases run one after the other; each
has its own symbols, so the output topic (read once at the end with ``read_committed``) tells per phase:

- lost: valid new bars without a forecast; duplicated: forecasts seen more than once (same id);
- dead-lettered: messages that reached the dead-letter topic during the phase;
- recovery s: from the end of the fault (service back, process restarted) to the next forecast out;
- memory per symbol (soak): daemon RSS growth / symbols, Redis MEMORY USAGE of a symbol's keys.

Writes results/chaos.json and results/chaos.md. Bounded: every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from daemon.errors import InvalidBar
from daemon.io.messages import forecast_id, parse_bar
from daemon.state.base import bars_key, forecast_key, meta_key, tokens_key
from tests.support.launcher import committed_offsets, end_offsets, launch_daemon
from tests.support.private_services import PrivateKafka, PrivateRedis, free_port, kafka_jars

ROOT = Path(__file__).resolve().parents[1]

MODEL_VERSION = "stub-1"
MAX_CONTEXT = 32
Record = tuple[bytes | None, bytes | None]


def bar(symbol: str, when: datetime, price: float, **over: Any) -> Record:
    rec: dict[str, Any] = {
        "symbol": symbol, "ts": when.isoformat().replace("+00:00", "Z"),
        "open": round(price * 0.999, 6), "high": round(price * 1.002, 6), "low": round(price * 0.997, 6),
        "close": price, "volume": 1000.0, "amount": round(1000.0 * price, 4),
    }  # fmt: skip
    rec.update(over)
    return symbol.encode(), json.dumps(rec).encode()


def series(symbol: str, n: int, start: datetime, seed: int = 0) -> list[Record]:
    rng = random.Random(f"{symbol}-{seed}")
    price = 10 + 90 * rng.random()
    out = []
    for i in range(n):
        price *= math.exp(rng.gauss(0, 0.002))
        out.append(bar(symbol, start + timedelta(minutes=i), round(price, 4)))
    return out


def interleave(groups: list[list[Record]]) -> list[Record]:
    return [g[i] for i in range(max(map(len, groups), default=0)) for g in groups if i < len(g)]


@dataclass
class Phase:
    name: str
    prefix: str  # symbols of this phase start with it
    expected: set[str] = field(default_factory=set)  # forecast ids the phase must produce
    dead_before: int = 0
    dead_after: int = 0
    recovery_s: float | None = None
    crashes: int = 0
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


class Chaos:
    def __init__(self, workdir: Path, quick: bool) -> None:
        self.workdir = workdir
        self.quick = quick
        jars = kafka_jars()
        if jars is None:
            raise SystemExit("no Kafka jars: set KAFKA_JARS_DIR (or KRONOS_CACHE_DIR) to scripts/services' cache")
        (workdir / "kafka").mkdir()
        (workdir / "redis").mkdir()
        self.kafka = PrivateKafka(workdir / "kafka", jars)
        self.redis = PrivateRedis(workdir / "redis", persistent=True)
        self.http_port = free_port()
        self.topics = {"input": "chaos-bars", "output": "chaos-forecasts", "dead": "chaos-bars.dlq"}
        self.group = "chaos"
        self.proc: subprocess.Popen[bytes] | None = None
        self.exactly_once = False
        self.crashes = 0
        self.expected_exit = False
        self.log = workdir / "daemon.log"
        self.phases: list[Phase] = []
        self._supervisor: asyncio.Task[None] | None = None
        self.rss_samples: list[tuple[float, int]] = []

    # -- services and the daemon -------------------------------------------------------------------

    async def start_services(self) -> None:
        await asyncio.gather(self.kafka.start(), self.redis.start())
        admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([
                NewTopic(self.topics["input"], 3, 1), NewTopic(self.topics["output"], 3, 1),
                NewTopic(self.topics["dead"], 1, 1),
            ])  # fmt: skip
        finally:
            await admin.close()

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KRONOS_")}
        env.update({
            "KRONOS_KAFKA__BOOTSTRAP_SERVERS": self.kafka.bootstrap,
            "KRONOS_KAFKA__INPUT_TOPIC": self.topics["input"],
            "KRONOS_KAFKA__OUTPUT_TOPIC": self.topics["output"],
            "KRONOS_KAFKA__DEAD_LETTER_TOPIC": self.topics["dead"],
            "KRONOS_KAFKA__GROUP_ID": self.group,
            "KRONOS_KAFKA__GROUP_INSTANCE_ID": "chaos-0",
            "KRONOS_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "KRONOS_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
            "KRONOS_KAFKA__EXACTLY_ONCE": str(self.exactly_once).lower(),
            "KRONOS_REDIS__URL": self.redis.url,
            "KRONOS_REDIS__KEY_PREFIX": "chaos",
            "KRONOS_MODEL__FACTORY": "tests.support.stub_forecaster:build",
            "KRONOS_MODEL__MAX_CONTEXT": str(MAX_CONTEXT),
            "KRONOS_MODEL__HORIZON": "4",
            "KRONOS_MODEL__SAMPLE_COUNT": "4",
            "KRONOS_BATCH__MAX_BATCH_SIZE": "500",
            "KRONOS_HTTP_PORT": str(self.http_port),
            "KRONOS_LOG_LEVEL": "WARNING",
            "STUB_FORECASTER_DELAY_MS": os.environ.get("CHAOS_MODEL_DELAY_MS", "0"),
        })  # fmt: skip
        return env

    def spawn(self) -> None:
        self.proc = launch_daemon(self.env(), self.log)

    async def supervise(self) -> None:
        """Restart the daemon when it exits unexpectedly (after 1 s, as a pod restart would)."""
        while True:
            await asyncio.sleep(0.2)
            if self.proc is not None and self.proc.poll() is not None and not self.expected_exit:
                self.crashes += 1
                print(f"  daemon exited with {self.proc.returncode}; restarting", flush=True)
                await asyncio.sleep(1.0)
                self.spawn()

    async def stop_daemon(self, sig: int = signal.SIGTERM) -> None:
        self.expected_exit = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            await asyncio.to_thread(self.proc.wait, 60)
        self.proc = None

    async def start_daemon(self) -> None:
        self.expected_exit = False
        self.spawn()

    def rss(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return 0
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def probe(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0

    # -- Kafka helpers ------------------------------------------------------------------------------

    async def produce(self, records: list[Record], max_request_size: int = 1_048_576) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.kafka.bootstrap, acks="all", enable_idempotence=True,
            max_request_size=max_request_size, linger_ms=5,
        )  # fmt: skip
        try:
            await producer.start()
            for i in range(0, len(records), 2000):
                acks = [await producer.send(self.topics["input"], key=k, value=v) for k, v in records[i : i + 2000]]
                await asyncio.gather(*acks)
        finally:
            await producer.stop()

    async def ends(self, topic: str) -> int:
        return sum((await end_offsets(self.kafka.bootstrap, topic)).values())

    async def committed(self) -> int:
        return sum((await committed_offsets(self.kafka.bootstrap, self.group, self.topics["input"])).values())

    async def drained(self, timeout_s: float) -> bool:
        """Wait until the group committed the end of the input topic."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if await self.committed() >= await self.ends(self.topics["input"]):
                    return True
            self.rss_samples.append((time.monotonic(), self.rss()))
            await asyncio.sleep(0.5)
        return False

    async def next_output(self, since: int, timeout_s: float) -> float | None:
        """Seconds until the output topic grows past ``since`` (None on timeout)."""
        began = time.monotonic()
        while time.monotonic() - began < timeout_s:
            with contextlib.suppress(Exception):
                if await self.ends(self.topics["output"]) > since:
                    return round(time.monotonic() - began, 2)
            await asyncio.sleep(0.2)
        return None

    async def read_all(self, topic: str, isolation: str = "read_committed") -> list[Any]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.kafka.bootstrap, isolation_level=isolation, auto_offset_reset="earliest",
            enable_auto_commit=False, max_partition_fetch_bytes=4 << 20,
        )  # fmt: skip
        await consumer.start()
        try:
            await consumer._client.force_metadata_update()  # noqa: SLF001
            parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            out: list[Any] = []
            quiet = time.monotonic()
            while time.monotonic() - quiet < 3.0:
                batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
                for recs in batch.values():
                    out += recs
                    quiet = time.monotonic()
            return out
        finally:
            await consumer.stop()

    # -- phases -----------------------------------------------------------------------------------

    def expect(self, phase: Phase, records: list[Record]) -> None:
        """Add the forecast ids of the valid, new bars among ``records`` (in per-symbol order)."""
        last: dict[str, int] = phase.extra.setdefault("_last", {})
        for key, value in records:
            try:
                b = parse_bar(key, value)
            except InvalidBar:
                continue
            if b.ts_ns > time.time() * 1e9 + 300e9 or (b.symbol in last and b.ts_ns <= last[b.symbol]):
                continue  # too far ahead (dead-lettered) or not new (skipped)
            last[b.symbol] = b.ts_ns
            phase.expected.add(forecast_id(b.symbol, b.ts_ns, MODEL_VERSION))

    async def run_phase(self, phase: Phase, body: Any) -> None:
        print(f"phase: {phase.name}", flush=True)
        self.phases.append(phase)
        began = time.monotonic()
        crashes = self.crashes
        phase.dead_before = await self.ends(self.topics["dead"])
        try:
            await asyncio.wait_for(body(phase), timeout=420)
        except TimeoutError:
            phase.notes.append("phase timed out")
        if not await self.drained(120):
            phase.notes.append("input not fully committed within 120 s")
        phase.dead_after = await self.ends(self.topics["dead"])
        phase.crashes = self.crashes - crashes
        phase.seconds = round(time.monotonic() - began, 1)

    async def steady(self, prefix: str, symbols: int, bars: int, start: datetime, every_s: float, phase: Phase) -> None:
        """Stream ``bars`` rounds of ``symbols`` bars, one round every ``every_s`` seconds (retrying a
        round while the broker is away)."""
        groups = [series(f"{prefix}{k:02d}", bars, start, seed=k) for k in range(symbols)]
        for i in range(bars):
            round_ = [g[i] for g in groups]
            self.expect(phase, round_)
            deadline = time.monotonic() + 90
            while True:
                try:
                    await asyncio.wait_for(self.produce(round_), 10)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
            await asyncio.sleep(every_s)

    async def baseline(self, p: Phase) -> None:
        records = interleave([series(f"{p.prefix}{k:02d}", 10, T0) for k in range(20)])
        self.expect(p, records)
        await self.produce(records)

    async def poison(self, p: Phase) -> None:
        """Faults 1-3: timestamps outside ns datetimes, a far-future bar, an invalid message just under
        the broker's size limit; each between valid bars of the same symbols."""
        good = [series(f"{p.prefix}{k}", 12, T0) for k in range(3)]
        bad = [
            bar(f"{p.prefix}0", T0, 10.0, ts="9999-12-31T23:59:59Z"),
            bar(f"{p.prefix}0", T0, 10.0, ts="0001-01-01T00:00:00Z"),
            bar(f"{p.prefix}1", datetime.now(UTC) + timedelta(days=365), 10.0),
            (f"{p.prefix}2".encode(), b"x" * 1_040_000),  # with the dead-letter headers: over 1 MiB
        ]
        records = [*[g[i] for i in range(6) for g in good], *bad, *[g[i] for i in range(6, 12) for g in good]]
        self.expect(p, records)
        p.extra["invalid_sent"] = len(bad)
        await self.produce(records, max_request_size=2 << 20)

    async def redis_down(self, p: Phase) -> None:
        """Fault 4: Redis stopped for 20 s mid-stream (its data kept), bars keep coming."""
        stream = asyncio.create_task(self.steady(p.prefix, 10, 40, T0, 1.0, p))
        await asyncio.sleep(5)
        self.redis.stop()
        await asyncio.sleep(2)
        p.extra["readyz_during"] = self.probe("/readyz")
        await asyncio.sleep(18)
        before = await self.ends(self.topics["output"])
        await self.redis.start()
        p.recovery_s = await self.next_output(before, 60)
        await stream

    async def redis_empty(self, p: Phase) -> None:
        """Fault 5: Redis restarted empty; the next forecasts should use the restored context."""
        history = interleave([series(f"{p.prefix}{k}", 20, T0, seed=k) for k in range(5)])
        self.expect(p, history)
        await self.produce(history)
        await self.drained(60)
        self.redis.stop()
        self.redis.wipe()
        await self.redis.start()
        before = await self.ends(self.topics["output"])
        after = interleave([series(f"{p.prefix}{k}", 25, T0, seed=k)[20:] for k in range(5)])
        self.expect(p, after)
        await self.produce(after)
        p.recovery_s = await self.next_output(before, 60)
        p.extra["after_ids"] = sorted(forecast_id(parse_bar(k, v).symbol, parse_bar(k, v).ts_ns, MODEL_VERSION) for k, v in after)

    async def broker_down(self, p: Phase) -> None:
        """Fault 6: the broker killed for 20 s; readiness should say 503 meanwhile."""
        stream = asyncio.create_task(self.steady(p.prefix, 10, 30, T0, 1.0, p))
        await asyncio.sleep(5)
        self.kafka.stop()
        codes = []
        for _ in range(18):
            await asyncio.sleep(1)
            codes.append(self.probe("/readyz"))
        p.extra["readyz_during"] = dict(Counter(codes))
        await self.kafka.start()
        before = await self.ends(self.topics["output"])
        p.recovery_s = await self.next_output(before, 90)
        await stream

    async def restart(self, p: Phase) -> None:
        """Fault 7: a plain restart (SIGTERM, start again): seconds until forecasts flow again."""
        await self.stop_daemon(signal.SIGTERM)
        before = await self.ends(self.topics["output"])
        await self.start_daemon()
        records = interleave([series(f"{p.prefix}{k}", 5, T0) for k in range(5)])
        self.expect(p, records)
        await self.produce(records)
        p.recovery_s = await self.next_output(before, 60)

    async def sigkills(self, p: Phase) -> None:
        """SIGKILL x10 with exactly-once on, while bars stream in."""
        await self.stop_daemon()
        self.exactly_once = True
        await self.start_daemon()
        kills = 4 if self.quick else 10
        stream = asyncio.create_task(self.steady(p.prefix, 12, 6 * kills + 8, T0, 2.0, p))
        rng = random.Random(7)
        recoveries = []
        for _ in range(kills):
            before = await self.ends(self.topics["output"])
            if await self.next_output(before, 60) is None:
                break
            await asyncio.sleep(rng.uniform(0.0, 1.0))
            self.expected_exit = True
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(self.proc.wait, 30)
            before = await self.ends(self.topics["output"])
            await self.start_daemon()
            recoveries.append(await self.next_output(before, 60))
        p.recovery_s = max((r for r in recoveries if r is not None), default=None)
        p.extra["kills"] = len(recoveries)
        await stream

    async def fuzz(self, p: Phase) -> None:
        """10,000 messages: valid bars mixed with garbage of many kinds."""
        n = 2_000 if self.quick else 10_000
        rng = random.Random(11)
        records: list[Record] = []
        clocks = {f"{p.prefix}{k:02d}": 0 for k in range(50)}
        kinds = Counter()
        for _ in range(n):
            sym = rng.choice(list(clocks))
            when = T0 + timedelta(minutes=clocks[sym])
            kind = rng.choice(["valid"] * 6 + ["bytes", "json", "fields", "nan", "text-number", "ts", "ts-range",
                                                "future", "no-key", "wrong-key", "negative", "high-low", "symbol",
                                                "big", "old", "array"])  # fmt: skip
            kinds[kind] += 1
            if kind == "valid":
                clocks[sym] += 1
                records.append(bar(sym, when, 10 + rng.random()))
            elif kind == "bytes":
                records.append((sym.encode(), rng.randbytes(rng.randint(0, 200))))
            elif kind == "json":
                records.append((sym.encode(), bar(sym, when, 10.0)[1][: rng.randint(0, 60)]))
            elif kind == "fields":
                rec = json.loads(bar(sym, when, 10.0)[1])
                rec.pop(rng.choice(["ts", "open", "close", "symbol", "volume"]))
                records.append((sym.encode(), json.dumps(rec).encode()))
            elif kind == "nan":
                records.append((sym.encode(), bar(sym, when, 10.0)[1].replace(b'"close": 10.0', b'"close": NaN')))
            elif kind == "text-number":
                records.append(bar(sym, when, 10.0, close="10.0"))
            elif kind == "ts":
                records.append(bar(sym, when, 10.0, ts=rng.choice(["yesterday", "2024-13-01T00:00:00Z", "", 17, None])))
            elif kind == "ts-range":
                records.append(bar(sym, when, 10.0, ts=rng.choice(["9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z"])))
            elif kind == "future":
                records.append(bar(sym, datetime.now(UTC) + timedelta(days=rng.randint(1, 3000)), 10.0))
            elif kind == "no-key":
                records.append((None, bar(sym, when, 10.0)[1]))
            elif kind == "wrong-key":
                records.append((b"OTHER", bar(sym, when, 10.0)[1]))
            elif kind == "negative":
                records.append(bar(sym, when, -10.0))
            elif kind == "high-low":
                records.append(bar(sym, when, 10.0, high=1.0))
            elif kind == "symbol":
                records.append(bar("X" * 100, when, 10.0))
            elif kind == "big":
                records.append((sym.encode(), b'{"symbol": "' + b"Z" * 300_000 + b'"}'))
            elif kind == "old":  # a valid bar that is not new: skipped (counted, not dead-lettered)
                records.append(bar(sym, T0 - timedelta(days=1), 10.0))
            elif kind == "array":
                records.append((sym.encode(), b"[1, 2, 3]"))
        self.expect(p, records)
        invalid = 0
        for k, v in records:
            try:
                b = parse_bar(k, v)
                invalid += b.ts_ns > time.time() * 1e9 + 300e9
            except InvalidBar:
                invalid += 1
        p.extra.update(messages=n, invalid_sent=invalid, kinds=dict(kinds))
        await self.produce(records, max_request_size=2 << 20)

    async def soak(self, p: Phase) -> None:
        """1,000 symbols: RSS before, once every ring is full (MAX_CONTEXT bars), and after as many more."""
        symbols = 200 if self.quick else 1000
        groups = [series(f"{p.prefix}{k:04d}", 2 * MAX_CONTEXT, T0, seed=k) for k in range(symbols)]
        await self.drained(60)
        rss0 = self.rss()
        for label, lo, hi in (("full", 0, MAX_CONTEXT), ("end", MAX_CONTEXT, 2 * MAX_CONTEXT)):
            chunk = interleave([g[lo:hi] for g in groups])
            self.expect(p, chunk)
            await self.produce(chunk)
            if not await self.drained(300):
                p.notes.append(f"soak {label}: not drained in 300 s")
            p.extra[f"rss_{label}"] = self.rss()
        client = aioredis.Redis.from_url(self.redis.url)
        try:
            sizes = []
            for k in range(0, symbols, max(1, symbols // 50)):
                s = f"{p.prefix}{k:04d}"
                used = [await client.memory_usage(f(("chaos"), s)) or 0 for f in (bars_key, tokens_key, meta_key, forecast_key)]
                sizes.append(sum(used))
            info = await client.info("memory")
        finally:
            await client.aclose()
        p.extra.update(
            symbols=symbols, rss_before=rss0,
            process_bytes_per_symbol=round((p.extra["rss_full"] - rss0) / symbols),
            rss_growth_second_half=p.extra["rss_end"] - p.extra["rss_full"],
            redis_bytes_per_symbol=round(sum(sizes) / len(sizes)), redis_used_memory=info.get("used_memory"),
        )  # fmt: skip

    # -- the run ------------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        await self.start_services()
        print(f"services up in {time.monotonic() - t0:.0f} s", flush=True)
        await self.start_daemon()
        self._supervisor = asyncio.create_task(self.supervise())
        try:
            phases = [
                ("baseline", "BASE", self.baseline),
                ("poison: ts out of range, far future, oversize dead letter (faults 1-3)", "PSN", self.poison),
                ("Redis down 20 s (fault 4)", "RDN", self.redis_down),
                ("Redis restarted empty (fault 5)", "REM", self.redis_empty),
                ("broker down 20 s (fault 6)", "KDN", self.broker_down),
                ("plain restart (fault 7)", "RST", self.restart),
                ("fuzz", "FZ", self.fuzz),
                ("soak", "SK", self.soak),
                ("SIGKILL x10, exactly-once", "EOS", self.sigkills),
            ]
            for name, prefix, body in phases:
                await self.run_phase(Phase(name, prefix), body)
        finally:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            await self.stop_daemon()
        return await self.report(time.monotonic() - t0)

    async def report(self, total_s: float) -> dict[str, Any]:
        committed = await self.read_all(self.topics["output"])
        counts: Counter[str] = Counter()
        by_id: dict[str, dict[str, Any]] = {}
        for r in committed:
            f = json.loads(r.value)
            counts[f["id"]] += 1
            by_id[f["id"]] = f
        rows = []
        for p in self.phases:
            ids = {i for i, f in by_id.items() if f["symbol"].startswith(p.prefix)}
            row: dict[str, Any] = {
                "phase": p.name, "expected": len(p.expected), "lost": len(p.expected - ids),
                "duplicated": sum(counts[i] - 1 for i in ids), "dead_lettered": p.dead_after - p.dead_before,
                "recovery_s": p.recovery_s, "daemon_exits": p.crashes, "seconds": p.seconds, "notes": p.notes,
            }  # fmt: skip
            extra = {k: v for k, v in p.extra.items() if not k.startswith("_") and k != "after_ids"}
            if "after_ids" in p.extra:
                contexts = [by_id[i]["context_bars"] for i in p.extra["after_ids"] if i in by_id]
                extra["context_bars_after_wipe"] = sorted(Counter(contexts).items())
            row.update(extra)
            rows.append(row)
        return {"total_s": round(total_s, 1), "quick": self.quick, "model": "stub forecaster (tests/support)",
                "max_context": MAX_CONTEXT, "phases": rows}  # fmt: skip


T0 = datetime(2024, 6, 18, 1, 30, tzinfo=UTC)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Chaos run", "",
        f"`scripts/chaos.py`{' --quick' if report['quick'] else ''}: one run, {report['total_s']} s, private Kafka and "
        f"Redis, the daemon as a process with the {report['model']}, max_context {report['max_context']}. "
        "lost/duplicated: forecasts of the phase's valid new bars, read once at the end with read_committed "
        "(phases before the SIGKILL one run at-least-once, where a replay may publish an id twice).", "",
        "| fault | expected | lost | duplicated | dead-lettered | recovery s | daemon exits | memory per symbol | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]  # fmt: skip
    for r in report["phases"]:
        mem = ""
        if "process_bytes_per_symbol" in r:
            mem = (f"process {r['process_bytes_per_symbol']:,} B, Redis {r['redis_bytes_per_symbol']:,} B "
                   f"({r['symbols']} symbols; RSS growth over the 2nd half {r['rss_growth_second_half']:,} B)")  # fmt: skip
        notes = list(r["notes"])
        for key in ("readyz_during", "context_bars_after_wipe", "kills", "invalid_sent", "messages"):
            if key in r:
                notes.append(f"{key}={r[key]}")
        lines.append(
            f"| {r['phase']} | {r['expected']} | {r['lost']} | {r['duplicated']} | {r['dead_lettered']} | "
            f"{'' if r['recovery_s'] is None else r['recovery_s']} | {r['daemon_exits']} | {mem} | {'; '.join(map(str, notes))} |"
        )
    return "\n".join(lines) + "\n"


async def amain(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="kronos-chaos-") as tmp:
        chaos = Chaos(Path(tmp), args.quick)
        try:
            report = await chaos.run()
        finally:
            chaos.kafka.stop()
            chaos.redis.stop()
            if args.keep_log:
                args.keep_log.write_bytes(chaos.log.read_bytes() if chaos.log.exists() else b"")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


def main() -> int:
    import logging

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # refused connections are the point here
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer kills, a 2,000-message fuzz, 200 soak symbols")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "chaos")
    parser.add_argument("--keep-log", type=Path, help="copy the daemon's log here")
    return asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
