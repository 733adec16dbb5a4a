"""The evaluation gate: candidate, champion and persistence scored on the same held-out windows.

Every model forecasts the same validation windows (context = the window's first ``lookback`` bars,
normalised by their own statistics exactly as at inference) with the same per-window seeds;
:mod:`kronos_core.scoring` turns the close of the sample paths into MAE per step, CRPS, p10-p90
coverage and skill vs persistence (the last context close). The candidate is promoted only if all
its outputs are finite and its CRPS beats the champion's by ``margin`` (relative).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kronos_core import Kronos, KronosEngine, KronosTokenizer, SamplingParams
from kronos_core.preprocess import STD_EPS
from kronos_core.scoring import ScoreReport, score_paths
from trainer.data import CLOSE, WindowSet, derive, normalize_window


@dataclass(frozen=True)
class EvalSet:
    """Held-out forecast problems: contexts (normalised), stamps, realised closes, scales."""

    xs: list[np.ndarray]  # [L, 6] each
    x_stamps: list[np.ndarray]  # [L, 5]
    y_stamps: list[np.ndarray]  # [H, 5]
    truth: np.ndarray  # [N, H] realised closes
    last_close: np.ndarray  # [N]
    means: np.ndarray  # [N, 6]
    stds: np.ndarray  # [N, 6]
    seeds: list[int]
    lookback: int
    horizon: int
    origins: list[str]

    def __len__(self) -> int:
        return len(self.xs)


def build_eval_set(val: WindowSet, count: int, seed: int) -> EvalSet:
    """``count`` validation windows spread evenly over the held-out tail."""
    picked = val.subset(count)
    xs, xst, yst, truth, last, means, stds, seeds, origins = [], [], [], [], [], [], [], [], []
    lb, h = picked.lookback, picked.horizon
    for i in range(len(picked)):
        s, start = picked.rows(i)
        feats = s.features[start : start + lb + h]
        x, mean, std = normalize_window(feats, lb)
        xs.append(x[:lb])
        means.append(mean)
        stds.append(std)
        xst.append(s.stamps[start : start + lb])
        yst.append(s.stamps[start + lb : start + lb + h])
        truth.append(feats[lb:, CLOSE].astype(np.float64))
        last.append(float(feats[lb - 1, CLOSE]))
        seeds.append(derive("gate", seed, s.symbol, int(s.times[start + lb - 1].astype(np.int64))))
        origins.append(f"{s.symbol}@{np.datetime_as_string(s.times[start + lb - 1], unit='s')}Z")
    return EvalSet(xs, xst, yst, np.stack(truth), np.asarray(last), np.stack(means), np.stack(stds), seeds,
                   lb, h, origins)


def forecast_close_paths(tokenizer: KronosTokenizer, model: Kronos, es: EvalSet, samples: int,
                         device: str | torch.device = "cpu") -> np.ndarray:
    """Close of every sample path in price units.  # [N, S, H]"""
    engine = KronosEngine(model.eval(), tokenizer.eval(), device=device, max_context=es.lookback + es.horizon)
    paths = engine.generate(es.xs, es.x_stamps, es.y_stamps, es.horizon, SamplingParams(sample_count=samples),
                            seeds=es.seeds)  # [N, S, H, 6] normalised
    close = paths[..., CLOSE].astype(np.float64)
    return close * (es.stds[:, CLOSE, None, None] + STD_EPS) + es.means[:, CLOSE, None, None]


def score_model(tokenizer: KronosTokenizer, model: Kronos, es: EvalSet, samples: int,
                device: str | torch.device = "cpu") -> ScoreReport:
    return score_paths(forecast_close_paths(tokenizer, model, es, samples, device), es.truth, es.last_close)


def score_candidate(tokenizer: KronosTokenizer, model: Kronos, es: EvalSet, samples: int,
                    device: str | torch.device = "cpu") -> ScoreReport:
    """As :func:`score_model`, but a model that cannot forecast (e.g. non-finite weights make the
    sampler fail) scores as all non-finite instead of failing the job: the gate then refuses it."""
    try:
        return score_model(tokenizer, model, es, samples, device)
    except (RuntimeError, ValueError):
        nan = np.full((len(es), samples, es.horizon), np.nan)
        return score_paths(nan, es.truth, es.last_close)


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str


def weights_finite(*modules: torch.nn.Module) -> bool:
    """Every floating-point tensor of the modules' state is finite."""
    return all(
        bool(torch.isfinite(t).all()) for m in modules for t in m.state_dict().values() if t.is_floating_point()
    )


def decide(candidate: ScoreReport, champion: ScoreReport, margin: float, *, finite_weights: bool = True) -> Verdict:
    """Promote only a finite candidate whose CRPS is below ``champion_crps * (1 - margin)``."""
    if not finite_weights:
        return Verdict(False, "the candidate has non-finite weights")
    if not candidate.all_finite or candidate.crps is None or not np.isfinite(candidate.crps):
        return Verdict(False, "the candidate produced non-finite forecasts")
    if champion.crps is None or not np.isfinite(champion.crps) or not champion.all_finite:
        return Verdict(True, "the champion produced non-finite forecasts; any finite candidate beats it")
    bar = champion.crps * (1.0 - margin)
    if candidate.crps < bar:
        return Verdict(True, f"candidate CRPS {candidate.crps:.6g} < champion {champion.crps:.6g} x (1 - {margin})")
    return Verdict(False, f"candidate CRPS {candidate.crps:.6g} does not beat champion {champion.crps:.6g} "
                          f"x (1 - {margin}) = {bar:.6g}")


def figures(candidate: ScoreReport, champion: ScoreReport, es: EvalSet, samples: int) -> dict[str, Any]:
    """The manifest's evaluation block."""
    persistence = {
        "mae": candidate.persistence_mae,
        "crps": candidate.persistence_mae,  # a point forecast's CRPS is its absolute error
        "mae_per_step": candidate.persistence_mae_per_step,
    }
    return {
        "windows": len(es), "horizon": es.horizon, "lookback": es.lookback, "sample_paths": samples,
        "origins": [es.origins[0], es.origins[-1]] if es.origins else [],
        "units": "close, price units", "candidate": candidate.to_dict(), "champion": champion.to_dict(),
        "persistence": persistence,
    }
