"""Train the small demo model shipped in ``daemon/assets/demo-model`` from the bundled bars.

Run ``python -m trainer.demo_model`` (``--out DIR``, ``--max-minutes M``, ``--threads N``); it writes
``results/demo-model`` unless ``--out daemon/assets/demo-model`` asks it to replace the shipped model. It

1. reads ``daemon/assets/bars_5min_a_share.csv`` (naive timestamps = Asia/Shanghai local time) and
   splits it by time: the first ``1 - holdout_fraction`` of the rows train, the rest is held out;
2. trains a tokenizer, then a predictor on the frozen tokenizer's tokens, with
   :mod:`kronos_core.training` (``sample_windows``, ``tokenizer_loss``, ``predictor_loss``,
   ``train_step``), adding a warm-up + cosine learning-rate schedule and a wall-clock budget;
3. measures train and held-out losses on fixed windows, and a held-out forecast check: the
   close MAE of greedy and mean-of-N-samples forecasts against the realised bars, next to the
   persistence baseline (last close), whatever the outcome;
4. writes ``<out>/tokenizer`` and ``<out>/predictor`` (``save_pretrained``) and
   ``<out>/manifest.json`` into a staging directory that then replaces ``<out>``.

Everything random is seeded, so a run that finishes within its budget is reproducible on the same
software and thread count (the manifest records both).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

import kronos_core
from kronos_core import (
    Kronos,
    KronosEngine,
    KronosTokenizer,
    PredictorConfig,
    SamplingParams,
    TokenizerConfig,
)
from kronos_core.checkpoint import WEIGHTS_NAME
from kronos_core.preprocess import FEATURE_COLUMNS, STD_EPS, denormalize, normalize, time_features
from kronos_core.stream_types import derive_seed
from kronos_core.training import (
    BarSeries,
    FitConfig,
    make_optimizer,
    predictor_loss,
    sample_windows,
    tokenizer_loss,
    train_step,
)
from trainer.loop import lr_factor  # one schedule for the demo model and the trainer

REPO = Path(__file__).resolve().parents[1]
BARS_CSV = REPO / "daemon" / "assets" / "bars_5min_a_share.csv"
DEFAULT_OUT = REPO / "daemon" / "assets" / "demo-model"  # the shipped model
SCRATCH_OUT = REPO / "results" / "demo-model"  # where the command writes unless told --out DEFAULT_OUT
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "kronos-stream/demo-model/1"
CALENDAR_TZ = "Asia/Shanghai"  # the zone of the CSV's naive timestamps and of the time features
CLOSE = FEATURE_COLUMNS.index("close")

LossFn = Callable[[Tensor, Tensor], tuple[Tensor, dict[str, float]]]
Log = Callable[[str], None]


@dataclass(frozen=True)
class DemoConfig:
    """Everything that shapes a demo run (recorded in the manifest)."""

    tokenizer: TokenizerConfig
    predictor: PredictorConfig
    tokenizer_fit: FitConfig
    predictor_fit: FitConfig
    holdout_fraction: float = 0.2
    warmup_fraction: float = 0.05  # of the steps, linear warm-up; then cosine decay to min_lr_ratio
    min_lr_ratio: float = 0.1
    loss_batches: int = 8  # fixed windows per loss measurement (train and held-out)
    horizon: int = 12
    eval_windows: int = 40
    eval_samples: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.tokenizer_fit.window != self.predictor_fit.window:
            raise ValueError("tokenizer and predictor must train on windows of the same length")
        if not 1 <= self.horizon < self.window:
            raise ValueError(f"horizon must be in [1, window={self.window}), got {self.horizon}")

    @property
    def window(self) -> int:
        """Bars per training window; also the ``max_context`` the model is meant to run with."""
        return self.predictor_fit.window


DEFAULT_CONFIG = DemoConfig(
    tokenizer=TokenizerConfig(
        d_in=6, d_model=48, n_heads=4, ff_dim=96, n_enc_layers=3, n_dec_layers=3,
        s1_bits=6, s2_bits=6, beta=0.05, gamma0=1.0, gamma=1.1, zeta=0.05, group_size=4,
    ),
    predictor=PredictorConfig(
        s1_bits=6, s2_bits=6, n_layers=2, d_model=64, n_heads=4, ff_dim=128,
        # Kronos-small's dropout: 2,000 bars overfit a predictor without it within ~200 steps.
        ffn_dropout_p=0.25, attn_dropout_p=0.1, resid_dropout_p=0.25, token_dropout_p=0.1, learn_te=True,
    ),
    tokenizer_fit=FitConfig(steps=300, batch_size=16, window=128, lr=2e-3, weight_decay=0.01, grad_clip=2.0, seed=0),
    predictor_fit=FitConfig(steps=350, batch_size=16, window=128, lr=1e-3, weight_decay=0.1, grad_clip=3.0, seed=1),
)


# ----------------------------------------------------------------------------- data


def load_bars(csv: str | os.PathLike[str] = BARS_CSV) -> pd.DataFrame:
    """The bar CSV, sorted by time; timestamps stay naive (local exchange time)."""
    df = pd.read_csv(csv, parse_dates=["timestamps"])
    if not df["timestamps"].is_monotonic_increasing or df["timestamps"].duplicated().any():
        raise ValueError(f"{csv}: timestamps must be strictly increasing")
    return df.reset_index(drop=True)


def split_index(n_rows: int, holdout_fraction: float) -> int:
    """Index of the first held-out row: rows ``[0, split)`` train, ``[split, n_rows)`` are held out."""
    return n_rows - max(1, round(n_rows * holdout_fraction))


# ----------------------------------------------------------------------------- training


def fit(
    module: nn.Module,
    bars: BarSeries,
    config: FitConfig,
    loss_fn: LossFn,
    *,
    warmup_fraction: float,
    min_lr_ratio: float,
    deadline: float = math.inf,
    log: Log | None = None,
    name: str = "",
) -> list[dict[str, float]]:
    """``config.steps`` optimisation steps on random windows of ``bars`` (fewer if ``deadline``,
    a ``time.monotonic()`` value, passes first). Same sampling and step as kronos_core's
    ``fit_tokenizer``/``fit_predictor``, plus the learning-rate schedule."""
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = make_optimizer(module, config.lr, config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        functools.partial(
            lr_factor, steps=config.steps, warmup=max(1, round(warmup_fraction * config.steps)), min_ratio=min_lr_ratio
        ),
    )
    history: list[dict[str, float]] = []
    for step in range(config.steps):
        if time.monotonic() > deadline:
            if log:
                log(f"{name}: time budget spent after {step} of {config.steps} steps")
            break
        x, stamp = sample_windows(bars, config.window, config.batch_size, generator, config.clip)
        metrics = train_step(module, optimizer, functools.partial(loss_fn, x, stamp), config.grad_clip)
        metrics["lr"] = float(schedule.get_last_lr()[0])
        schedule.step()
        history.append(metrics)
        if log and (step + 1) % max(1, config.steps // 10) == 0:
            log(f"{name} step {step + 1}/{config.steps} loss {metrics['loss']:.4f}")
    module.eval()
    return history


@contextlib.contextmanager
def loss_mode(*modules: nn.Module) -> Iterator[None]:
    """Training-mode forward passes (the causal masks the losses were trained with) without
    dropout or gradients; modules are left in eval mode."""
    for m in modules:
        m.train()
        for sub in m.modules():
            if isinstance(sub, nn.Dropout):
                sub.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m in modules:
            m.eval()


def measure_loss(
    modules: tuple[nn.Module, ...], bars: BarSeries, loss_fn: LossFn, config: FitConfig, batches: int, seed: int
) -> dict[str, float]:
    """Mean loss (and parts) over ``batches`` fixed random windows of ``bars``."""
    generator = torch.Generator().manual_seed(seed)
    totals: dict[str, float] = {}
    with loss_mode(*modules):
        for _ in range(batches):
            x, stamp = sample_windows(bars, config.window, config.batch_size, generator, config.clip)
            loss, parts = loss_fn(x, stamp)
            for key, value in {"loss": loss.item(), **parts}.items():
                totals[key] = totals.get(key, 0.0) + value
    return {key: round(value / batches, 5) for key, value in totals.items()}


def curve_ends(history: list[dict[str, float]], n: int = 20) -> dict[str, float | int]:
    """Mean training loss over the first and the last ``n`` steps (fewer for short runs)."""
    k = max(1, min(n, len(history) // 4))
    return {
        "start": round(float(np.mean([h["loss"] for h in history[:k]])), 5),
        "end": round(float(np.mean([h["loss"] for h in history[-k:]])), 5),
        "steps_averaged": k,
    }


# ----------------------------------------------------------------------------- held-out forecast check


def forecast_check(
    tokenizer: KronosTokenizer,
    model: Kronos,
    df: pd.DataFrame,
    split: int,
    *,
    lookback: int,
    horizon: int,
    n_windows: int,
    samples: int,
    seed: int,
    version: str,
) -> dict[str, Any]:
    """Close MAE of greedy and mean-of-``samples`` forecasts vs the realised bars and persistence.

    Origins (the last context bar) are spread evenly so that every forecast target lies in the
    held-out rows ``[split, len(df))``; contexts are the ``lookback`` bars up to the origin.
    """
    values = df[list(FEATURE_COLUMNS)].to_numpy(np.float64)
    stamps = time_features(df["timestamps"])
    first, last = max(split - 1, lookback - 1), len(df) - 1 - horizon
    if last < first:
        raise ValueError(f"held-out tail too short for horizon {horizon} (rows {len(df)}, split {split})")
    origins = np.unique(np.linspace(first, last, n_windows).round().astype(int))
    xs, x_st, y_st, means, stds = [], [], [], [], []
    for t in origins:
        x, mean, std = normalize(values[t + 1 - lookback : t + 1])
        xs.append(x)
        means.append(mean)
        stds.append(std)
        x_st.append(stamps[t + 1 - lookback : t + 1])
        y_st.append(stamps[t + 1 : t + 1 + horizon])
    engine = KronosEngine(model, tokenizer, device="cpu", max_context=lookback + horizon)
    seeds = [derive_seed("demo-check", int(df["timestamps"].iloc[t].value), version, seed) for t in origins]
    greedy = engine.generate(xs, x_st, y_st, horizon, SamplingParams(T=1.0, top_k=1, top_p=1.0), seeds=seeds)
    sampled = engine.generate(xs, x_st, y_st, horizon, SamplingParams(sample_count=samples), seeds=seeds)

    def close_paths(preds: np.ndarray) -> np.ndarray:  # [B, S, H, 6] normalised -> [B, H] close
        return np.stack([denormalize(p.mean(axis=0), means[i], stds[i])[:, CLOSE] for i, p in enumerate(preds)])

    truth = np.stack([values[t + 1 : t + 1 + horizon, CLOSE] for t in origins])  # [B, H]
    last_close = values[origins, CLOSE][:, None]
    paths = {
        "greedy": close_paths(greedy),
        f"mean_of_{samples}_samples": close_paths(sampled),
        "persistence": np.broadcast_to(last_close, truth.shape),
        "tokenizer_roundtrip": _roundtrip_close(tokenizer, values, origins, lookback, horizon, means, stds),
    }
    out: dict[str, Any] = {
        "windows": len(origins),
        "horizon": horizon,
        "lookback": lookback,
        "origins": [str(df["timestamps"].iloc[origins[0]]), str(df["timestamps"].iloc[origins[-1]])],
        "metric": "mean absolute error of the close over all windows and horizon steps (price units); "
        "bps: relative to the last observed close",
        "tokenizer_roundtrip_note": "the realised bars encoded and decoded by the tokenizer (context statistics): "
        "the error a perfect token predictor would still make",
        "mae_close": {},
        "mae_close_bps": {},
        "mae_close_per_step": {},
    }
    for name, path in paths.items():
        err = np.abs(path - truth)
        out["mae_close"][name] = round(float(err.mean()), 6)
        out["mae_close_bps"][name] = round(float((err / last_close).mean() * 1e4), 3)
        out["mae_close_per_step"][name] = [round(float(v), 6) for v in err.mean(axis=0)]
    base = out["mae_close"]["persistence"]
    out["skill_vs_persistence"] = {
        name: round(1.0 - out["mae_close"][name] / base, 4) if base > 0 else None
        for name in paths
        if name not in ("persistence", "tokenizer_roundtrip")
    }
    return out


def _roundtrip_close(
    tokenizer: KronosTokenizer,
    values: np.ndarray,
    origins: np.ndarray,
    lookback: int,
    horizon: int,
    means: list[np.ndarray],
    stds: list[np.ndarray],
) -> np.ndarray:
    """Close of the realised horizon after a tokenizer round trip, scaled by each context's stats.  # [B, H]"""
    rows = []
    for i, t in enumerate(origins):
        window = values[t + 1 - lookback : t + 1 + horizon]
        rows.append(np.clip((window - means[i]) / (stds[i] + STD_EPS), -5.0, 5.0))
    x = torch.as_tensor(np.stack(rows), dtype=torch.float32)  # [B, L + H, 6]
    with torch.no_grad():
        s1, s2 = tokenizer.encode(x, half=True)
        z = tokenizer.decode([s1, s2], half=True)[:, -horizon:].double().numpy()  # [B, H, 6]
    return np.stack([denormalize(z[i], means[i], stds[i])[:, CLOSE] for i in range(len(origins))])


