"""The demo-model trainer: it trains through the trainer's own code path (``trainer.run.run_training``
on an archive of the bundled bars, from random-init folders), never sees the held-out tail, lowers
both losses, is reproducible and publishes a loadable, self-describing checkpoint; the committed demo
checkpoint loads strictly and its manifest names its version and runtime."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

import trainer.run
from kronos_core import Kronos, KronosEngine, KronosTokenizer, PredictorConfig, TokenizerConfig
from kronos_core.checkpoint import read_weights
from kronos_core.stream_types import SeriesWindow
from kronos_core.streaming import StreamConfig, StreamingForecaster
from trainer.data import series_from_frame, walk_forward
from trainer.demo_model import (
    BARS_CSV,
    CALENDAR_TZ,
    DEFAULT_OUT,
    MANIFEST_NAME,
    SYMBOL,
    DemoConfig,
    load_bars,
    read_manifest,
    train_demo,
    utc_times,
    val_fraction_for,
    weights_digest,
)
from trainer.loop import lr_factor

VERSION = re.compile(r"^demo-\d{8}-[0-9a-f]{8}$")
DEMO_REPLAY_BARS, DEMO_WARMUP_BARS = 240, 128  # what `kronos-stream demo` replays (daemon/demo/replay.py)

TINY = DemoConfig(
    tokenizer=TokenizerConfig(
        d_in=6, d_model=16, n_heads=2, ff_dim=32, n_enc_layers=2, n_dec_layers=2, s1_bits=4, s2_bits=4, group_size=4
    ),
    predictor=PredictorConfig(s1_bits=4, s2_bits=4, n_layers=1, d_model=16, n_heads=2, ff_dim=32),
    lookback=28,
    horizon=4,
    tokenizer_steps=30,
    tokenizer_lr=5e-3,
    steps=30,
    lr=5e-3,
    weight_decay=0.0,
    warmup_steps=2,
    batch_size=8,
    loss_windows=32,
    gate_windows=4,
    eval_windows=4,
    eval_samples=2,
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny run, with a spy on the trainer's entry point."""
    calls = []
    real = trainer.run.run_training

    def spy(settings):
        calls.append(settings)
        return real(settings)

    out = tmp_path_factory.mktemp("demo") / "model"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer.run, "run_training", spy)
        manifest = train_demo(TINY, out)
    return out, manifest, calls


def test_the_demo_model_is_trained_by_the_trainer(tiny_run) -> None:
    _, manifest, calls = tiny_run
    (settings,) = calls
    assert settings.registry is None and not settings.promote  # nothing published anywhere
    assert settings.tokenizer_dir is not None and settings.predictor_dir is not None  # the random-init folders
    assert (settings.tokenizer_steps, settings.steps) == (30, 30)
    assert (settings.lookback, settings.horizon, settings.calendar_tz) == (28, 4, CALENDAR_TZ)
    assert manifest["training"]["world_size"] == 1
    assert manifest["training"]["code_path"].startswith("trainer.run.run_training")
    assert manifest["gate_evaluation"]["windows"] == 4  # the trainer's gate ran (trained vs random init)
    assert {"archive", "work_dir", "tokenizer_dir"}.isdisjoint(manifest["hyperparameters"]["trainer_settings"])


def test_tiny_training_lowers_both_losses(tiny_run) -> None:
    _, manifest, _ = tiny_run
    for part in ("tokenizer", "predictor"):
        for rows in ("train", "val"):
            losses = manifest["losses"][part][rows]
            assert losses["trained"]["loss"] < losses["init"]["loss"] * 0.9, (part, rows, losses)
            assert np.isfinite(losses["trained"]["loss"])
    assert manifest["training"]["completed"]
    assert manifest["training"]["tokenizer_steps"] == manifest["training"]["predictor_steps"] == 30


