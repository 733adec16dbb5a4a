"""Single-process training: windows of bars, the two losses, a train step and short fit loops.

Mirrors upstream's fine-tuning recipe:

- windows are drawn at random positions from a bar series and each window is normalised
  by its own mean/std and clipped (upstream's recipe, with its leak: the bars a window predicts
  shape the statistics of its inputs; the trainer package, which also trains the demo model,
  normalises with lookback-only statistics instead, see ``trainer/data.py``);
- tokenizer loss: ``(mse(z_pre, x) + mse(z, x) + bsq_loss) / 2`` (both decode paths);
- predictor loss: the dual cross-entropy of next-token prediction on the frozen tokenizer's
  tokens (inputs ``tokens[:, :-1]``, targets ``tokens[:, 1:]``). Upstream conditions s2 on
  an s1 *sampled* from the model (``teacher_forcing=False``, the default here too);
  ``teacher_forcing=True`` conditions on the true next s1 instead.
- AdamW (betas 0.9/0.95) with gradient-norm clipping (2.0 tokenizer, 3.0 predictor).

Everything random takes a ``torch.Generator`` so a run is reproducible. DDP lives in the
trainer package, on top of these functions.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kronos_core.exceptions import InputError
from kronos_core.model import Kronos
from kronos_core.preprocess import normalize, prepare_features, time_features
from kronos_core.tokenizer import KronosTokenizer


@dataclass(frozen=True)
class BarSeries:
    """A bar series as arrays: raw features [N, 6] and calendar stamps [N, 5], float32."""

    features: np.ndarray
    stamps: np.ndarray

    @classmethod
    def from_frame(cls, df: pd.DataFrame, timestamp_column: str = "timestamps") -> BarSeries:
        """From a frame with price columns (volume/amount optional) and a timestamp column."""
        features = prepare_features(df)
        if timestamp_column not in df.columns:
            raise InputError(
                f"column {timestamp_column!r} with bar timestamps not found; columns are {list(df.columns)}"
            )
        return cls(features=features, stamps=time_features(df[timestamp_column], timestamp_column))

    def __len__(self) -> int:
        return len(self.features)


def sample_windows(
    bars: BarSeries, window: int, batch_size: int, generator: torch.Generator, clip: float = 5.0
) -> tuple[Tensor, Tensor]:
    """Random windows, each instance-normalised: ``(x [B, W, 6], stamp [B, W, 5])``."""
    if window < 2 or window > len(bars):
        raise InputError(f"window must be between 2 and the series length {len(bars)}, got {window}")
    starts = torch.randint(0, len(bars) - window + 1, (batch_size,), generator=generator).tolist()
    xs = [normalize(bars.features[s : s + window], clip)[0] for s in starts]
    stamps = [bars.stamps[s : s + window] for s in starts]
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(stamps))


# ----------------------------------------------------------------------------- losses


def tokenizer_loss(tokenizer: KronosTokenizer, x: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Upstream tokenizer objective on normalised bars x [B, S, 6]; returns ``(loss, parts)``."""
    (z_pre, z), bsq, _, _ = tokenizer(x)
    recon_pre = F.mse_loss(z_pre, x)
    recon_full = F.mse_loss(z, x)
    loss = (recon_pre + recon_full + bsq) / 2
    parts = {"recon_pre": recon_pre.item(), "recon_full": recon_full.item(), "bsq": bsq.item()}
    return loss, parts


def predictor_loss(
    model: Kronos,
    tokenizer: KronosTokenizer,
    x: Tensor,  # [B, S, 6] normalised bars
    stamp: Tensor,  # [B, S, 5]
    *,
    teacher_forcing: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Dual cross-entropy of next-token prediction on the tokenizer's tokens of ``x``."""
    with torch.no_grad():
        s1, s2 = tokenizer.encode(x, half=True)
    s1_logits, s2_logits = model(
        s1[:, :-1], s2[:, :-1], stamp[:, :-1],
        use_teacher_forcing=teacher_forcing, s1_targets=s1[:, 1:], generator=generator,
    )
    loss, ce_s1, ce_s2 = model.head.compute_loss(s1_logits, s2_logits, s1[:, 1:], s2[:, 1:])
    return loss, {"ce_s1": ce_s1.item(), "ce_s2": ce_s2.item()}


# ----------------------------------------------------------------------------- steps and loops


def make_optimizer(module: nn.Module, lr: float, weight_decay: float = 0.1) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)


