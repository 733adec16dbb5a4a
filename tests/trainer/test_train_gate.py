"""The gate against a real (local) registry: a worse or broken candidate leaves the champion and is
recorded as refused; scores come from kronos_core.scoring on the same held-out windows."""

from __future__ import annotations

from pathlib import Path

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
    return load_train_settings(**world, steps=2, batch_size=4, lookback=LOOKBACK, horizon=HORIZON,
                               eval_windows=6, eval_samples=4, warmup_steps=0, progress="log", **extra)


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
