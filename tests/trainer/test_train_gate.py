"""The gate against a real (local) registry: a worse or broken candidate leaves the champion and is
recorded as refused; scores come from kronos_core.scoring on the same held-out windows."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import trainer.run as run_module
from kronos_contract.archive import write_bars
from kronos_contract.registry import Registry
from kronos_core.scoring import score_paths
from tests.trainer.train_helpers import HORIZON, LOOKBACK, archive_frame, save_tiny
from trainer.gate import decide
from trainer.run import run_training
from trainer.settings import load_train_settings


@pytest.fixture()
def world(tmp_path: Path) -> dict[str, str]:
    archive, registry = str(tmp_path / "archive"), str(tmp_path / "registry")
    write_bars(archive, archive_frame(rows=300), name="bars-p0-o0-599")
    tok, pred = save_tiny(tmp_path / "champion")
    Registry(registry).publish("v0-champion", tok, pred, {"runtime": {"max_context": LOOKBACK + HORIZON}},
                               promote=True)
    return {"archive": archive, "registry": registry, "work_dir": str(tmp_path / "work")}


def _settings(world: dict[str, str], **extra: object):
    given = {"steps": 2, "batch_size": 4, "lookback": LOOKBACK, "horizon": HORIZON, "eval_windows": 6,
             "eval_samples": 4, "warmup_steps": 0, "progress": "log", **world, **extra}
    return load_train_settings(**given)


def _sabotage(monkeypatch: pytest.MonkeyPatch, damage) -> None:
    real = run_module.run_loop

    def loop_then_damage(tokenizer, model, *args, **kwargs):
        result = real(tokenizer, model, *args, **kwargs)
        with torch.no_grad():
            damage(model)
        return result

    monkeypatch.setattr(run_module, "run_loop", loop_then_damage)


def _scramble(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=g) * 3.0)


def _poison(model: torch.nn.Module) -> None:
    next(model.parameters()).fill_(float("nan"))


@pytest.mark.parametrize(("damage", "why"), [(_scramble, "does not beat"), (_poison, "non-finite")])
def test_a_worse_or_broken_candidate_leaves_the_champion(world, monkeypatch, damage, why) -> None:
    _sabotage(monkeypatch, damage)
    manifest = run_training(_settings(world))
    registry = Registry(world["registry"])
    assert registry.champion() == "v0-champion"
    assert registry.versions() == ["v0-champion"]
    assert manifest["gate"]["promoted"] is False and why in manifest["gate"]["reason"]
    refused = registry.refused()
    assert refused == [manifest["version"]]
    stored = registry.refused_manifest(manifest["version"])
    assert stored["gate"]["champion"] == "v0-champion" and stored["parent"] == "v0-champion"
    assert stored["evaluation"]["champion"]["crps"] is not None


def test_decide_needs_a_margin_and_finite_outputs() -> None:
    truth = torch.zeros(4, 3).numpy()
    good = score_paths(torch.full((4, 5, 3), 0.1).numpy(), truth, truth[:, 0])
    worse = score_paths(torch.full((4, 5, 3), 0.2).numpy(), truth, truth[:, 0])
    assert decide(good, worse, 0.0).promote
    assert not decide(good, worse, 0.6).promote  # 0.1 is not below 0.2 * 0.4
    assert not decide(worse, good, 0.0).promote
    broken = score_paths(torch.full((4, 5, 3), float("nan")).numpy(), truth, truth[:, 0])
    assert not decide(broken, worse, 0.0).promote


class InjectedCrash(Exception):
    pass


def _crash_once(settings, at_step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the job with a crash right after step ``at_step`` (its state saved as usual)."""
    real = run_module.run_loop

    def crashing(*args, **kwargs):
        def after(step: int) -> None:
            if step == at_step:
                raise InjectedCrash(f"after step {at_step}")

        return real(*args, **kwargs, after_step=after)

    with monkeypatch.context() as patch:
        patch.setattr(run_module, "run_loop", crashing)
        with pytest.raises(InjectedCrash):
            run_training(settings)


