"""Settings from the environment: nested groups, clear errors naming the variable."""

from __future__ import annotations

import pytest

from daemon.errors import ConfigError
from daemon.settings import env_name, load_settings, unknown_env_names


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("KRONOS_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = load_settings()
    assert s.kafka.bootstrap_servers == "localhost:9092"
    assert s.redis.key_prefix == "kronos"
    assert s.model.max_context == 512
    assert s.model.quantile_levels == (0.1, 0.5, 0.9)
    assert s.mode == "exact"


def test_nested_values_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRONOS_KAFKA__BOOTSTRAP_SERVERS", "b1:9092,b2:9092")
    monkeypatch.setenv("KRONOS_KAFKA__SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("KRONOS_REDIS__FORECAST_TTL_S", "600")
    monkeypatch.setenv("KRONOS_MODEL__QUANTILE_LEVELS", "0.05, 0.5, 0.95")
    monkeypatch.setenv("KRONOS_MODE", "incremental")
    monkeypatch.setenv("KRONOS_BATCH__MAX_WAIT_MS", "5")
    s = load_settings()
    assert s.kafka.bootstrap_servers == "b1:9092,b2:9092"
    assert s.kafka.sasl_password is not None and s.kafka.sasl_password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(s)
    assert s.redis.forecast_ttl_s == 600
    assert s.model.quantile_levels == (0.05, 0.5, 0.95)
    assert s.mode == "incremental"
    assert s.batch.max_wait_ms == 5


def test_json_list_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRONOS_MODEL__QUANTILE_LEVELS", "[0.25, 0.75]")
    assert load_settings().model.quantile_levels == (0.25, 0.75)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KRONOS_MODEL__MAX_CONTEXT", "abc"),
        ("KRONOS_MODEL__MAX_CONTEXT", "1"),
        ("KRONOS_MODE", "fast"),
        ("KRONOS_MODEL__QUANTILE_LEVELS", "0.9,0.1"),
        ("KRONOS_MODEL__QUANTILE_LEVELS", "0.5,1.5"),
        ("KRONOS_MODEL__TEMPERATURE", "nan"),
        ("KRONOS_BATCH__MAX_BATCH_SIZE", "0"),
        ("KRONOS_REDIS__FORECAST_TTL_S", "-3"),
        ("KRONOS_HTTP_PORT", "70000"),
        ("KRONOS_KAFKA__COMPRESSION_TYPE", "brotli"),
        ("KRONOS_PARTITION_STALL_S", "0"),
    ],
)
def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert name in str(info.value)


def test_producer_codec_defaults_to_none_and_needs_its_library(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiokafka import codec

    assert load_settings().kafka.compression_type == "none"
    monkeypatch.setenv("KRONOS_KAFKA__COMPRESSION_TYPE", "zstd")
    assert load_settings().kafka.compression_type == "zstd"
    monkeypatch.setattr(codec, "has_zstd", lambda: False)  # as without cramjam
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "KRONOS_KAFKA__COMPRESSION_TYPE" in str(info.value) and "cramjam" in str(info.value)


def test_sasl_needs_credentials_and_secrets_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRONOS_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KRONOS_KAFKA__SASL_PASSWORD", "s3cret")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "KRONOS_KAFKA__SASL_USERNAME" in str(info.value)
    assert "s3cret" not in str(info.value)


def test_env_name_and_typo_detection() -> None:
    assert env_name(("kafka", "group_id")) == "KRONOS_KAFKA__GROUP_ID"
    assert env_name(("model", "quantile_levels", 0)) == "KRONOS_MODEL__QUANTILE_LEVELS"
    assert env_name(("mode",)) == "KRONOS_MODE"
    env = {"KRONOS_KAFKA__BOOTSTRAP_SERVER": "x", "KRONOS_MODE": "exact", "PATH": "/bin"}
    assert unknown_env_names(env) == ["KRONOS_KAFKA__BOOTSTRAP_SERVER"]


def test_model_compile_reaches_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.model.build import build_engine_forecaster

    monkeypatch.setenv("KRONOS_MODEL__PRESET", "Kronos-tiny")
    monkeypatch.setenv("KRONOS_MODEL__MAX_CONTEXT", "64")
    monkeypatch.setenv("KRONOS_MODEL__DEVICE", "cpu")
    assert load_settings().model.compile is False
    monkeypatch.setenv("KRONOS_MODEL__COMPILE", "true")
    forecaster = build_engine_forecaster(load_settings())
    assert forecaster.engine.compiled  # type: ignore[attr-defined]


def test_session_budget_reaches_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from daemon.model.build import build_forecaster

    tiny = Path(__file__).resolve().parents[1] / "fixtures" / "kronos-tiny-a"
    monkeypatch.setenv("KRONOS_MODEL__MAX_SESSIONS", "7")
    monkeypatch.setenv("KRONOS_MODEL__MAX_SESSION_BYTES", "1000000000")
    model = {"tokenizer_dir": tiny / "tokenizer", "predictor_dir": tiny / "predictor", "max_context": 64,
             "horizon": 4, "device": "cpu"}
    forecaster = build_forecaster(load_settings(model=model, mode="incremental"))
    assert forecaster.config.max_sessions == 7 and forecaster.config.max_session_bytes == 10**9  # type: ignore[attr-defined]
    monkeypatch.setenv("KRONOS_MODEL__MAX_SESSION_BYTES", "0")
    with pytest.raises(ConfigError, match="MAX_SESSION_BYTES"):
        load_settings()
