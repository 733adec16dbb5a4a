"""Fixtures of the daemon's tests (a pytest plugin, loaded by tests/conftest.py). Kafka, Redis and unique
names come from tests/conftest.py.

The model the daemons run here is kronos_core's StreamingForecaster over the tiny checkpoint in
tests/fixtures/kronos-tiny-a (on CPU, one thread), so the whole path (bars in, real model, forecasts
out) is exercised. ``DAEMON_TEST_FORECASTER=stub`` swaps in the deterministic stub
(``tests/support/stub_forecaster.py``) to tell daemon bugs from model bugs. Tests that need the stub's knobs
(injected failures, a slow model, its token cache) build a stub themselves.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from daemon.model.build import build_forecaster, checkpoint_version
from daemon.settings import load_settings
from kronos_core.stream_types import StreamForecaster
from tests.support.launcher import MakeForecaster, Topics
from tests.support.private_services import PrivateKafka, PrivateRedis, kafka_jars
from tests.support.stub_forecaster import StubForecaster

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "kronos-tiny-a"
USE_ENGINE = os.environ.get("DAEMON_TEST_FORECASTER", "engine") == "engine"


def _engine(max_context: int) -> StreamForecaster:
    model = {
        "tokenizer_dir": TINY / "tokenizer",
        "predictor_dir": TINY / "predictor",
        "max_context": max_context,
        "horizon": 4,
        "sample_count": 4,
        "device": "cpu",
        "threads": 1,
    }
    return build_forecaster(load_settings(model=model))


@pytest.fixture
def make_forecaster() -> MakeForecaster:
    """``make_forecaster(max_context)``: the model of a daemon in this process."""
    return _engine if USE_ENGINE else (lambda max_context: StubForecaster(max_context=max_context))


@pytest.fixture
def forecaster(make_forecaster: MakeForecaster) -> StreamForecaster:
    return make_forecaster(64)


@pytest.fixture
def forecaster_env() -> dict[str, str]:
    """KRONOS_MODEL__* variables giving a daemon in a subprocess the same model (PYTHONPATH gets the repository root)."""
    if USE_ENGINE:
        return {
            "KRONOS_MODEL__TOKENIZER_DIR": str(TINY / "tokenizer"),
            "KRONOS_MODEL__PREDICTOR_DIR": str(TINY / "predictor"),
            "KRONOS_MODEL__DEVICE": "cpu",
            "KRONOS_MODEL__THREADS": "1",
            "KRONOS_MODEL__FACTORY": "tests.support.stub_forecaster:build_engine",  # the engine, slowed on request
            "KRONOS_MODEL__VERSION": checkpoint_version(TINY / "tokenizer", TINY / "predictor"),
        }
    return {"KRONOS_MODEL__FACTORY": "tests.support.stub_forecaster:build"}


@pytest.fixture
def model_version() -> str:
    """The model version forecasts of ``forecaster``/``forecaster_env`` carry (part of every forecast id)."""
    return checkpoint_version(TINY / "tokenizer", TINY / "predictor") if USE_ENGINE else "stub-1"


@pytest.fixture
async def topics(topic_factory: Callable[..., Awaitable[str]]) -> Topics:
    """Input (3 partitions), output (3) and dead-letter (1) topics of this test."""
    return Topics(
        await topic_factory(partitions=3),
        await topic_factory(partitions=3),
        await topic_factory(partitions=1),
    )


def _unavailable(reason: str) -> None:
    """Skip, or fail when CI is set (as the shared services' fixtures do)."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    """A Redis server of this test only (append-only file on: a stop and start keep the data), started;
    stopped after the test. For faults that stop or restart Redis: never do that to the shared one."""
    if shutil.which("redis-server") is None:
        _unavailable("redis-server is not installed (Debian: apt-get install redis-server)")
    (tmp_path / "redis").mkdir()
    server = PrivateRedis(tmp_path / "redis")
    await server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def private_kafka(tmp_path: Path) -> AsyncIterator[PrivateKafka]:
    """A single-node Kafka broker of this test only, started; killed after the test. Needs the jars
    scripts/services caches (KAFKA_JARS_DIR, or KRONOS_CACHE_DIR/kafka/jars-*)."""
    jars = kafka_jars()
    if jars is None:
        _unavailable("no cached Kafka jars: run scripts/services up once, or set KAFKA_JARS_DIR")
    (tmp_path / "kafka").mkdir()
    broker = PrivateKafka(tmp_path / "kafka", jars)
    await broker.start()
    try:
        yield broker
    finally:
        broker.stop()
