"""/healthz, /readyz and /metrics over a real socket (in-process bus and store: no services needed)."""

from __future__ import annotations

import asyncio
import json

import pytest

from daemon.app import Daemon
from daemon.cli.main import main
from daemon.io.memory import MemoryBroker, MemoryInput, MemoryOutput
from daemon.ops.server import check
from daemon.settings import Settings, load_settings
from daemon.state.memory import MemoryStateStore
from tests.support.launcher import bar_series, running_daemon, wait_until
from tests.support.stub_forecaster import StubForecaster

pytestmark = pytest.mark.timeout(30)


def _settings() -> Settings:
    return load_settings(
        kafka={"input_topic": "in", "output_topic": "out", "dead_letter_topic": "dlq", "group_id": "g"},
        model={"max_context": 16, "horizon": 3},
        batch={"max_wait_ms": 10},
        http_host="127.0.0.1",
        http_port=0,
        health_stale_s=5,
    )


async def _get(port: int, path: str, accept: str | None = None) -> tuple[int, str, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    extra = "" if accept is None else f"Accept: {accept}\r\n"
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    ctype = next(line.split(": ", 1)[1] for line in lines if line.lower().startswith("content-type"))
    return int(lines[0].split()[1]), ctype, body


def _parts(broker: MemoryBroker) -> dict[str, object]:
    return {
        "bus_in": MemoryInput(broker, "in", "g"),
        "bus_out": MemoryOutput(broker),
        "store": MemoryStateStore(),
    }


async def test_health_readiness_and_metrics() -> None:
    broker = MemoryBroker(default_partitions=2)
    for key, value in bar_series("A", 5):
        broker.append("in", key, value)
    broker.append("in", b"A", b"{oops")
    async with running_daemon(_settings(), StubForecaster(max_context=16), **_parts(broker)) as d:
        assert d.ops is not None
        port = d.ops.port
        await wait_until(lambda: len(broker.messages("out")) == 5, 10, "5 forecasts")

        status, ctype, body = await _get(port, "/healthz")
        assert status == 200 and ctype == "application/json" and json.loads(body)["ok"] is True
        status, _, body = await _get(port, "/readyz")
        ready = json.loads(body)
        assert status == 200 and ready["model_loaded"] and ready["partitions"] == ["in/0", "in/1"]
        assert ready["model_version"] == "stub-1"

        status, ctype, body = await _get(port, "/metrics")
        text = body.decode()
        assert status == 200 and ctype.startswith("text/plain")
        for line in (
            "kronos_bars_in_total 5.0",  # valid bars only
            "kronos_forecasts_out_total 5.0",
            'kronos_invalid_messages_total{kind="json"} 1.0',
            'kronos_invalid_messages_total{kind="schema"} 0.0',  # pre-initialised
            'kronos_skipped_total{reason="out_of_order"} 0.0',
            'kronos_skipped_total{reason="replayed"} 0.0',
            "process_cpu_seconds_total",
            "python_info{",
            'kronos_model_info{mode="exact",version="stub-1"} 1.0',
            "kronos_assigned_partitions 2.0",
        ):
            assert line in text, line
        for name in (
            "kronos_latency_from_bar_seconds_bucket",
            "kronos_latency_from_consume_seconds_count",
            "kronos_batch_size_bucket",
            "kronos_model_step_seconds_sum",
            'kronos_consumer_lag_messages{partition="0",topic="in"}',
        ):
            assert name in text, name

        status, ctype, body = await _get(port, "/metrics", accept="application/openmetrics-text; version=1.0.0")
        assert status == 200 and ctype.startswith("application/openmetrics-text")
        assert body.decode().rstrip().endswith("# EOF")

        assert (await _get(port, "/nope"))[0] == 404
        assert await asyncio.to_thread(check, f"http://127.0.0.1:{port}/healthz")
        assert await asyncio.to_thread(main, ["check", "--url", f"http://127.0.0.1:{port}/readyz"]) == 0

        d.request_stop()  # not ready while shutting down
        assert (await _get(port, "/readyz"))[0] == 503
    assert not await asyncio.to_thread(check, f"http://127.0.0.1:{port}/healthz", 1.0)


async def test_not_ready_before_start_and_registries_are_per_instance() -> None:
    a, b = Daemon(_settings(), forecaster=StubForecaster()), Daemon(_settings(), forecaster=StubForecaster())
    assert a.metrics.registry is not b.metrics.registry
    a.metrics.forecasts_out.inc()
    assert b.metrics.registry.get_sample_value("kronos_forecasts_out_total") == 0
    ok, details = a.ready()
    assert not ok and details["assignment_received"] is False
    assert a.live()[0]  # alive while starting


async def test_a_stalled_loop_fails_the_liveness_probe() -> None:
    broker = MemoryBroker()
    async with running_daemon(_settings(), StubForecaster(max_context=16), **_parts(broker)) as d:
        await asyncio.sleep(0.1)  # the loop is running and ticking
        assert d.live()[0]
        assert d.loop is not None
        d.loop.last_tick -= 60  # as if the loop had been stuck for a minute
        ok, details = d.live()
        assert not ok and details["last_tick_age_s"] >= 60
