"""Loading, vetting and swapping model versions (daemon/model/: vetting.py, swap.py, follower.py), on a
real registry folder.

No Kafka or Redis here: the follower's checks are driven by hand (the hint listener is off)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from daemon.errors import ForecasterError
from daemon.model.follower import ModelFollower
from daemon.model.swap import ModelMetrics, SwappableForecaster, pin_forecaster
from daemon.model.vetting import LoadRefused, check_smoke, load_version, runtime_overrides, smoke_windows
from daemon.settings import Settings, load_settings
from daemon.state.base import SymbolState
from kronos_contract.registry import Registry
from tests.support.hotswap import TINY, broken_copy, publish, registry_v1_v2, tamper
from tests.support.stub_forecaster import StubForecaster


def _settings(root: Path, **model: object) -> Settings:
    fields = {
        "registry": str(root),
        "registry_hint": False,
        "registry_poll_s": 3600,
        "registry_retry_s": 0.05,
        "max_context": 64,
        "horizon": 4,
        "sample_count": 4,
        "device": "cpu",
        "threads": 1,
        "cache_dir": str(root.parent / "cache"),
    }
    fields.update(model)
    return load_settings(model=fields, mode="incremental")


def _states(n_symbols: int = 2, n_bars: int = 40) -> dict[str, SymbolState]:
    rng = np.random.default_rng(0)
    out = {}
    for i in range(n_symbols):
        close = 20.0 * np.exp(np.cumsum(rng.normal(0, 0.003, n_bars)))
        bars = [
            (1_718_674_200_000_000_000 + k * 60_000_000_000, (c, c * 1.002, c * 0.997, c, 1e3, c * 1e3))
            for k, c in enumerate(close)
        ]
        out[f"S{i}"] = SymbolState(f"S{i}", 64, bars)
    return out


def _metric(registry: CollectorRegistry, result: str) -> float:
    return registry.get_sample_value("kronos_model_swaps_total", {"result": result}) or 0.0


@pytest.fixture
def registry_root(tmp_path: Path) -> Path:
    return registry_v1_v2(tmp_path)


def test_swappable_forecaster_swaps_only_at_pin() -> None:
    v1, v2 = StubForecaster(model_version="v1"), StubForecaster(model_version="v2")
    seen: list[tuple[str, str]] = []
    slot = SwappableForecaster(v1, lambda new, old: seen.append((old, new.model_version)))
    slot.offer(v2)
    assert slot.model_version == "v1" and slot.target_version == "v2" and slot.pending_version == "v2"
    assert pin_forecaster(slot) is v2
    assert slot.model_version == "v2" and slot.pending_version is None and seen == [("v1", "v2")]
    assert pin_forecaster(slot) is v2 and seen == [("v1", "v2")]
    assert pin_forecaster(v1) is v1  # a plain forecaster is its own pin
    slot.offer(v1)
    assert slot.withdraw() == "v1" and pin_forecaster(slot) is v2 and slot.withdraw() is None


def test_the_old_model_is_released_once_the_call_in_flight_is_done() -> None:
    import gc
    import weakref

    v1 = StubForecaster(model_version="v1")
    old = weakref.ref(v1)
    slot = SwappableForecaster(v1)
    del v1
    in_flight = pin_forecaster(slot)  # a model call holds v1 ...
    slot.offer(StubForecaster(model_version="v2"))
    assert pin_forecaster(slot).model_version == "v2"  # ... the next call runs v2
    gc.collect()
    assert old() is in_flight  # still alive for the call in flight
    del in_flight
    gc.collect()
    assert old() is None


def test_load_version_checks_and_smoke_tests_a_good_version(registry_root: Path, tmp_path: Path) -> None:
    settings = _settings(registry_root)
    loaded = load_version(Registry(str(registry_root)), "v2", settings, tmp_path / "c", _states())
    assert loaded.forecaster.model_version == "v2"
    assert loaded.load_s > 0 and loaded.warmup_s > 0
    assert not any((tmp_path / "c").iterdir())  # the fetched files are gone once in memory
    assert loaded.forecaster.warm_sessions == 0  # type: ignore[attr-defined]  # smoke sessions dropped


@pytest.mark.parametrize(
    ("how", "result"),
    [
        ("truncated", "load_failed"),
        ("wrong_shapes", "load_failed"),
        ("nan", "smoke_failed"),
        ("incompatible", "incompatible"),
    ],
)
def test_a_broken_version_is_refused_with_its_reason(
    registry_root: Path, tmp_path: Path, how: str, result: str
) -> None:
    reg = Registry(str(registry_root))
    publish(reg, "v3", broken_copy(TINY, tmp_path / how, how), promote=False)
    with pytest.raises(LoadRefused) as info:
        load_version(reg, "v3", _settings(registry_root), tmp_path / "c", _states())
    assert info.value.result == result, info.value.reason


def test_a_smoke_forecast_with_nan_or_wrong_shapes_is_refused() -> None:
    windows = smoke_windows(_states(), 4, 60_000_000_000)
    good = StubForecaster(max_context=64).forecast(windows, 4)
    check_smoke(good, windows, 4, 3)
    good[0].mean[2, 3] = np.nan
    with pytest.raises(LoadRefused, match="mean holds NaN"):
        check_smoke(good, windows, 4, 3)
    with pytest.raises(LoadRefused, match="shape"):
        check_smoke(StubForecaster(max_context=64).forecast(windows, 4), windows, 4, 2)
    assert smoke_windows({}, 4, 60_000_000_000)  # no bars yet: a synthetic window


def test_a_bad_checksum_is_refused(registry_root: Path, tmp_path: Path) -> None:
    tamper(registry_root, "v2")
    with pytest.raises(LoadRefused) as info:
        load_version(Registry(str(registry_root)), "v2", _settings(registry_root), tmp_path / "c", _states())
    assert info.value.result == "checksum" and "sha256" in info.value.reason


def test_a_max_context_above_the_models_is_refused(registry_root: Path) -> None:
    settings = _settings(registry_root)
    with pytest.raises(LoadRefused, match="supports at most 32 bars"):
        runtime_overrides({"runtime": {"max_context": 32}}, settings)
    runtime = {"runtime": {"max_context": 64, "calendar_tz": "Asia/Shanghai"}}
    assert runtime_overrides(runtime, settings) == {"calendar_tz": "Asia/Shanghai"}
    assert runtime_overrides(runtime, _settings(registry_root, calendar_tz="UTC")) == {}  # set: it wins


async def test_the_follower_swaps_refuses_keeps_serving_and_retries_with_backoff(
    registry_root: Path, tmp_path: Path
) -> None:
    reg = Registry(str(registry_root))
    metrics = CollectorRegistry()
    follower = ModelFollower(_settings(registry_root), ModelMetrics(metrics), states=_states)
    slot = await follower.start()
    assert slot.model_version == "v1"
    assert await follower.check() is None  # the pointer did not move

    reg.promote("v2")
    assert await follower.check() == "v2"
    assert slot.model_version == "v1"  # not before the next model call
    reg.rollback()  # the pointer goes back before any call: v2 is withdrawn, nothing is loaded
    assert await follower.check() is None and slot.target_version == "v1"
    reg.promote("v2")
    assert await follower.check() == "v2"
    assert pin_forecaster(slot).model_version == "v2"
    assert _metric(metrics, "ok") == 1

    publish(reg, "v3", broken_copy(TINY, tmp_path / "nan", "nan"), promote=True)
    assert await follower.check() is None
    assert pin_forecaster(slot).model_version == "v2" and _metric(metrics, "smoke_failed") == 1
    follower.settings = follower.settings.model_copy(
        update={"model": follower.settings.model.model_copy(update={"registry_retry_s": 3600.0})}
    )
    await follower.check()  # retried once (the first delay was 0.05 s) ...
    await follower.check()  # ... then backed off for an hour
    assert _metric(metrics, "smoke_failed") in (1, 2)
    refusals = follower._failures["v3"][0]  # noqa: SLF001
    await follower.check()
    assert follower._failures["v3"][0] == refusals  # noqa: SLF001  # not retried within the backoff

    assert reg.rollback() == "v2"  # v2 is served already: nothing to do
    assert await follower.check() is None
    assert reg.rollback() == "v1"
    assert await follower.check() == "v1"
    assert pin_forecaster(slot).model_version == "v1"
    await follower.close()


async def test_start_fails_clearly_without_a_champion(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    Registry(str(root))
    follower = ModelFollower(_settings(root), ModelMetrics(CollectorRegistry()))
    with pytest.raises(Exception, match="has no champion"):
        await follower.start()
    reg = Registry(str(root))
    publish(reg, "bad", broken_copy(TINY, tmp_path / "bad", "truncated"), promote=True)
    with pytest.raises(ForecasterError, match="cannot serve"):
        await follower.start()
    (root / "champion.json").write_text("{not json")
    with pytest.raises(ForecasterError, match="reading the champion"):
        await follower.start()


async def test_no_room_on_the_gpu_defers_the_swap_and_says_so(
    registry_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No GPU here: the CUDA memory query is faked (pure logic); the model itself stays on the CPU."""
    import torch

    import daemon.model.vetting as models  # prepare_version looks cuda_room up there

    metrics = CollectorRegistry()
    follower = ModelFollower(_settings(registry_root), ModelMetrics(metrics), states=_states)
    slot = await follower.start()
    free = {"bytes": 1000}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=0: (free["bytes"], 80 * 2**30))
    real = models.cuda_room
    monkeypatch.setattr(models, "cuda_room", lambda device, weights: real("cuda:0", weights))
    Registry(str(registry_root)).promote("v2")
    assert await follower.check() is None
    assert _metric(metrics, "deferred") == 1 and slot.target_version == "v1"
    assert follower._failures["v2"][0] == 0  # noqa: SLF001  # waiting is not a refusal
    free["bytes"] = 80 * 2**30
    follower._failures["v2"] = (0, 0.0)  # noqa: SLF001  # skip the wait
    assert await follower.check() == "v2"
    await follower.close()


