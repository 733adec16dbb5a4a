"""The parts of scripts/services that are easier in Python than in bash.

    free-ports N                        print N distinct free TCP ports on 127.0.0.1
    cluster-id                          print a fresh Kafka cluster id
    spawn PIDFILE LOG -- CMD...         start CMD in its own session (so its own process group),
                                        output to LOG, and write its pid to PIDFILE
    wait kafka|redis|redis-secure ADDRESS PIDFILE T
                                        exit 0 once the service at ADDRESS answers a real request,
                                        1 after T seconds, 2 as soon as the process in PIDFILE is gone
                                        (redis-secure: over TLS, as the admin of users.env beside PIDFILE)

Run with the project's .venv python (aiokafka and redis come from there).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

POLL_INTERVAL_S = 0.2


def free_ports(count: int) -> list[int]:
    # Hold all sockets open together so the ports differ; the kernel does not hand them out
    # again right away after close.
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def cluster_id() -> str:
    # Same format as `kafka-storage random-uuid`: url-safe base64 of 16 random bytes, no padding,
    # never starting with '-' (it would read as a command-line option).
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def spawn(pidfile: Path, log: Path, cmd: list[str]) -> None:
    # Ctrl-C must not land between starting the process and recording its pid.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    pidfile.write_text(f"{proc.pid}\n")


async def _probe_kafka(address: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=address, request_timeout_ms=3000)
    await admin.start()  # bootstraps: a metadata request
    try:
        await admin.list_topics()
    finally:
        await admin.close()


async def _probe_redis(address: str) -> None:
    import redis.asyncio as redis

    host, port = address.rsplit(":", 1)
    client = redis.Redis(host=host, port=int(port), socket_timeout=3, socket_connect_timeout=3)
    try:
        if await client.ping() is not True:
            raise RuntimeError("PING did not answer PONG")
    finally:
        await client.aclose()


def _probe_redis_secure(state: Path) -> Callable[[str], Awaitable[None]]:
    async def probe(address: str) -> None:
        import redis.asyncio as redis

        host, port = address.rsplit(":", 1)
        users = dict(line.split("=", 1) for line in (state / "users.env").read_text().split())
        client = redis.Redis(
            host=host, port=int(port), ssl=True, ssl_ca_certs=str(state / "ca.crt"), password=users["admin"],
            socket_timeout=3, socket_connect_timeout=3,
        )  # fmt: skip
        try:
            if await client.ping() is not True:
                raise RuntimeError("PING did not answer PONG")
        finally:
            await client.aclose()

    return probe


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def wait(service: str, address: str, pidfile: Path, timeout_s: float) -> int:
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # refused connections are expected here
    probe = {
        "kafka": _probe_kafka,
        "redis": _probe_redis,
        "redis-secure": _probe_redis_secure(pidfile.parent),
    }[service]
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + timeout_s
    last_error = "no attempt made"
    while True:
        try:
            asyncio.run(asyncio.wait_for(probe(address), timeout=5))
            return 0
        except Exception as exc:  # any failure means "not ready yet"
            last_error = f"{type(exc).__name__}: {exc}"
        if not _alive(pid):
            print(f"{service} (pid {pid}) exited before it answered at {address}", file=sys.stderr)
            return 2
        if time.monotonic() > deadline:
            print(
                f"{service} did not answer at {address} within {timeout_s:g}s (last error: {last_error})",
                file=sys.stderr,
            )
            return 1
        time.sleep(POLL_INTERVAL_S)


def main(argv: list[str]) -> int:
    match argv:
        case ["free-ports", count]:
            print(" ".join(str(p) for p in free_ports(int(count))))
        case ["cluster-id"]:
            print(cluster_id())
        case ["spawn", pidfile, log, "--", *cmd] if cmd:
            spawn(Path(pidfile), Path(log), cmd)
        case ["wait", ("kafka" | "redis" | "redis-secure") as service, address, pidfile, timeout_s]:
            return wait(service, address, Path(pidfile), float(timeout_s))
        case _:
            print(__doc__, file=sys.stderr)
            return 64
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