# ----------------------------------------------------------------------------- publishing


def weights_digest(*directories: Path) -> str:
    """sha256 over the weight files of the given checkpoint directories, in order."""
    h = hashlib.sha256()
    for directory in directories:
        h.update((directory / WEIGHTS_NAME).read_bytes())
    return h.hexdigest()


def _file_info(path: Path, root: Path) -> dict[str, Any]:
    return {"path": str(path.relative_to(root)), "bytes": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _replace_dir(staging: Path, out: Path) -> None:
    """Make ``staging`` the new ``out`` (the old one, if any, is removed only after the swap)."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    staging.rename(out)
    if old.exists():
        shutil.rmtree(old)


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: train the demo model with `python -m trainer.demo_model`")
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a demo-model manifest (format {MANIFEST_FORMAT!r})")
    return data


# ----------------------------------------------------------------------------- the run


def build_models(config: DemoConfig) -> tuple[KronosTokenizer, Kronos]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        tokenizer = KronosTokenizer(config.tokenizer)
        model = Kronos(config.predictor)
    return tokenizer, model


def _train(
    config: DemoConfig, bars: BarSeries, deadline: float, log: Log | None
) -> tuple[KronosTokenizer, Kronos, list[dict[str, float]], list[dict[str, float]], dict[str, float]]:
    """The tokenizer, then the predictor on the frozen tokenizer; the tokenizer gets at most 40% of
    the time left. Returns both models, their step histories and wall times (s)."""
    tokenizer, model = build_models(config)

    def tok_loss(x: Tensor, stamp: Tensor) -> tuple[Tensor, dict[str, float]]:
        return tokenizer_loss(tokenizer, x)

    sample_gen = torch.Generator().manual_seed(config.predictor_fit.seed + 1)  # as fit_predictor

    def pred_loss(x: Tensor, stamp: Tensor) -> tuple[Tensor, dict[str, float]]:
        return predictor_loss(model, tokenizer, x, stamp, generator=sample_gen)

    t0 = time.monotonic()
    tok_deadline = t0 + 0.4 * (deadline - t0) if math.isfinite(deadline) else deadline
    tok_hist = fit(tokenizer, bars, config.tokenizer_fit, tok_loss, warmup_fraction=config.warmup_fraction,
                   min_lr_ratio=config.min_lr_ratio, deadline=tok_deadline, log=log, name="tokenizer")
    tokenizer.requires_grad_(False)
    t1 = time.monotonic()
    pred_hist = fit(model, bars, config.predictor_fit, pred_loss, warmup_fraction=config.warmup_fraction,
                    min_lr_ratio=config.min_lr_ratio, deadline=deadline, log=log, name="predictor")
    t2 = time.monotonic()
    if not tok_hist or not pred_hist:
        raise RuntimeError("the time budget ran out before training started; raise --max-minutes")
    wall = {"tokenizer": round(t1 - t0, 2), "predictor": round(t2 - t1, 2), "total": round(t2 - t0, 2)}
    return tokenizer, model, tok_hist, pred_hist, wall


def train_demo(
    config: DemoConfig = DEFAULT_CONFIG,
    out: str | os.PathLike[str] = DEFAULT_OUT,
    *,
    csv: str | os.PathLike[str] = BARS_CSV,
    max_minutes: float | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Train, evaluate and write the demo checkpoint into ``out``; returns the manifest."""
    started = time.monotonic()
    deadline = math.inf if max_minutes is None else started + 60.0 * max_minutes
    df = load_bars(csv)
    split = split_index(len(df), config.holdout_fraction)
    if split < config.window or len(df) - split < config.window:
        raise ValueError(
            f"{len(df)} rows leave too few bars for windows of {config.window} on both sides of the split at {split}"
        )
    train_bars, holdout_bars = BarSeries.from_frame(df.iloc[:split]), BarSeries.from_frame(df.iloc[split:])
    with torch.random.fork_rng(devices=[]):  # dropout draws from the global generator: seed it, restore it
        torch.manual_seed(config.seed)
        tokenizer, model, tok_hist, pred_hist, wall = _train(config, train_bars, deadline, log)

    def tok_loss(x: Tensor, stamp: Tensor) -> tuple[Tensor, dict[str, float]]:
        return tokenizer_loss(tokenizer, x)

    def pred_loss(seed: int) -> LossFn:
        generator = torch.Generator().manual_seed(seed)  # the s1 draws that condition s2
        return lambda x, stamp: predictor_loss(model, tokenizer, x, stamp, generator=generator)

    n = config.loss_batches
    losses = {
        "tokenizer": {
            "train_steps": curve_ends(tok_hist),
            "train": measure_loss((tokenizer,), train_bars, tok_loss, config.tokenizer_fit, n, config.seed + 11),
            "val": measure_loss((tokenizer,), holdout_bars, tok_loss, config.tokenizer_fit, n, config.seed + 12),
        },
        "predictor": {
            "train_steps": curve_ends(pred_hist),
            "train": measure_loss((model,), train_bars, pred_loss(config.seed + 7), config.predictor_fit, n, config.seed + 13),
            "val": measure_loss((model,), holdout_bars, pred_loss(config.seed + 8), config.predictor_fit, n, config.seed + 14),
        },
    }

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.staging-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    tokenizer.save_pretrained(staging / "tokenizer")
    model.save_pretrained(staging / "predictor")
    digest = weights_digest(staging / "tokenizer", staging / "predictor")
    version = f"demo-{dt.datetime.now(dt.UTC):%Y%m%d}-{digest[:8]}"
    check = forecast_check(
        tokenizer, model, df, split, lookback=config.window - config.horizon, horizon=config.horizon,
        n_windows=config.eval_windows, samples=config.eval_samples, seed=config.seed, version=version,
    )
    ts = df["timestamps"]
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "version": version,
        "parent_version": None,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "weights_sha256": digest,
        "runtime": {
            "max_context": config.window,
            "calendar_tz": CALENDAR_TZ,
            "note": "trained on windows of max_context bars; run the engine with this max_context",
        },
        "data": {
            "source": _display_path(Path(csv)),
            "timezone": f"{CALENDAR_TZ} (naive local timestamps)",
            "rows": len(df),
            "train": {"rows": split, "first": str(ts.iloc[0]), "last": str(ts.iloc[split - 1])},
            "holdout": {"rows": len(df) - split, "first": str(ts.iloc[split]), "last": str(ts.iloc[-1])},
        },
        "hyperparameters": {
            "tokenizer": config.tokenizer.to_dict(),
            "predictor": config.predictor.to_dict(),
            "tokenizer_fit": dataclasses.asdict(config.tokenizer_fit),
            "predictor_fit": dataclasses.asdict(config.predictor_fit),
            "schedule": {"warmup_fraction": config.warmup_fraction, "min_lr_ratio": config.min_lr_ratio,
                         "kind": "linear warm-up, cosine decay"},
            "predictor_teacher_forcing": False,
            "seed": config.seed,
        },
        "training": {
            "tokenizer_steps": len(tok_hist),
            "predictor_steps": len(pred_hist),
            "completed": len(tok_hist) == config.tokenizer_fit.steps and len(pred_hist) == config.predictor_fit.steps,
            "wall_s": wall,
            "max_minutes": max_minutes,
            "torch_threads": torch.get_num_threads(),
        },
        "losses": losses,
        "loss_note": "train_steps: mean training-step loss at the start and end of training; "
        "train/val: mean over fixed random windows, training-mode masks, no dropout; "
        "predictor s2 is conditioned on a sampled s1 as in training",
        "holdout_forecast": check,
        "software": {"kronos_core": kronos_core.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
    }
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    manifest["files"] = [_file_info(p, staging) for p in files]
    (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    for path in staging.rglob("*"):  # safetensors writes 0600; the assets are meant to be read by all
        path.chmod(0o755 if path.is_dir() else 0o644)
    _replace_dir(staging, out)
    manifest["total_wall_s"] = round(time.monotonic() - started, 2)
    return manifest


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.demo_model", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=SCRATCH_OUT,
        help=f"checkpoint directory, replaced (default {_display_path(SCRATCH_OUT)}; the shipped model is "
        f"replaced only when asked: --out {_display_path(DEFAULT_OUT)})",
    )
    parser.add_argument("--csv", type=Path, default=BARS_CSV, help="bar CSV (timestamps,open,...,amount)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="wall-clock budget for training; steps left when it runs out are skipped")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=DEFAULT_CONFIG.seed)
    parser.add_argument("--tokenizer-steps", type=int, default=DEFAULT_CONFIG.tokenizer_fit.steps)
    parser.add_argument("--predictor-steps", type=int, default=DEFAULT_CONFIG.predictor_fit.steps)
    args = parser.parse_args(argv)
    if args.max_minutes is not None and args.max_minutes <= 0:
        parser.error("--max-minutes must be > 0")
    torch.set_num_threads(max(1, args.threads))
    config = dataclasses.replace(
        DEFAULT_CONFIG,
        seed=args.seed,
        tokenizer_fit=dataclasses.replace(DEFAULT_CONFIG.tokenizer_fit, steps=args.tokenizer_steps, seed=args.seed),
        predictor_fit=dataclasses.replace(DEFAULT_CONFIG.predictor_fit, steps=args.predictor_steps, seed=args.seed + 1),
    )

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    manifest = train_demo(config, args.out, csv=args.csv, max_minutes=args.max_minutes, log=log)
    summary = {
        "out": str(args.out),
        "version": manifest["version"],
        "training_wall_s": manifest["training"]["wall_s"],
        "total_wall_s": manifest["total_wall_s"],
        "losses": manifest["losses"],
        "holdout_mae_close": manifest["holdout_forecast"]["mae_close"],
        "skill_vs_persistence": manifest["holdout_forecast"]["skill_vs_persistence"],
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