def test_tiny_run_writes_a_loadable_checkpoint_and_manifest(tiny_run) -> None:
    out, manifest, _ = tiny_run
    assert read_manifest(out) == {k: v for k, v in manifest.items() if k != "total_wall_s"}
    tokenizer = KronosTokenizer.from_pretrained(out / "tokenizer")
    model = Kronos.from_pretrained(out / "predictor")
    assert tokenizer.config == TINY.tokenizer and model.config == TINY.predictor
    assert VERSION.match(manifest["version"])
    assert manifest["version"].endswith(manifest["weights_sha256"][:8])
    assert weights_digest(out / "tokenizer", out / "predictor") == manifest["weights_sha256"]
    assert manifest["data"]["train"]["rows"] == 2000 and manifest["data"]["holdout"]["rows"] == 500
    assert manifest["runtime"]["max_context"] == 32 and manifest["runtime"]["calendar_tz"] == CALENDAR_TZ
    check = manifest["holdout_forecast"]
    assert check["windows"] == 4 and check["horizon"] == 4
    assert set(check["mae_close"]) == {"greedy", "mean_of_2_samples", "persistence", "tokenizer_roundtrip"}
    assert all(np.isfinite(v) and v >= 0 for v in check["mae_close"].values())
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, "predictor", "tokenizer"]
    assert not list(out.parent.glob(".model.*")), "no staging or old directory is left behind"


def test_the_walk_forward_cut_holds_out_the_last_500_bars() -> None:
    """The trainer's own split, given the demo's val_fraction: no training window reaches bar 2000,
    every validation target is at or after it, and so are the bars the demo warms up on and replays."""
    df = load_bars()
    times = utc_times(df)
    frame = pd.DataFrame({"symbol": SYMBOL, "ts": times, **{c: df[c] for c in df.columns if c != "timestamps"}})
    series = series_from_frame(frame, CALENDAR_TZ)
    split = walk_forward(series, 116, 12, val_fraction_for(times, 2000))
    train_ends = split.train.starts[:, 1] + split.train.window  # exclusive
    val_targets = split.val.starts[:, 1] + split.val.lookback
    assert train_ends.max() == 2000 and val_targets.min() >= 2000
    assert split.summary["symbols"][SYMBOL] == {"rows": 2500, "train_rows": 2000, "val_rows": 500}  # type: ignore[index]
    assert len(df) - DEMO_REPLAY_BARS - DEMO_WARMUP_BARS >= 2000


def test_training_is_reproducible_and_never_reads_the_held_out_bars(tiny_run, tmp_path) -> None:
    _, manifest, _ = tiny_run
    df = load_bars()
    df.loc[2000:, ["open", "high", "low", "close"]] *= 1.5  # a very different held-out tail
    df.loc[2000:, ["volume", "amount"]] += 1e6
    csv = tmp_path / "bars.csv"
    df.to_csv(csv, index=False)
    again = train_demo(dataclasses.replace(TINY, eval_windows=2), tmp_path / "again", csv=csv)
    assert again["weights_sha256"] == manifest["weights_sha256"]
    for part in ("tokenizer", "predictor"):
        assert again["losses"][part]["train"] == manifest["losses"][part]["train"]
        assert again["losses"][part]["val"] != manifest["losses"][part]["val"]  # (the change is real)


def test_rerun_replaces_the_output_directory(tmp_path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("from an older run")
    train_demo(dataclasses.replace(TINY, tokenizer_steps=2, steps=2, eval_windows=2), out)
    assert not (out / "stale.txt").exists() and (out / MANIFEST_NAME).is_file()


def test_too_few_bars_are_refused_before_training(tmp_path) -> None:
    csv = tmp_path / "bars.csv"
    load_bars().iloc[:520].to_csv(csv, index=False)
    with pytest.raises(ValueError, match="held-out"):
        train_demo(TINY, tmp_path / "m", csv=csv)
    assert not (tmp_path / "m").exists()


def test_learning_rate_schedule_warms_up_then_decays() -> None:
    factors = [lr_factor(s, steps=100, warmup=5, min_ratio=0.1) for s in range(100)]
    assert factors[0] == pytest.approx(0.2) and factors[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:], strict=False))
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)


def test_global_rng_is_left_alone(tmp_path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_demo(dataclasses.replace(TINY, tokenizer_steps=2, steps=2, eval_windows=2), tmp_path / "m")
    assert torch.equal(torch.rand(3), expected)


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
    assert manifest["training"]["code_path"].startswith("trainer.run.run_training")
    assert manifest["runtime"]["max_context"] == 128 and manifest["runtime"]["calendar_tz"] == CALENDAR_TZ
    assert manifest["data"]["source"] == "daemon/assets/bars_5min_a_share.csv"
    assert manifest["data"]["train"]["rows"] == 2000 and manifest["data"]["holdout"]["rows"] == 500
    assert BARS_CSV.is_file()


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
