"""Train the small demo model shipped in ``daemon/assets/demo-model`` from the bundled bars, through
the trainer's own code path.

Run ``python -m trainer.demo_model`` (``--out DIR``, ``--threads N``, ``--seed S``, ``--steps N``,
``--tokenizer-steps N``); it writes ``results/demo-model`` unless ``--out daemon/assets/demo-model``
asks it to replace the shipped model. In a temporary folder it

1. imports ``daemon/assets/bars_5min_a_share.csv`` (naive timestamps = Asia/Shanghai local time, stored
   as UTC) into an archive with :func:`kronos_contract.archive.write_bars`;
2. writes random-init checkpoint folders of the demo shapes (seeded), with a manifest naming the
   runtime (``max_context`` 128, calendar Asia/Shanghai);
3. runs :func:`trainer.run.run_training` on them, exactly as ``kronos-stream train --tokenizer-dir ...
   --predictor-dir ...`` would: the tokenizer phase (``tokenizer_steps``), then the predictor on the
   frozen tokenizer's tokens, both through the DDP wrapper (a one-process gloo group), on windows
   normalised with lookback-only statistics; a walk-forward split whose cut is placed so that the
   last ``holdout_bars`` (500) bars are held out (the demo replays the last 240 and warms up on the
   128 before them: none of them is trained on); the trainer's gate scores the trained model against
   the random init and persistence on held-out windows (recorded, nothing is published);
4. measures losses on fixed train and held-out windows (random init vs trained) and a held-out
   forecast check: the close MAE of greedy and mean-of-N-samples forecasts against the realised
   bars, next to persistence (last close) and the tokenizer round trip, whatever the outcome;
5. writes ``<out>/tokenizer``, ``<out>/predictor`` and ``<out>/manifest.json`` into a staging folder
   that then replaces ``<out>``.

Everything random is seeded and the step counts are fixed (no wall-clock cut-off), so a run is
reproducible on the same software and thread count (the manifest records both). About 75-90 s of
training on one thread of this project's 2-core machine (the manifest records the time measured).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

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
from trainer.data import Split, WindowSet, derive
from trainer.loop import predictor_loss_ddp, tokenizer_loss_ddp
from trainer.settings import TrainSettings

REPO = Path(__file__).resolve().parents[1]
BARS_CSV = REPO / "daemon" / "assets" / "bars_5min_a_share.csv"
DEFAULT_OUT = REPO / "daemon" / "assets" / "demo-model"  # the shipped model
SCRATCH_OUT = REPO / "results" / "demo-model"  # where the command writes unless told --out DEFAULT_OUT
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "kronos-stream/demo-model/2"
CALENDAR_TZ = "Asia/Shanghai"  # the zone of the CSV's naive timestamps and of the time features
SYMBOL = "DEMO"  # the archive's symbol for the bundled bars
CLOSE = FEATURE_COLUMNS.index("close")

Log = Callable[[str], None]


@dataclass(frozen=True)
class DemoConfig:
    """Everything that shapes a demo run (recorded in the manifest); the training fields are
    :class:`trainer.settings.TrainSettings` fields of the same name."""

    tokenizer: TokenizerConfig
    predictor: PredictorConfig
    lookback: int = 116
    horizon: int = 12
    holdout_bars: int = 500  # the most recent bars, never trained on
    tokenizer_steps: int = 300
    tokenizer_lr: float = 2e-3
    tokenizer_grad_clip: float = 2.0
    steps: int = 350  # predictor steps
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 15  # linear warm-up, then cosine decay to min_lr_ratio (each phase)
    min_lr_ratio: float = 0.1
    grad_clip: float = 3.0
    batch_size: int = 16
    loss_windows: int = 128  # fixed windows per loss measurement (train and held-out)
    gate_windows: int = 40  # held-out windows the trainer's gate scores (trained vs random init)
    eval_windows: int = 40  # held-out forecast check
    eval_samples: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.holdout_bars < self.window:
            raise ValueError(f"holdout_bars must be at least one window ({self.window}), got {self.holdout_bars}")
        if not 1 <= self.horizon < self.window:
            raise ValueError(f"horizon must be in [1, window={self.window}), got {self.horizon}")

    @property
    def window(self) -> int:
        """Bars per training window; also the ``max_context`` the model is meant to run with."""
        return self.lookback + self.horizon

    def training_fields(self) -> dict[str, Any]:
        """The :class:`TrainSettings` fields this config sets."""
        names = ("lookback", "horizon", "tokenizer_steps", "tokenizer_lr", "tokenizer_grad_clip", "steps", "lr",
                 "weight_decay", "warmup_steps", "min_lr_ratio", "grad_clip", "batch_size", "seed")
        return {name: getattr(self, name) for name in names}


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


def utc_times(df: pd.DataFrame) -> pd.DatetimeIndex:
    """The CSV's naive local times as tz-aware UTC."""
    return pd.DatetimeIndex(df["timestamps"]).tz_localize(CALENDAR_TZ).tz_convert("UTC")