def train_step(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    compute_loss: Callable[[], tuple[Tensor, dict[str, float]]],
    grad_clip: float | None,
) -> dict[str, float]:
    """One optimisation step: zero grads, loss, backward, clip, step. Returns the logged values."""
    module.train()
    optimizer.zero_grad(set_to_none=True)
    loss, parts = compute_loss()
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite training loss {loss.item()}")
    loss.backward()
    grad_norm = math.nan
    if grad_clip is not None:
        grad_norm = float(nn.utils.clip_grad_norm_(module.parameters(), grad_clip))
    optimizer.step()
    return {"loss": loss.item(), "grad_norm": grad_norm, **parts}


@dataclass(frozen=True)
class FitConfig:
    steps: int = 50
    batch_size: int = 16
    window: int = 64  # bars per training window (upstream: lookback + horizon + 1)
    lr: float = 2e-4
    weight_decay: float = 0.1
    grad_clip: float | None = 2.0
    clip: float = 5.0
    seed: int = 0
    log_every: int = 0  # 0: never call the logger


# Upstream fine-tuning defaults (learning rates 2e-4 / 4e-5, clipping 2.0 / 3.0).
TOKENIZER_FIT = FitConfig(lr=2e-4, grad_clip=2.0)
PREDICTOR_FIT = FitConfig(lr=4e-5, grad_clip=3.0)


def fit_tokenizer(
    tokenizer: KronosTokenizer,
    bars: BarSeries,
    config: FitConfig | None = None,
    log: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train the tokenizer on random windows of ``bars``; returns per-step metrics."""
    config = config or TOKENIZER_FIT
    generator = torch.Generator().manual_seed(config.seed)
    device = next(tokenizer.parameters()).device
    optimizer = make_optimizer(tokenizer, config.lr, config.weight_decay)
    history = []
    for step in range(config.steps):
        x, _ = sample_windows(bars, config.window, config.batch_size, generator, config.clip)
        batch = x.to(device)
        metrics = train_step(tokenizer, optimizer, functools.partial(tokenizer_loss, tokenizer, batch), config.grad_clip)
        history.append(metrics)
        if log is not None and config.log_every and (step + 1) % config.log_every == 0:
            log(step + 1, metrics)
    tokenizer.eval()
    return history


def fit_predictor(
    model: Kronos,
    tokenizer: KronosTokenizer,
    bars: BarSeries,
    config: FitConfig | None = None,
    log: Callable[[int, dict[str, float]], None] | None = None,
    *,
    teacher_forcing: bool = False,
) -> list[dict[str, float]]:
    """Train the predictor on random windows of ``bars`` with the tokenizer frozen."""
    config = config or PREDICTOR_FIT
    generator = torch.Generator().manual_seed(config.seed)
    device = next(model.parameters()).device
    sample_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    tokenizer.eval()
    optimizer = make_optimizer(model, config.lr, config.weight_decay)
    history = []
    for step in range(config.steps):
        x, stamp = sample_windows(bars, config.window, config.batch_size, generator, config.clip)
        compute = functools.partial(
            predictor_loss, model, tokenizer, x.to(device), stamp.to(device),
            teacher_forcing=teacher_forcing, generator=sample_gen,
        )
        metrics = train_step(model, optimizer, compute, config.grad_clip)
        history.append(metrics)
        if log is not None and config.log_every and (step + 1) % config.log_every == 0:
            log(step + 1, metrics)
    model.eval()
    return history