def test_a_registry_and_model_folders_together_are_refused(tmp_path: Path) -> None:
    from daemon.errors import ConfigError

    with pytest.raises(ConfigError, match="KRONOS_MODEL__REGISTRY names the model"):
        _settings(tmp_path, tokenizer_dir=str(TINY / "tokenizer"), predictor_dir=str(TINY / "predictor"))


async def test_on_cuda_a_new_version_is_built_on_the_model_thread(
    registry_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No GPU here: ``uses_cuda`` is forced (pure logic); the model itself stays on the CPU."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import daemon.model.follower as models  # the follower looks build_version and uses_cuda up there

    executor = ThreadPoolExecutor(1, thread_name_prefix="kronos-model")
    built_on: list[str] = []
    real_build = models.build_version

    def build(*args: object) -> models.LoadedModel:
        built_on.append(threading.current_thread().name)
        return real_build(*args)  # type: ignore[arg-type]

    async def model_thread(fn: object) -> models.LoadedModel:
        return await asyncio.get_running_loop().run_in_executor(executor, fn)  # type: ignore[arg-type]

    monkeypatch.setattr(models, "build_version", build)
    follower = ModelFollower(
        _settings(registry_root), ModelMetrics(CollectorRegistry()), states=_states, model_thread=model_thread
    )
    slot = await follower.start()
    Registry(str(registry_root)).promote("v2")
    monkeypatch.setattr(models, "uses_cuda", lambda settings: False)
    assert await follower.check() == "v2"
    assert pin_forecaster(slot).model_version == "v2"
    monkeypatch.setattr(models, "uses_cuda", lambda settings: True)
    Registry(str(registry_root)).promote("v1")
    assert await follower.check() == "v1"
    assert built_on[1].startswith("asyncio") and built_on[2].startswith("kronos-model"), built_on
    await follower.close()
    executor.shutdown()


async def test_an_unreachable_hint_channel_leaves_polling_at_work(registry_root: Path) -> None:
    settings = _settings(registry_root, registry_hint=True, registry_poll_s=0.1)
    settings = settings.model_copy(
        update={"redis": settings.redis.model_copy(update={"url": "redis://127.0.0.1:1/0"})}
    )
    follower = ModelFollower(settings, ModelMetrics(CollectorRegistry()), states=_states)
    slot = await follower.start()
    follower.run_in_background()
    Registry(str(registry_root)).promote("v2")
    for _ in range(200):
        if slot.target_version == "v2":
            break
        await asyncio.sleep(0.05)
    assert slot.target_version == "v2"  # found by polling
    assert not any(task.done() for task in follower._tasks)  # noqa: SLF001  # the listener keeps retrying
    await follower.close()