def test_a_crashed_run_resumes_although_new_bars_were_archived(world, monkeypatch) -> None:
    """Without --end the first start pins "now" in the work folder; a restart reads the same bars."""
    settings = _settings(world, steps=4, save_every=2)
    _crash_once(settings, 2, monkeypatch)
    pinned = pd.Timestamp(json.loads((Path(world["work_dir"]) / "plan.json").read_text())["end"])
    later = archive_frame(rows=50)  # bars that arrive after the first start (timestamps squeezed)
    later["ts"] = pinned + pd.to_timedelta(later.groupby("symbol").cumcount() + 1, unit="ms")
    write_bars(world["archive"], later, name="bars-p0-o600-699")
    time.sleep(0.2)
    manifest = run_training(settings)
    assert manifest["training"]["resumed_from_step"] == 2
    assert manifest["data"]["rows"] == 600  # the pinned range, not the new bars
    fresh = run_training(settings)  # the next run (the last one published) takes the new bars
    assert fresh["data"]["rows"] == 700 and fresh["training"]["resumed_from_step"] == 0


def test_manifests_do_not_carry_url_credentials() -> None:
    assert run_module._redact_url("redis://:s3cret@cache:6379/0") == "redis://***@cache:6379/0"
    assert run_module._redact_url("/models") == "/models"


def test_resume_across_the_tokenizer_and_predictor_phases_ends_like_a_straight_run(world, monkeypatch) -> None:
    settings = _settings(world, tokenizer_steps=2, tokenizer_lr=5e-3, steps=4, lr=1e-3, save_every=3, promote=False)
    _crash_once(settings, 4, monkeypatch)
    resumed = run_training(settings)
    assert resumed["training"]["resumed_from_step"] == 3  # inside the predictor phase
    straight_settings = settings.model_copy(update={"work_dir": Path(world["work_dir"]).with_name("straight")})
    straight = run_training(straight_settings)
    assert straight["training"]["resumed_from_step"] == 0
    for part in ("tokenizer", "predictor"):
        a = (Path(world["work_dir"]) / "candidate" / part / "model.safetensors").read_bytes()
        b = (straight_settings.work_dir / "candidate" / part / "model.safetensors").read_bytes()
        assert a == b, part
    assert Registry(world["registry"]).champion() == "v0-champion"  # --no-promote


def test_runtime_max_context_carries_over_and_is_not_invented(world, tmp_path: Path) -> None:
    # From the registry champion: its runtime.max_context carries over.
    from_champion = run_training(_settings(world, promote=False))
    assert from_champion["runtime"]["max_context"] == LOOKBACK + HORIZON
    # From folders without a manifest (the official checkpoints' layout): the training window is no
    # bound on the model, so none is claimed and a daemon's own max_context stays in force.
    tok, pred = save_tiny(tmp_path / "plain")
    from_folders = run_training(
        _settings({**world, "work_dir": str(tmp_path / "work2")}, tokenizer_dir=str(tok),
                  predictor_dir=str(pred), promote=False)
    )
    assert from_folders["runtime"]["max_context"] is None
    assert from_folders["runtime"]["train_window"] == LOOKBACK + HORIZON


def test_last_days_counts_back_from_end_and_training_leaves_the_callers_rng(world) -> None:
    bars = archive_frame(rows=300)
    end = pd.Timestamp(bars["ts"].max()).to_pydatetime()
    days = (end - pd.Timestamp(bars["ts"].min()).to_pydatetime()).total_seconds() / 86400 * 0.75
    torch.manual_seed(1234)
    expected_next = torch.rand(3)
    torch.manual_seed(1234)
    manifest = run_training(_settings(world, end=end.isoformat(), last_days=days, promote=False))
    assert torch.equal(torch.rand(3), expected_next)  # the caller's generator, as it was
    start = pd.Timestamp(manifest["data"]["start"])
    assert start == pd.Timestamp(end) - pd.Timedelta(days=days)
    assert manifest["data"]["rows"] < len(bars)  # the older quarter of the bars is left out
    assert pd.Timestamp(manifest["data"]["first"]) >= start
    with pytest.raises(ValueError, match="start or last_days"):
        _settings(world, start=end.isoformat(), last_days=1.0)