def import_bars(df: pd.DataFrame, root: Path) -> list[str]:
    """The bars into an archive at ``root`` (``kronos_contract.archive`` layout, symbol :data:`SYMBOL`)."""
    from kronos_contract.archive import write_bars

    frame = pd.DataFrame({"symbol": SYMBOL, "ts": utc_times(df)})
    for column in FEATURE_COLUMNS:
        frame[column] = df[column].to_numpy(np.float64)
    return write_bars(str(root), frame, name=f"import-{SYMBOL}")


def val_fraction_for(times: pd.DatetimeIndex, split: int) -> float:
    """The trainer's ``val_fraction`` whose walk-forward cut falls halfway between bar ``split - 1``
    and bar ``split``: rows ``[0, split)`` train, the rest is held out."""
    cut = times[split - 1] + (times[split] - times[split - 1]) / 2
    return float((times[-1] - cut) / (times[-1] - times[0]))


# ----------------------------------------------------------------------------- models


def build_models(config: DemoConfig) -> tuple[KronosTokenizer, Kronos]:
    """Random-init tokenizer and predictor of the demo shapes (seeded; the global RNG is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        tokenizer = KronosTokenizer(config.tokenizer)
        model = Kronos(config.predictor)
    return tokenizer, model


def write_init(config: DemoConfig, folder: Path) -> tuple[Path, Path]:
    """The random-init checkpoint folders the trainer starts from, with a manifest naming the runtime."""
    tokenizer, model = build_models(config)
    tokenizer.save_pretrained(folder / "tokenizer")
    model.save_pretrained(folder / "predictor")
    (folder / MANIFEST_NAME).write_text(json.dumps({"version": None, "runtime": runtime_block(config)}))
    return folder / "tokenizer", folder / "predictor"


def runtime_block(config: DemoConfig) -> dict[str, Any]:
    return {
        "max_context": config.window,
        "calendar_tz": CALENDAR_TZ,
        "note": "trained on windows of max_context bars; run the engine with this max_context",
    }


def train_settings(config: DemoConfig, root: Path, init: tuple[Path, Path], df: pd.DataFrame, split: int,
                   threads: int | None) -> TrainSettings:
    """What ``kronos-stream train`` would be given: the archive, the init folders, no registry."""
    times = utc_times(df)
    return TrainSettings(
        archive=str(root / "archive"), registry=None, work_dir=root / "work", tokenizer_dir=init[0],
        predictor_dir=init[1], start=times[0].to_pydatetime(),
        end=(times[-1] + pd.Timedelta(seconds=1)).to_pydatetime(), symbols=(SYMBOL,),
        val_fraction=val_fraction_for(times, split), calendar_tz=CALENDAR_TZ,
        eval_windows=config.gate_windows, eval_samples=max(2, config.eval_samples), num_workers=0, device="cpu",
        threads=threads, save_every=max(1, config.tokenizer_steps + config.steps), progress="log",
        log_every=max(1, (config.tokenizer_steps + config.steps) // 10), promote=False, redis_url=None,
        **config.training_fields(),
    )


# ----------------------------------------------------------------------------- losses


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


def measure_losses(tokenizer: KronosTokenizer, model: Kronos, windows: WindowSet, batch_size: int,
                   seed: int) -> dict[str, dict[str, float]]:
    """Mean tokenizer and predictor losses (the trainer's, lookback-only windows) over ``windows``,
    in fixed batches; s2 is conditioned on s1 drawn with a fixed seed, as in training."""
    totals: dict[str, dict[str, float]] = {"tokenizer": {}, "predictor": {}}
    batches = 0
    generator = torch.Generator().manual_seed(derive("demo-loss", seed))
    with loss_mode(tokenizer, model):
        for first in range(0, len(windows) - batch_size + 1, batch_size):
            items = [windows[i] for i in range(first, first + batch_size)]
            x, stamp = torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])
            for name, (loss, parts) in (
                ("tokenizer", tokenizer_loss_ddp(tokenizer, x)),
                ("predictor", predictor_loss_ddp(model, tokenizer, x, stamp, windows.lookback, generator=generator)),
            ):
                for key, value in {"loss": loss.item(), **parts}.items():
                    totals[name][key] = totals[name].get(key, 0.0) + value
            batches += 1
    if not batches:
        raise ValueError(f"{len(windows)} windows cannot fill one batch of {batch_size}")
    return {name: {k: round(v / batches, 5) for k, v in parts.items()} for name, parts in totals.items()}


def loss_table(init: tuple[KronosTokenizer, Kronos], trained: tuple[KronosTokenizer, Kronos], split: Split,
               config: DemoConfig) -> dict[str, Any]:
    """Train and held-out losses of the random init and the trained model on the same fixed windows.

    The init predictor is measured on the trained tokenizer's tokens (those it was trained on)."""
    out: dict[str, Any] = {"tokenizer": {}, "predictor": {}}
    for part, windows in (("train", split.train), ("val", split.val)):
        fixed = windows.subset(config.loss_windows)
        seed = config.seed + (0 if part == "train" else 1)
        before = measure_losses(init[0], init[1], fixed, config.batch_size, seed)
        before_pred = measure_losses(trained[0], init[1], fixed, config.batch_size, seed)["predictor"]
        after = measure_losses(trained[0], trained[1], fixed, config.batch_size, seed)
        out["tokenizer"][part] = {"init": before["tokenizer"], "trained": after["tokenizer"]}
        out["predictor"][part] = {"init": before_pred, "trained": after["predictor"]}
        out[f"{part}_windows"] = len(fixed)
    return out


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
        raise ValueError(f"{path} is not a demo-model manifest (format {MANIFEST_FORMAT!r}); retrain it with "
                         "`python -m trainer.demo_model`")
    return data


# ----------------------------------------------------------------------------- the run

# Trainer settings that name this run's temporary folders: left out of the manifest.
_LOCAL_SETTINGS = ("archive", "registry", "work_dir", "tokenizer_dir", "predictor_dir", "redis_url", "key_prefix",
                   "progress", "log_every", "save_every", "version_prefix", "keep_versions", "promote")


def train_demo(
    config: DemoConfig = DEFAULT_CONFIG,
    out: str | os.PathLike[str] = DEFAULT_OUT,
    *,
    csv: str | os.PathLike[str] = BARS_CSV,
    threads: int | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Train (through :func:`trainer.run.run_training`), evaluate and write the demo checkpoint into
    ``out``; returns the manifest (plus ``total_wall_s``, not written). The caller's global RNG state
    is restored (building modules, ``from_pretrained`` included, draws from it)."""
    with torch.random.fork_rng(devices=[]):
        return _train_demo(config, Path(out), csv, threads, log)


def _train_demo(config: DemoConfig, out: Path, csv: str | os.PathLike[str], threads: int | None,
                log: Log | None) -> dict[str, Any]:
    from trainer.run import load_split, run_training

    started = time.monotonic()
    df = load_bars(csv)
    split = len(df) - config.holdout_bars
    if split < config.window:
        raise ValueError(f"{len(df)} rows leave fewer than {config.window} bars before the last "
                         f"{config.holdout_bars} held-out ones")
    with tempfile.TemporaryDirectory(prefix="kronos-demo-model-") as tmp:
        root = Path(tmp)
        import_bars(df, root / "archive")
        init_dirs = write_init(config, root / "init")
        settings = train_settings(config, root, init_dirs, df, split, threads)
        data = load_split(settings, CALENDAR_TZ)
        train_rows = data.summary["symbols"][SYMBOL]["train_rows"]  # type: ignore[index]
        if train_rows != split:
            raise RuntimeError(f"the walk-forward cut left {train_rows} training rows, expected {split}")
        if log:
            log(f"training: {config.tokenizer_steps} tokenizer + {config.steps} predictor steps on rows [0, {split}) "
                f"({data.summary['train_windows']} windows), {len(df) - split} bars held out")
        t0 = time.monotonic()
        trained_manifest = run_training(settings)
        train_wall = time.monotonic() - t0
        candidate = settings.work_dir / "candidate"
        tokenizer = KronosTokenizer.from_pretrained(candidate / "tokenizer")
        model = Kronos.from_pretrained(candidate / "predictor")
        init = (KronosTokenizer.from_pretrained(init_dirs[0]), Kronos.from_pretrained(init_dirs[1]))
        losses = loss_table(init, (tokenizer, model), data, config)

        out.parent.mkdir(parents=True, exist_ok=True)
        staging = out.with_name(f".{out.name}.staging-{os.getpid()}")
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        for name in ("tokenizer", "predictor"):
            shutil.copytree(candidate / name, staging / name)
    digest = weights_digest(staging / "tokenizer", staging / "predictor")
    version = f"demo-{dt.datetime.now(dt.UTC):%Y%m%d}-{digest[:8]}"
    check = forecast_check(
        tokenizer, model, df, split, lookback=config.lookback, horizon=config.horizon,
        n_windows=config.eval_windows, samples=config.eval_samples, seed=config.seed, version=version,
    )
    manifest = build_manifest(config, df, split, csv, trained_manifest, train_wall, losses, check, version, digest)
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    manifest["files"] = [_file_info(p, staging) for p in files]
    (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    for path in staging.rglob("*"):  # safetensors writes 0600; the assets are meant to be read by all
        path.chmod(0o755 if path.is_dir() else 0o644)
    _replace_dir(staging, out)
    manifest["total_wall_s"] = round(time.monotonic() - started, 2)
    return manifest


def build_manifest(config: DemoConfig, df: pd.DataFrame, split: int, csv: str | os.PathLike[str],
                   trained: dict[str, Any], train_wall: float, losses: dict[str, Any], check: dict[str, Any],
                   version: str, digest: str) -> dict[str, Any]:
    ts = df["timestamps"]
    settings = {k: v for k, v in trained["settings"].items() if k not in _LOCAL_SETTINGS}
    training = trained["training"]
    return {
        "format": MANIFEST_FORMAT,
        "version": version,
        "parent_version": None,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "weights_sha256": digest,
        "runtime": runtime_block(config),
        "data": {
            "source": _display_path(Path(csv)),
            "timezone": f"{CALENDAR_TZ} (naive local timestamps)",
            "archive_symbol": SYMBOL,
            "rows": len(df),
            "train": {"rows": split, "first": str(ts.iloc[0]), "last": str(ts.iloc[split - 1])},
            "holdout": {"rows": len(df) - split, "first": str(ts.iloc[split]), "last": str(ts.iloc[-1])},
            "walk_forward": {k: trained["data"][k] for k in ("cut", "train_windows", "val_windows")},
        },
        "hyperparameters": {
            "tokenizer": config.tokenizer.to_dict(),
            "predictor": config.predictor.to_dict(),
            "trainer_settings": settings,
            "init": "random, torch.manual_seed(seed) before building the tokenizer, then the predictor",
        },
        "training": {
            "code_path": "trainer.run.run_training (archive -> walk-forward split -> tokenizer phase -> predictor "
                         "phase, DDP wrapper, lookback-only normalisation -> gate)",
            "tokenizer_steps": training["steps"].get("tokenizer", 0),
            "predictor_steps": training["steps"]["predictor"],
            "completed": training["steps"].get("tokenizer", 0) == config.tokenizer_steps
            and training["steps"]["predictor"] == config.steps and training["resumed_from_step"] == 0,
            "loop_wall_s": training["wall_s"],
            "run_training_wall_s": round(train_wall, 2),
            "samples_per_s": training["samples_per_s"],
            "last_step": training["last_step"],
            "world_size": training["world_size"],
            "torch_threads": torch.get_num_threads(),
        },
        "losses": losses,
        "loss_note": "mean over fixed windows (lookback-only normalisation), training-mode masks, no dropout; "
        "predictor: cross-entropy of the horizon tokens only, s2 conditioned on a sampled s1 as in training; "
        "init = the random-init weights (the init predictor on the trained tokenizer's tokens)",
        "gate_evaluation": {**trained["evaluation"], "champion_is": "the random-init model"},
        "holdout_forecast": check,
        "software": {"kronos_core": kronos_core.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
    }


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    from trainer.cli import configure_logging

    parser = argparse.ArgumentParser(prog="python -m trainer.demo_model", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=SCRATCH_OUT,
        help=f"checkpoint directory, replaced (default {_display_path(SCRATCH_OUT)}; the shipped model is "
        f"replaced only when asked: --out {_display_path(DEFAULT_OUT)})",
    )
    parser.add_argument("--csv", type=Path, default=BARS_CSV, help="bar CSV (timestamps,open,...,amount)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=DEFAULT_CONFIG.seed)
    parser.add_argument("--tokenizer-steps", type=int, default=DEFAULT_CONFIG.tokenizer_steps)
    parser.add_argument("--steps", type=int, default=DEFAULT_CONFIG.steps, help="predictor steps")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.steps < 1 or args.tokenizer_steps < 0:
        parser.error("--threads and --steps must be >= 1, --tokenizer-steps >= 0")
    configure_logging(0)  # the trainer's structlog lines on stderr; the summary on stdout
    config = dataclasses.replace(DEFAULT_CONFIG, seed=args.seed, tokenizer_steps=args.tokenizer_steps,
                                 steps=args.steps)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    manifest = train_demo(config, args.out, csv=args.csv, threads=args.threads, log=log)
    summary = {
        "out": str(args.out),
        "version": manifest["version"],
        "run_training_wall_s": manifest["training"]["run_training_wall_s"],
        "loop_wall_s": manifest["training"]["loop_wall_s"],
        "total_wall_s": manifest["total_wall_s"],
        "losses": manifest["losses"],
        "holdout_mae_close": manifest["holdout_forecast"]["mae_close"],
        "skill_vs_persistence": manifest["holdout_forecast"]["skill_vs_persistence"],
        "gate_crps": {k: (manifest["gate_evaluation"].get(k) or {}).get("crps")
                      for k in ("candidate", "champion", "persistence")},
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
