"""Loading, vetting and swapping model versions (daemon/models.py), on a real registry folder.

No Kafka or Redis here: the follower's checks are driven by hand (the hint listener is off)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hotswap_helpers import TINY, broken_copy, perturbed_copy, publish, tamper
from prometheus_client import CollectorRegistry
from stub_forecaster import StubForecaster

from daemon.errors import ForecasterError
from daemon.models import (
    LoadRefused,
    ModelFollower,
    ModelMetrics,
    SwappableForecaster,
    check_smoke,
    load_version,
    pin_forecaster,
    runtime_overrides,
    smoke_windows,
)
from daemon.settings import Settings, load_settings
from daemon.state import SymbolState
from kronos_contract.registry import Registry


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
    root = tmp_path / "registry"
    reg = Registry(str(root))
    publish(reg, "v1", TINY, promote=True)
    publish(reg, "v2", perturbed_copy(TINY, tmp_path / "v2", 0.05, seed=2), promote=False)
    return root


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


def test_load_version_checks_and_smoke_tests_a_good_version(registry_root: Path, tmp_path: Path) -> None:
    settings = _settings(registry_root)
    loaded = load_version(Registry(str(registry_root)), "v2", settings, tmp_path / "c", _states())
    assert loaded.forecaster.model_version == "v2"
    assert loaded.load_s > 0 and loaded.warmup_s > 0
    assert not any((tmp_path / "c").iterdir())  # the fetched files are gone once in memory
    assert not loaded.forecaster._sessions  # type: ignore[attr-defined]  # smoke sessions dropped


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
    assert runtime_overrides({"runtime": {"max_context": 64, "calendar_tz": "Asia/Shanghai"}}, settings) == {
        "calendar_tz": "Asia/Shanghai"
    }


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


async def test_no_room_on_the_gpu_defers_the_swap_and_says_so(
    registry_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No GPU here: the CUDA memory query is faked (pure logic); the model itself stays on the CPU."""
    import torch

    import daemon.models as models

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
