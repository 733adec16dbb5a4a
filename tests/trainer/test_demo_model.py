"""The demo-model trainer: a few tiny steps lower both losses and publish a loadable, self-describing
checkpoint; the committed demo checkpoint loads strictly and its manifest names its version."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

import numpy as np
import pytest
import torch

from kronos_core import Kronos, KronosEngine, KronosTokenizer, PredictorConfig, TokenizerConfig
from kronos_core.checkpoint import read_weights
from kronos_core.stream_types import SeriesWindow
from kronos_core.streaming import StreamConfig, StreamingForecaster
from kronos_core.training import FitConfig
from trainer.demo_model import (
    CALENDAR_TZ,
    DEFAULT_OUT,
    MANIFEST_NAME,
    DemoConfig,
    load_bars,
    lr_factor,
    read_manifest,
    train_demo,
    weights_digest,
)

VERSION = re.compile(r"^demo-\d{8}-[0-9a-f]{8}$")

TINY = DemoConfig(
    tokenizer=TokenizerConfig(
        d_in=6, d_model=16, n_heads=2, ff_dim=32, n_enc_layers=2, n_dec_layers=2, s1_bits=4, s2_bits=4, group_size=4
    ),
    predictor=PredictorConfig(s1_bits=4, s2_bits=4, n_layers=1, d_model=16, n_heads=2, ff_dim=32),
    tokenizer_fit=FitConfig(steps=30, batch_size=8, window=32, lr=5e-3, weight_decay=0.0, seed=0),
    predictor_fit=FitConfig(steps=30, batch_size=8, window=32, lr=5e-3, weight_decay=0.0, grad_clip=3.0, seed=1),
    loss_batches=2,
    horizon=4,
    eval_windows=4,
    eval_samples=2,
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "model"
    return out, train_demo(TINY, out)


def test_tiny_training_lowers_both_losses(tiny_run) -> None:
    _, manifest = tiny_run
    for part in ("tokenizer", "predictor"):
        curve = manifest["losses"][part]["train_steps"]
        assert curve["end"] < curve["start"] * 0.9, (part, curve)
        assert np.isfinite(manifest["losses"][part]["val"]["loss"])
    assert manifest["training"]["completed"]
    assert manifest["training"]["tokenizer_steps"] == manifest["training"]["predictor_steps"] == 30


def test_tiny_run_writes_a_loadable_checkpoint_and_manifest(tiny_run) -> None:
    out, manifest = tiny_run
    assert read_manifest(out) == {k: v for k, v in manifest.items() if k != "total_wall_s"}
    tokenizer = KronosTokenizer.from_pretrained(out / "tokenizer")
    model = Kronos.from_pretrained(out / "predictor")
    assert tokenizer.config == TINY.tokenizer and model.config == TINY.predictor
    assert VERSION.match(manifest["version"])
    assert manifest["version"].endswith(manifest["weights_sha256"][:8])
    assert weights_digest(out / "tokenizer", out / "predictor") == manifest["weights_sha256"]
    assert manifest["data"]["train"]["rows"] == 2000 and manifest["data"]["holdout"]["rows"] == 500
    check = manifest["holdout_forecast"]
    assert check["windows"] == 4 and check["horizon"] == 4
    assert set(check["mae_close"]) == {"greedy", "mean_of_2_samples", "persistence", "tokenizer_roundtrip"}
    assert all(np.isfinite(v) and v >= 0 for v in check["mae_close"].values())
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, "predictor", "tokenizer"]
    assert not list(out.parent.glob(".model.*")), "no staging or old directory is left behind"


def test_training_is_deterministic(tiny_run, tmp_path) -> None:
    out, manifest = tiny_run
    again = train_demo(dataclasses.replace(TINY, eval_windows=2), tmp_path / "again")  # same training
    assert again["weights_sha256"] == manifest["weights_sha256"]
    assert again["losses"] == manifest["losses"]


def test_rerun_replaces_the_output_directory(tmp_path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("from an older run")
    train_demo(dataclasses.replace(TINY, eval_windows=2), out)
    assert not (out / "stale.txt").exists() and (out / MANIFEST_NAME).is_file()


def test_learning_rate_schedule_warms_up_then_decays() -> None:
    factors = [lr_factor(s, steps=100, warmup=5, min_ratio=0.1) for s in range(100)]
    assert factors[0] == pytest.approx(0.2) and factors[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:], strict=False))
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)


# ----------------------------------------------------------------------------- the committed checkpoint


def test_committed_demo_checkpoint_loads_strictly_and_names_its_version() -> None:
    manifest = read_manifest(DEFAULT_OUT)
    assert VERSION.match(manifest["version"]), manifest["version"]
    tokenizer = KronosTokenizer.from_pretrained(DEFAULT_OUT / "tokenizer")  # strict: every key, every shape
    model = Kronos.from_pretrained(DEFAULT_OUT / "predictor")
    for name, module in (("tokenizer", tokenizer), ("predictor", model)):
        weights = read_weights(DEFAULT_OUT / name)
        assert set(weights) == set(module.state_dict())
        assert json.loads((DEFAULT_OUT / name / "config.json").read_text()) == manifest["hyperparameters"][name]
    digest = weights_digest(DEFAULT_OUT / "tokenizer", DEFAULT_OUT / "predictor")
    assert digest == manifest["weights_sha256"] and manifest["version"].endswith(digest[:8])
    for entry in manifest["files"]:
        data = (DEFAULT_OUT / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["path"]
    assert sum(f["bytes"] for f in manifest["files"]) < 2_000_000
    assert manifest["training"]["completed"]


@pytest.fixture(scope="module")
def bars_utc():
    """The bundled bars with UTC timestamps, as the daemon passes them."""
    df = load_bars()
    ts = df["timestamps"].dt.tz_localize(CALENDAR_TZ).dt.tz_convert("UTC").dt.tz_localize(None)
    return df[["open", "high", "low", "close", "volume", "amount"]].to_numpy(np.float64), ts.to_numpy("datetime64[ns]")


def test_committed_demo_model_streams_a_forecast(bars_utc) -> None:
    manifest = read_manifest(DEFAULT_OUT)
    engine = KronosEngine(
        Kronos.from_pretrained(DEFAULT_OUT / "predictor"),
        KronosTokenizer.from_pretrained(DEFAULT_OUT / "tokenizer"),
        device="cpu",
        max_context=manifest["runtime"]["max_context"],
    )
    forecaster = StreamingForecaster(
        engine, StreamConfig(mode="incremental", calendar_tz=manifest["runtime"]["calendar_tz"]),
        model_version=manifest["version"],
    )
    values, ts = bars_utc
    n, h = 100, 12
    (result,) = forecaster.forecast([SeriesWindow("S", values[:n], ts[:n], ts[n : n + h], seed=1)], h)
    assert result.mean.shape == (h, 6) and np.isfinite(result.mean).all()
    assert result.token_state is not None and len(result.token_state) > 0
    # A 5-minute forecast stays near the last price.
    assert np.abs(result.mean[:, 3] / values[n - 1, 3] - 1).max() < 0.2


def test_global_rng_is_left_alone(tmp_path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    short = FitConfig(steps=2, batch_size=2, window=32)
    train_demo(dataclasses.replace(TINY, eval_windows=2, tokenizer_fit=short, predictor_fit=short), tmp_path / "m")
    assert torch.equal(torch.rand(3), expected)


def test_a_spent_time_budget_is_reported(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="--max-minutes"):
        train_demo(TINY, tmp_path / "m", max_minutes=1e-9)
    assert not (tmp_path / "m").exists()
