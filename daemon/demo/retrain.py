"""The demo's retraining act: archive the bars seen so far, fine-tune, gate, publish, hot-swap.

Halfway through the replay, :func:`retrain` writes the bars the daemon has seen (warm-up and the first
half) to a temporary archive (``kronos_contract.archive``), fine-tunes the registry's champion on them
with the trainer's own code (``trainer.run.run_training``: walk-forward split, the gate against the
champion on the held-out tail, publishing to the registry, promoted only if the gate passes) within a
short budget. The daemon follows the registry like any other: the demo wakes its follower at once (the
in-process stand-in for the Redis hint, as the demo runs without Redis) and the next forecasts carry the
new version. The trainer is imported lazily (the daemon never imports it otherwise).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.io.feeds import FeedBar

RETRAIN_STEPS = 30  # predictor steps of the fine-tune (about 15 s on one CPU thread)
RETRAIN_LR = 1e-3
LOOKBACK = 116  # the demo model's windows: 116 bars of context + 12 to predict = max_context 128
HORIZON = 12


@dataclass(frozen=True)
class RetrainConfig:
    steps: int = RETRAIN_STEPS
    lr: float = RETRAIN_LR
    threads: int = 1


def publish_demo_model(registry_url: str, model_dir: Path) -> str:
    """The bundled demo model as the champion of a fresh registry; returns its version."""
    from kronos_contract.registry import Registry

    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest.pop("files", None)  # the registry writes its own (sha256 of every file)
    version = str(manifest["version"])
    Registry(registry_url).publish(
        version, model_dir / "tokenizer", model_dir / "predictor", manifest, promote=True
    )
    return version


def retrain(
    seen: Sequence[FeedBar], work_dir: Path, registry_url: str, config: RetrainConfig
) -> dict[str, Any]:
    """Archive ``seen``, fine-tune the champion on it, gate and publish (blocking: run it in a thread).

    Returns what happened: ``version`` (None when skipped), ``promoted``, the gate's ``reason`` and
    figures, the number of bars archived and the seconds spent."""
    import pandas as pd

    from kronos_contract.archive import write_bars
    from trainer.data import TrainingDataError
    from trainer.run import run_training
    from trainer.settings import load_train_settings

    began = time.monotonic()
    columns = ("open", "high", "low", "close", "volume", "amount")
    frame = pd.DataFrame(
        [
            {"symbol": s, "ts": pd.Timestamp(ts).tz_convert("UTC"), **dict(zip(columns, v, strict=True))}
            for s, ts, v in seen
        ]
    )
    archive = work_dir / "archive"
    write_bars(str(archive), frame, name=f"demo-p0-o0-{len(seen) - 1}")
    settings = load_train_settings(
        archive=str(archive),
        registry=registry_url,
        work_dir=work_dir / "train",
        lookback=LOOKBACK,
        horizon=HORIZON,
        steps=config.steps,
        batch_size=8,
        warmup_steps=2,
        lr=config.lr,
        eval_windows=16,
        eval_samples=8,
        device="cpu",
        threads=config.threads,
        progress="log",
        log_every=1000,
        save_every=1000,
        version_prefix="demo-ft-",
    )
    outcome: dict[str, Any] = {"bars_archived": len(seen), "steps": config.steps, "lr": config.lr}
    try:
        manifest = run_training(settings)
    except TrainingDataError as exc:
        return {**outcome, "version": None, "promoted": False, "reason": f"skipped: {exc}",
                "seconds": round(time.monotonic() - began, 1)}  # fmt: skip
    gate = manifest.get("gate", {})
    evaluation = manifest.get("evaluation", {})
    return {
        **outcome,
        "version": manifest.get("version"),
        "promoted": bool(gate.get("promoted")),
        "reason": gate.get("reason"),
        "gate_windows": evaluation.get("windows"),
        "candidate_crps": (evaluation.get("candidate") or {}).get("crps"),
        "champion_crps": (evaluation.get("champion") or {}).get("crps"),
        "seconds": round(time.monotonic() - began, 1),
    }


def describe(outcome: dict[str, Any]) -> str:
    """One line for the demo's output."""
    head = f"--- retrain on the {outcome['bars_archived']} bars seen so far ({outcome['steps']} steps, {outcome['seconds']} s): "
    if outcome["version"] is None:
        return head + str(outcome["reason"])
    verdict = "promoted" if outcome["promoted"] else "refused by the gate"
    return (
        head
        + f"{outcome['version']} {verdict} ({outcome['reason']}; {outcome.get('gate_windows')} held-out windows)"
    )
