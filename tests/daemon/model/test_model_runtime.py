"""Settings the model carries: manifest.json runtime defaults, and a max_context above the model's refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from daemon.app import Daemon
from daemon.demo.config import MODEL_DIR
from daemon.errors import ConfigError
from daemon.io.memory import MemoryBroker, MemoryInput, MemoryOutput
from daemon.model.manifest import apply_model_runtime
from daemon.settings import load_settings
from daemon.state.memory import MemoryStateStore

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _no_kronos_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("KRONOS_"):
            monkeypatch.delenv(name)


def _model(**over: object) -> dict[str, object]:
    return {"tokenizer_dir": MODEL_DIR / "tokenizer", "predictor_dir": MODEL_DIR / "predictor", **over}


def test_the_manifest_gives_the_defaults() -> None:
    settings = apply_model_runtime(load_settings(model=_model()))
    assert settings.model.max_context == 128  # the demo model's manifest, not the 512 default
    assert settings.model.calendar_tz == "Asia/Shanghai"


def test_explicit_settings_win_below_the_bound() -> None:
    settings = apply_model_runtime(load_settings(model=_model(max_context=64, calendar_tz="UTC")))
    assert (settings.model.max_context, settings.model.calendar_tz) == (64, "UTC")


def test_a_max_context_above_the_models_is_refused_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KRONOS_MODEL__TOKENIZER_DIR", str(MODEL_DIR / "tokenizer"))
    monkeypatch.setenv("KRONOS_MODEL__PREDICTOR_DIR", str(MODEL_DIR / "predictor"))
    monkeypatch.setenv("KRONOS_MODEL__MAX_CONTEXT", "512")
    with pytest.raises(ConfigError) as info:
        apply_model_runtime(load_settings())
    message = str(info.value)
    version = json.loads((MODEL_DIR / "manifest.json").read_text())["version"]  # the shipped model's
    assert "KRONOS_MODEL__MAX_CONTEXT=512" in message and "128" in message and version in message


async def test_the_daemon_refuses_to_start_before_loading_anything() -> None:
    settings = load_settings(model=_model(max_context=512), http_port=None)
    broker = MemoryBroker()
    daemon = Daemon(
        settings,
        bus_in=MemoryInput(broker, "bars", "g"),
        bus_out=MemoryOutput(broker),
        store=MemoryStateStore(),
    )
    with pytest.raises(ConfigError, match="above what model"):
        await daemon.start()
    assert daemon.forecaster is None  # refused before the model was loaded
    await daemon.close()


def test_without_manifest_nothing_changes(tmp_path: Path) -> None:
    settings = load_settings(model={"factory": "tests.support.stub_forecaster:build"})
    assert apply_model_runtime(settings) is settings
    assert apply_model_runtime(settings, {"version": "x"}) is settings
    changed = apply_model_runtime(settings, {"version": "x", "runtime": {"exchange_calendar": "XSHG"}})
    assert changed.model.exchange_calendar == "XSHG"


def test_a_manifest_that_does_not_fit_is_explained(tmp_path: Path) -> None:
    (tmp_path / "predictor").mkdir()
    (tmp_path / "manifest.json").write_text(json.dumps({"version": "v9", "runtime": {"max_context": 8}}))
    settings = load_settings(model={"tokenizer_dir": tmp_path, "predictor_dir": tmp_path / "predictor"})
    with pytest.raises(ConfigError, match="v9.*horizon"):
        apply_model_runtime(settings)  # horizon 12 does not fit a context of 8
