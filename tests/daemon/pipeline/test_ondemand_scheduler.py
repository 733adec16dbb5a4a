"""The on-demand scheduler's logic with fakes: the stream first on the model thread, coalescing,
the batch cap, the bounded queue and readiness (daemon/model/runner.py, daemon/pipeline/ondemand.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from daemon.api.limits import Ask, History, OnDemandError
from daemon.model.runner import ModelExecutor
from daemon.pipeline.ondemand import OnDemandService
from daemon.settings import ApiSettings
from tests.support.stub_forecaster import StubForecaster

ASK = Ask(4, 4, (0.1, 0.5, 0.9))


def history(symbol: str, n: int = 20) -> History:
    ts = [1_718_674_200_000_000_000 + 60_000_000_000 * i for i in range(n)]
    close = 10 * np.exp(np.cumsum(np.full(n, 0.001)))
    values = np.stack([close, close * 1.001, close * 0.999, close, np.full(n, 100.0), close * 100], axis=1)
    return History(symbol, ts, values)


def service(stub: StubForecaster, **limits: int) -> tuple[OnDemandService, ModelExecutor]:
    ex = ModelExecutor()
    svc = OnDemandService(ApiSettings(**limits), ASK, forecaster=lambda: stub)
    svc.attach(ex)
    return svc, ex


async def test_background_work_waits_while_a_stream_call_is_waiting() -> None:
    ex = ModelExecutor()
    order: list[str] = []
    gate = threading.Event()
    loop = asyncio.get_running_loop()

    def stream_call(name: str) -> None:
        if name == "s1":
            gate.wait(5)
        order.append(name)

    s1 = loop.run_in_executor(ex, stream_call, "s1")
    s2 = loop.run_in_executor(ex, stream_call, "s2")
    background = asyncio.create_task(ex.run_when_idle(order.append, "b"))
    await asyncio.sleep(0.05)
    assert ex.stream_waiting == 2 and not background.done()  # the stream's calls come first
    gate.set()
    await asyncio.gather(s1, s2, background)
    assert order == ["s1", "s2", "b"]
    ex.shutdown()


async def test_a_stream_call_waits_for_at_most_the_one_background_call_running() -> None:
    ex = ModelExecutor()
    order: list[str] = []
    loop = asyncio.get_running_loop()

    def slow(name: str) -> None:
        time.sleep(0.1)
        order.append(name)

    b1 = asyncio.create_task(ex.run_when_idle(slow, "b1"))
    b2 = asyncio.create_task(ex.run_when_idle(slow, "b2"))
    await asyncio.sleep(0.02)  # b1 runs; b2 waits its turn
    stream = loop.run_in_executor(ex, order.append, "stream")
    await asyncio.gather(b1, b2, stream)
    assert order == ["b1", "stream", "b2"]
    ex.shutdown()


async def test_background_work_waits_for_the_stream_to_be_quiet_at_most_max_defer() -> None:
    ex = ModelExecutor()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(ex, time.sleep, 0.01)
    t0 = time.monotonic()
    await ex.run_when_idle(time.sleep, 0, quiet_s=0.3, max_defer_s=5.0)
    assert time.monotonic() - t0 >= 0.25  # quiet for 0.3 s after the stream's last call
    await loop.run_in_executor(ex, time.sleep, 0.01)
    t0 = time.monotonic()
    await ex.run_when_idle(time.sleep, 0, quiet_s=5.0, max_defer_s=0.2)
    assert 0.15 <= time.monotonic() - t0 < 2.0  # never deferred past max_defer_s
    ex.shutdown()


async def test_concurrent_requests_coalesce_into_capped_batches_of_one_ask() -> None:
    stub = StubForecaster(delay_ms=30)
    svc, ex = service(stub, ondemand_batch=4)
    other = Ask(6, 4, (0.1, 0.5, 0.9))
    asks = [ASK] * 6 + [other] * 2
    out = await asyncio.gather(*(svc.forecast(history(f"S{i}"), a) for i, a in enumerate(asks)))
    assert [len(c) for c in stub.calls] == [4, 2, 2]  # the same ask, up to the cap; then the other ask
    assert sum(svc.calls) == 8 and max(svc.calls) <= 4
    assert [m["horizon"] for m in out] == [4] * 6 + [6] * 2
    assert {m["symbol"] for m in out} == {f"S{i}" for i in range(8)}
    await svc.close()
    ex.shutdown()


async def test_a_full_queue_answers_429_with_retry_after() -> None:
    stub = StubForecaster(delay_ms=200)
    svc, ex = service(stub, ondemand_queue=2, ondemand_batch=1)
    first = asyncio.create_task(svc.forecast(history("A"), ASK))
    await asyncio.sleep(0.05)  # A is in the model; B and C fill the queue
    waiting = [asyncio.create_task(svc.forecast(history(s), ASK)) for s in "BC"]
    await asyncio.sleep(0)
    with pytest.raises(OnDemandError) as err:
        await svc.forecast(history("D"), ASK)
    assert err.value.status == 429 and int(err.value.headers["Retry-After"]) >= 1
    assert "KRONOS_API__ONDEMAND_QUEUE=2" in err.value.message
    await asyncio.gather(first, *waiting)
    await svc.close()
    ex.shutdown()


async def test_no_model_answers_503() -> None:
    svc = OnDemandService(ApiSettings(), ASK, forecaster=lambda: None)
    with pytest.raises(OnDemandError) as err:
        await svc.forecast(history("A"), ASK)
    assert err.value.status == 503 and "not loaded" in err.value.message


async def test_the_message_has_the_asked_samples_and_levels_and_model_probabilities() -> None:
    stub = StubForecaster()
    svc, ex = service(stub)
    msg = await svc.forecast(history("A"), Ask(5, 16, (0.05, 0.5, 0.95)))
    assert msg["sample_count"] == 16 and msg["quantile_levels"] == [0.05, 0.5, 0.95]
    assert set(msg["quantiles"]) == {"p5", "p50", "p95"} and msg["bands"] == "model"
    assert msg["source"]["topic"] == "api" and len(msg["probabilities"]["p_up"]) == 5
    assert stub.sample_count == 4  # the stream's forecaster is untouched
    await svc.close()
    ex.shutdown()


async def test_closing_answers_the_batch_in_flight_and_the_queue_with_503() -> None:
    stub = StubForecaster(delay_ms=300)
    svc, ex = service(stub, ondemand_batch=1)
    asked = [asyncio.create_task(svc.forecast(history(s), ASK)) for s in "AB"]
    await asyncio.sleep(0.05)  # A in the model, B queued
    await svc.close()
    for task in asked:
        with pytest.raises(OnDemandError) as err:
            await task
        assert err.value.status == 503 and "stopping" in err.value.message
    ex.shutdown()
