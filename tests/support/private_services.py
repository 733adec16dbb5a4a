"""A private Redis server and a private single-node Kafka broker for fault tests that stop, kill or
restart them (the session's shared services must never be touched).

Both run on free ports of 127.0.0.1, in their own process group, with their data under a temporary
folder, and are stopped by the fixtures in conftest.py. They start the same way scripts/services does:
Debian's ``redis-server``; Kafka in KRaft mode on Java 17+ from the jars scripts/services caches. The
jars are found through ``KAFKA_JARS_DIR``, else ``$KRONOS_CACHE_DIR/kafka/jars-*`` (``KRONOS_CACHE_DIR``
defaults to this checkout's ``.cache``): they are never downloaded here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kafka_jars() -> Path | None:
    """The folder of the broker's jars, or None when no cache is found."""
    explicit = os.environ.get("KAFKA_JARS_DIR")
    if explicit:
        return Path(explicit) if (Path(explicit) / ".complete").exists() else None
    cache = Path(os.environ.get("KRONOS_CACHE_DIR", ROOT / ".cache")) / "kafka"
    found = sorted(p for p in cache.glob("jars-*") if (p / ".complete").exists())
    return found[-1] if found else None


class _Process:
    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir = workdir
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"{name}.log"

    def _spawn(self, cmd: list[str]) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL, timeout_s: float = 30.0) -> None:
        """Signal the process group and wait until the process is gone."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


class PrivateRedis(_Process):
    """``redis-server`` with an append-only file (``persistent``), so a stop and start keep the data,
    or none, so a restart comes back empty."""

    def __init__(self, workdir: Path, persistent: bool = True) -> None:
        super().__init__(workdir, "redis")
        self.port = free_port()
        self.persistent = persistent

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self, timeout_s: float = 20.0) -> None:
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        self._spawn(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", *aof,
             "--dir", str(self.workdir), "--daemonize", "no"]
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        client = aioredis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            while True:
                try:
                    if await client.ping():
                        return
                except Exception:
                    if not self.running or time.monotonic() > deadline:
                        raise RuntimeError(f"private redis did not start:\n{self.tail()}") from None
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    def stop(self) -> None:
        self.kill(signal.SIGKILL)

    def wipe(self) -> None:
        """Delete the data files (call while stopped): the next start is empty."""
        for path in self.workdir.iterdir():
            if path.name.startswith("appendonly") or path.suffix == ".rdb":
                shutil.rmtree(path) if path.is_dir() else path.unlink()


class PrivateKafka(_Process):
    """One broker + controller (KRaft) on free ports; ``stop`` kills it, ``start`` brings it back with
    the same data and ports."""

    def __init__(self, workdir: Path, jars: Path) -> None:
        super().__init__(workdir, "kafka")
        self.jars = jars
        self.port, self.controller_port = free_port(), free_port()
        self.java = os.environ.get("JAVA", "/usr/bin/java")
        props = workdir / "server.properties"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    "controller.listener.names=CONTROLLER",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={workdir / 'data'}",
                    "num.partitions=1",
                    "auto.create.topics.enable=true",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "transaction.state.log.num.partitions=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "",
                ]
            )
        )
        (workdir / "log4j2.properties").write_text(
            "appender.out.type = Console\nappender.out.name = out\nappender.out.layout.type = PatternLayout\n"
            "appender.out.layout.pattern = [%d] %p %m (%c)%n\nrootLogger.level = WARN\n"
            "rootLogger.appenderRef.out.ref = out\n"
        )
        self._jvm = [
            self.java, "-Xms128m", "-Xmx384m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={workdir / 'log4j2.properties'}",
            "-cp", f"{jars}/*",
        ]  # fmt: skip
        subprocess.run(
            [*self._jvm, "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(props)],
            check=True,
            capture_output=True,
        )

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, timeout_s: float = 120.0) -> None:
        self._spawn([*self._jvm, "kafka.Kafka", str(self.workdir / "server.properties")])
        from aiokafka.admin import AIOKafkaAdminClient

        deadline = time.monotonic() + timeout_s
        while True:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
            try:
                async with asyncio.timeout(5):
                    await admin.start()
                    await admin.list_topics()
                return
            except Exception:
                if not self.running or time.monotonic() > deadline:
                    raise RuntimeError(f"private kafka did not start:\n{self.tail()}") from None
            finally:
                with contextlib.suppress(Exception):
                    await admin.close()
            await asyncio.sleep(0.3)

    def stop(self) -> None:
        self.kill(signal.SIGKILL)


def _cluster_id() -> str:
    import base64

    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text
