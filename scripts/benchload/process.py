"""The daemon subprocess: the models it can load, its environment, start, readiness, metrics and stop."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.launcher import launch_daemon

from .publishing import BAR_INTERVAL_S

REPO = Path(__file__).resolve().parents[2]
MODELS = {
    "demo": REPO / "daemon" / "assets" / "demo-model",
    "tiny": REPO / "tests" / "fixtures" / "kronos-tiny-a",
    "stub": REPO / "tests" / "support",  # the deterministic stub forecaster: ~0 model time
}
STUB_FACTORY = "tests.support.stub_forecaster:build"  # as scripts/chaos.py loads it (repository root on the path)
PROBE_FACTORY = "scripts.benchload.probe:build"  # scripts/benchload/probe.py: counts how incremental calls served each series
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


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
