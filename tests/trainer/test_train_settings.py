"""TrainSettings: environment variables, flag overrides, clear errors."""

from __future__ import annotations

import datetime as dt

import pytest

from trainer.settings import TrainConfigError, load_train_settings


def test_environment_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRONOS_TRAIN__REGISTRY", "/models")
    monkeypatch.setenv("KRONOS_TRAIN__SYMBOLS", "AAA, BBB")
    monkeypatch.setenv("KRONOS_TRAIN__STEPS", "7")
    monkeypatch.setenv("KRONOS_TRAIN__START", "2024-01-02")
    monkeypatch.setenv("KRONOS_TRAIN__REDIS_URL", "")  # an empty variable is unset (a chart may render one)
    s = load_train_settings(steps=9, batch_size=None)
    assert s.registry == "/models" and s.symbols == ("AAA", "BBB")
    assert s.steps == 9 and s.batch_size == 16
    assert s.start == dt.datetime(2024, 1, 2, tzinfo=dt.UTC)
    assert s.redis_url is None


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"KRONOS_TRAIN__REGISTRY": "/m", "KRONOS_TRAIN__STEPS": "0"}, "KRONOS_TRAIN__STEPS"),
        ({"KRONOS_TRAIN__REGISTRY": "/m", "KRONOS_TRAIN__LR": "0.5"}, "KRONOS_TRAIN__LR"),
        ({}, "nothing to start from"),
        ({"KRONOS_TRAIN__REGISTRY": "/m", "KRONOS_TRAIN__START": "2024-02-01", "KRONOS_TRAIN__END": "2024-01-01"},
         "must be before"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needle: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(TrainConfigError, match=needle):
        load_train_settings()


def test_the_command_stops_with_exit_2_and_a_message(tmp_path) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.trainer.train_helpers import save_tiny

    repo = Path(__file__).resolve().parents[2]
    tok, pred = save_tiny(tmp_path / "model")
    env = {**os.environ, "PYTHONPATH": str(repo)}
    base = [sys.executable, "-m", "daemon.cli", "train", "--archive", str(tmp_path / "empty"),
            "--work-dir", str(tmp_path / "work")]
    empty = subprocess.run([*base, "--tokenizer-dir", str(tok), "--predictor-dir", str(pred)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert empty.returncode == 2 and "holds no bars" in empty.stderr
    bad = subprocess.run([*base, "--steps", "0"], env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--steps" in bad.stderr
