"""Exact vs incremental streaming on the held-out tail of the bundled bars, measured.

Streams bars one at a time through :class:`kronos_core.StreamingForecaster`, once per mode
(``exact``, ``incremental``) and per sampling (``greedy``: top_k=1; ``sampled``: T=1, top_p=0.9,
the mean of ``--samples`` paths), with the same per-bar seeds (:func:`derive_seed`) everywhere, and
writes to ``--out-dir`` (default ``results/``):

- ``compare_modes.json``: all figures and the settings that produced them;
- ``compare_modes.md``: a short table;
- ``compare_modes.png``: token agreement, forecast error by horizon step, model time per bar.

Timestamps: the CSV holds naive Asia/Shanghai times; they are localised, converted to UTC (what
the daemon passes) and read back in ``StreamConfig(calendar_tz="Asia/Shanghai")``, so the time
features equal those the demo model was trained on. Future timestamps are the realised next bars.

Token agreement (incremental vs exact): at every streamed bar, the incremental mode's token cache
(``SeriesForecast.token_state``: bars since the last refresh, encoded with frozen statistics and an
encoder context that starts at the refresh) is compared with a fresh exact tokenisation of the same
bar: the last ``max_context - horizon`` bars normalised by their own mean/std and encoded from
scratch, exactly what exact mode feeds the predictor. Per bar, ``s1`` is the share of the bars held
by both whose s1 ids are equal (likewise ``s2``, and ``pair`` for both ids); ``newest`` compares only
the bar that just arrived. The figures are means over the streamed bars.

Run: ``python scripts/compare_modes.py [--bars 200] [--tokenizer DIR --predictor DIR]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from kronos_core import Kronos, KronosEngine, KronosTokenizer, SamplingParams
from kronos_core.preprocess import FEATURE_COLUMNS, normalize
from kronos_core.stream_types import SeriesForecast, SeriesWindow, StreamMode, TokenState, derive_seed
from kronos_core.streaming import StreamConfig, StreamingForecaster
from trainer.demo_model import BARS_CSV, CALENDAR_TZ, DEFAULT_OUT, load_bars, split_index

REPO = Path(__file__).resolve().parents[1]
CLOSE = FEATURE_COLUMNS.index("close")
MODES: tuple[StreamMode, ...] = ("exact", "incremental")
SYMBOL = "600000.SH-demo"


@dataclass
class Run:
    """One pass over the streamed bars: forecasts (close paths), token caches and timings."""

    mode: str
    sampling: str
    close: list[np.ndarray] = field(default_factory=list)  # per bar [H]
    states: list[TokenState | None] = field(default_factory=list)
    model_ms: list[float] = field(default_factory=list)
    stages_ms: list[dict[str, float]] = field(default_factory=list)  # per bar, the engine's stage timings


def to_utc_ns(local: pd.Series, tz: str) -> np.ndarray:
    """Naive local timestamps -> naive UTC datetime64[ns] (what the daemon hands the forecaster)."""
    idx = pd.DatetimeIndex(local).tz_localize(tz).tz_convert("UTC").tz_localize(None)
    return idx.to_numpy(dtype="datetime64[ns]")


def stream(
    forecaster: StreamingForecaster,
    values: np.ndarray,
    ts: np.ndarray,
    indices: range,
    horizon: int,
    base_seed: int,
    run: Run,
) -> None:
    """Feed bars ``indices`` one at a time, carrying the token cache like the daemon does."""
    max_context = forecaster.max_context
    state: TokenState | None = None
    for i in indices:
        lo = max(0, i + 1 - max_context)
        window = SeriesWindow(
            series_id=SYMBOL,
            values=values[lo : i + 1],
            timestamps=ts[lo : i + 1],
            future_timestamps=ts[i + 1 : i + 1 + horizon],
            seed=derive_seed(SYMBOL, int(ts[i].astype(np.int64)), forecaster.model_version, base_seed),
            token_state=state,
        )
        (result,) = forecaster.forecast([window], horizon)
        state = result.token_state
        run.close.append(result.mean[:, CLOSE])
        run.states.append(state)
        run.model_ms.append(_model_ms(result))
        run.stages_ms.append({k: v for k, v in result.timings_ms.items() if k != "model"})


def _model_ms(result: SeriesForecast) -> float:
    return float(result.timings_ms["model"])


def warm_up(forecaster: StreamingForecaster, values: np.ndarray, ts: np.ndarray, horizon: int) -> None:
    """One throwaway forecast so lazy initialisation does not land on the first timed bar."""
    n = forecaster.max_context
    window = SeriesWindow("warm-up", values[:n - horizon], ts[:n - horizon], ts[n - horizon : n], seed=0)
    forecaster.forecast([window], horizon)
    forecaster.drop(["warm-up"])


def token_agreement(
    engine: KronosEngine, states: list[TokenState | None], values: np.ndarray, ts_ns: np.ndarray,
    indices: range, lookback: int, clip: float,
) -> dict[str, list[float]]:
    """Per streamed bar: shares of equal s1 / s2 / pair ids between the incremental cache and a
    fresh exact tokenisation of the same bars (see the module docstring)."""
    out: dict[str, list[float]] = {"s1": [], "s2": [], "pair": [], "newest_s1": [], "newest_pair": [], "overlap": []}
    for i, state in zip(indices, states, strict=True):
        assert state is not None, "incremental mode returns a token cache for every bar"
        lo = i + 1 - lookback
        x, _, _ = normalize(values[lo : i + 1], clip)
        with torch.inference_mode():
            s1, s2 = engine.encode(torch.as_tensor(x, device=engine.device)[None])
        exact_s1, exact_s2 = s1[0].cpu().numpy(), s2[0].cpu().numpy()
        # Bars of the incremental cache: the consecutive window bars from anchor_ts to last_ts.
        start = int(np.searchsorted(ts_ns, state.anchor_ts))
        assert ts_ns[start] == state.anchor_ts and start + len(state) == i + 1, "cache must end at the new bar"
        first = max(start, lo)  # bars held by both
        inc = slice(first - start, None)
        exa = slice(first - lo, None)
        eq1 = state.s1[inc] == exact_s1[exa]
        eq2 = state.s2[inc] == exact_s2[exa]
        out["s1"].append(float(eq1.mean()))
        out["s2"].append(float(eq2.mean()))
        out["pair"].append(float((eq1 & eq2).mean()))
        out["newest_s1"].append(float(eq1[-1]))
        out["newest_pair"].append(float(eq1[-1] and eq2[-1]))
        out["overlap"].append(float(len(eq1)))
    return out


def refresh_causes(states: list[TokenState | None], refresh_every: int, horizon: int, max_context: int) -> dict[str, int]:
    """Why the incremental mode refreshed, inferred from consecutive token caches."""
    causes = {"cold_start": 0, "schedule": 0, "context_full": 0, "drift": 0}
    prev: TokenState | None = None
    for state in states:
        if state is not None and state.bars_since_refresh == 0:
            if prev is None:
                causes["cold_start"] += 1
            elif prev.bars_since_refresh + 1 > refresh_every:
                causes["schedule"] += 1
            elif len(prev) + 1 + horizon > max_context:
                causes["context_full"] += 1
            else:
                causes["drift"] += 1
        prev = state
    return causes


def summary(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"mean": round(float(a.mean()), 3), "p50": round(float(np.percentile(a, 50)), 3),
            "p90": round(float(np.percentile(a, 90)), 3)}


def load_model(args: argparse.Namespace) -> tuple[KronosTokenizer, Kronos, str, int]:
    """Tokenizer, predictor, model version and max_context (the manifest's, unless overridden)."""
    manifest: dict[str, Any] = {}
    manifest_path = Path(args.predictor).parent / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
    tokenizer = KronosTokenizer.from_pretrained(args.tokenizer)
    model = Kronos.from_pretrained(args.predictor)
    version = str(manifest.get("version", f"custom:{Path(args.predictor).resolve()}"))
    max_context = args.max_context or int(manifest.get("runtime", {}).get("max_context", 512))
    return tokenizer, model, version, max_context


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", type=Path, default=DEFAULT_OUT / "tokenizer")
    parser.add_argument("--predictor", type=Path, default=DEFAULT_OUT / "predictor")
    parser.add_argument("--csv", type=Path, default=BARS_CSV)
    parser.add_argument("--holdout-fraction", type=float, default=0.2, help="the tail streamed starts here")
    parser.add_argument("--bars", type=int, default=200, help="bars to stream (from the first held-out bar)")
    parser.add_argument("--horizon", type=int, default=12)
    parser.add_argument("--max-context", type=int, default=None, help="default: the manifest's, else 512")
    parser.add_argument("--refresh-every", type=int, default=StreamConfig.refresh_every)
    parser.add_argument("--drift-sigma", type=float, default=StreamConfig.drift_sigma)
    parser.add_argument("--samples", type=int, default=5, help="paths averaged by the sampled runs")
    parser.add_argument("--sampling", choices=("greedy", "sampled", "both"), default="both")
    parser.add_argument("--seed", type=int, default=0, help="base seed of derive_seed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=REPO / "results")
    args = parser.parse_args(argv)
    if args.bars < 1 or args.horizon < 1 or args.samples < 1:
        parser.error("--bars, --horizon and --samples must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    tokenizer, model, version, max_context = load_model(args)
    engine = KronosEngine(model, tokenizer, device="cpu", max_context=max_context)
    lookback = max(1, max_context - args.horizon)

    df = load_bars(args.csv)
    values = df[list(FEATURE_COLUMNS)].to_numpy(np.float64)
    ts = to_utc_ns(df["timestamps"], CALENDAR_TZ)
    ts_ns = ts.astype(np.int64)
    start = split_index(len(df), args.holdout_fraction)
    stop = min(start + args.bars, len(df) - args.horizon)
    if start < lookback or stop <= start:
        raise SystemExit(f"not enough bars: held-out tail starts at row {start}, lookback {lookback}, rows {len(df)}")
    indices = range(start, stop)

    samplings = {
        "greedy": SamplingParams(T=1.0, top_k=1, top_p=1.0),
        "sampled": SamplingParams(T=1.0, top_p=0.9, sample_count=args.samples),
    }
    chosen = list(samplings) if args.sampling == "both" else [args.sampling]
    runs: dict[tuple[str, str], Run] = {}
    t_all = time.perf_counter()
    for sampling in chosen:
        for mode in MODES:
            config = StreamConfig(
                mode=mode, sampling=samplings[sampling], clip=5.0, refresh_every=args.refresh_every,
                drift_sigma=args.drift_sigma, calendar_tz=CALENDAR_TZ,
            )
            forecaster = StreamingForecaster(engine, config, model_version=version)
            warm_up(forecaster, values, ts, args.horizon)
            run = runs[mode, sampling] = Run(mode, sampling)
            t0 = time.perf_counter()
            stream(forecaster, values, ts, indices, args.horizon, args.seed, run)
            print(f"{mode:11s} {sampling:7s} {len(indices)} bars in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    truth = np.stack([values[i + 1 : i + 1 + args.horizon, CLOSE] for i in indices])  # [N, H]
    last_close = values[list(indices), CLOSE][:, None]
    paths: dict[str, np.ndarray] = {f"{m}/{s}": np.stack(runs[m, s].close) for m, s in runs}
    paths["persistence"] = np.broadcast_to(last_close, truth.shape)
    errors = {name: np.abs(p - truth) for name, p in paths.items()}

    inc_states = runs["incremental", chosen[0]].states
    agreement = token_agreement(engine, inc_states, values, ts_ns, indices, lookback, 5.0)
    refresh = np.array([s is not None and s.bars_since_refresh == 0 for s in inc_states])

    timing: dict[str, Any] = {}
    for run in runs.values():
        stages = sorted({k for d in run.stages_ms for k in d})
        entry: dict[str, Any] = {
            "all": summary(run.model_ms),
            "stages_mean": {k: round(float(np.mean([d.get(k, 0.0) for d in run.stages_ms])), 3) for k in stages},
        }
        if run.mode == "incremental":
            ms = np.asarray(run.model_ms)
            entry["refresh_bars"] = summary(list(ms[refresh])) if refresh.any() else None
            entry["append_bars"] = summary(list(ms[~refresh])) if (~refresh).any() else None
        timing[f"{run.mode}/{run.sampling}"] = entry
    speedups = {
        s: round(timing[f"exact/{s}"]["all"]["mean"] / timing[f"incremental/{s}"]["all"]["mean"], 3) for s in chosen
    }

    figures: dict[str, Any] = {
        "command": " ".join(["python scripts/compare_modes.py", *(sys.argv[1:] if argv is None else argv)]),
        "model": {"version": version, "tokenizer": _rel(args.tokenizer), "predictor": _rel(args.predictor)},
        "data": {
            "csv": _rel(args.csv),
            "streamed_bars": len(indices),
            "first_bar_local": str(df["timestamps"].iloc[start]),
            "last_bar_local": str(df["timestamps"].iloc[stop - 1]),
            "first_row": start,
        },
        "settings": {
            "max_context": max_context, "lookback_exact": lookback, "horizon": args.horizon,
            "refresh_every": args.refresh_every, "drift_sigma": args.drift_sigma, "calendar_tz": CALENDAR_TZ,
            "timestamps": "CSV local times localised to Asia/Shanghai, passed as UTC",
            "sampling": {s: dataclasses.asdict(samplings[s]) for s in chosen}, "base_seed": args.seed,
            "torch_threads": torch.get_num_threads(), "device": "cpu",
        },
        "token_agreement": {
            "definition": "per bar, share of the bars held by both the incremental token cache and a fresh exact "
            "tokenisation of the last max_context - horizon bars (own mean/std) whose ids are equal; "
            "newest_*: the newly arrived bar only; means over the streamed bars",
            **{k: round(float(np.mean(v)), 4) for k, v in agreement.items() if k != "overlap"},
            "mean_overlap_bars": round(float(np.mean(agreement["overlap"])), 2),
            "refreshes": int(refresh.sum()),
            "refresh_causes": refresh_causes(inc_states, args.refresh_every, args.horizon, max_context),
        },
        "forecast_mae_close": {name: round(float(e.mean()), 6) for name, e in errors.items()},
        "forecast_mae_close_bps": {name: round(float((e / last_close).mean() * 1e4), 3) for name, e in errors.items()},
        "forecast_mae_close_per_step": {name: [round(float(v), 6) for v in e.mean(axis=0)] for name, e in errors.items()},
        "exact_vs_incremental_mean_abs_diff_close": {
            s: round(float(np.abs(paths[f"exact/{s}"] - paths[f"incremental/{s}"]).mean()), 6) for s in chosen
        },
        "model_ms_per_bar": timing,
        "speedup_exact_over_incremental": speedups,
        "wall_s": round(time.perf_counter() - t_all, 2),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "compare_modes.json").write_text(json.dumps(figures, indent=2) + "\n")
    (args.out_dir / "compare_modes.md").write_text(markdown(figures, chosen))
    plot(args.out_dir / "compare_modes.png", figures, agreement, refresh, runs, chosen, df, indices)
    print(json.dumps({k: figures[k] for k in ("token_agreement", "forecast_mae_close", "speedup_exact_over_incremental")},
                     indent=2))
    return 0


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def markdown(f: dict[str, Any], samplings: list[str]) -> str:
    s, ta, mae, bps = f["settings"], f["token_agreement"], f["forecast_mae_close"], f["forecast_mae_close_bps"]
    lines = [
        "# Exact vs incremental streaming",
        "",
        f"Model `{f['model']['version']}`, {f['data']['streamed_bars']} held-out bars "
        f"({f['data']['first_bar_local']} to {f['data']['last_bar_local']}, Asia/Shanghai), horizon {s['horizon']}, "
        f"max_context {s['max_context']}, refresh_every {s['refresh_every']}, drift_sigma {s['drift_sigma']}, "
        f"CPU, {s['torch_threads']} thread(s). Command: `{f['command']}`.",
        "",
        "| run | close MAE | MAE (bps) | model ms/bar (mean) | p90 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for sampling in samplings:
        for mode in MODES:
            key = f"{mode}/{sampling}"
            t = f["model_ms_per_bar"][key]["all"]
            lines.append(f"| {key} | {mae[key]:.5f} | {bps[key]:.2f} | {t['mean']:.2f} | {t['p90']:.2f} |")
    lines.append(f"| persistence (last close) | {mae['persistence']:.5f} | {bps['persistence']:.2f} | | |")
    lines += [
        "",
        f"Token agreement of the incremental cache with a fresh exact tokenisation (mean over bars, "
        f"{ta['mean_overlap_bars']} shared bars on average, {ta['refreshes']} refreshes: "
        + ", ".join(f"{k} {v}" for k, v in ta["refresh_causes"].items())
        + "): "
        f"s1 {ta['s1']:.3f}, s2 {ta['s2']:.3f}, both {ta['pair']:.3f}; newest bar s1 {ta['newest_s1']:.3f}, "
        f"both {ta['newest_pair']:.3f}.",
        "",
        "Exact / incremental mean model time per bar: "
        + ", ".join(f"{k} {v:.2f}x" for k, v in f["speedup_exact_over_incremental"].items())
        + ". Mean |exact - incremental| close forecast: "
        + ", ".join(f"{k} {v:.5f}" for k, v in f["exact_vs_incremental_mean_abs_diff_close"].items())
        + ".",
        "",
        "Mean stage times per bar (ms; `generate` is the horizon, the same work in both modes): "
        + "; ".join(
            f"{k}: " + ", ".join(f"{stage} {ms:.2f}" for stage, ms in v["stages_mean"].items())
            for k, v in f["model_ms_per_bar"].items()
        )
        + ".",
        "",
    ]
    return "\n".join(lines)


def plot(
    path: Path, f: dict[str, Any], agreement: dict[str, list[float]], refresh: np.ndarray,
    runs: dict[tuple[str, str], Run], samplings: list[str], df: pd.DataFrame, indices: range,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = np.arange(len(indices))
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0, 0]
    ax.plot(bars, df["close"].to_numpy()[list(indices)], color="black", lw=1, label="close")
    h = f["settings"]["horizon"]
    for mode, color in zip(MODES, ("tab:blue", "tab:orange"), strict=True):
        close = np.stack(runs[mode, samplings[0]].close)
        ax.plot(bars + h, close[:, -1], color=color, lw=0.8, alpha=0.8, label=f"{mode} {h}-step forecast")
    ax.set_title(f"close and {h}-bar-ahead forecasts ({samplings[0]})")
    ax.set_xlabel("streamed bar")
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    ax.plot(bars, agreement["s1"], label="s1", lw=1)
    ax.plot(bars, agreement["pair"], label="s1 and s2", lw=1)
    for b in bars[refresh]:
        ax.axvline(b, color="grey", lw=0.5, alpha=0.5)
    ax.set_ylim(0, 1.05)
    ax.set_title("token agreement, incremental vs exact (grey: refreshes)")
    ax.set_xlabel("streamed bar")
    ax.legend(fontsize=8)

    ax = axes[1, 0]
    steps = np.arange(1, h + 1)
    for name, per_step in f["forecast_mae_close_per_step"].items():
        ax.plot(steps, per_step, marker="o", ms=3, label=name, ls="--" if name == "persistence" else "-")
    ax.set_title("close MAE by horizon step")
    ax.set_xlabel("steps ahead")
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    for run in runs.values():
        ax.plot(bars, run.model_ms, lw=0.8, label=f"{run.mode}/{run.sampling}")
    ax.set_yscale("log")
    ax.set_title("model time per bar (ms, CPU)")
    ax.set_xlabel("streamed bar")
    ax.legend(fontsize=8)

    fig.suptitle(f"exact vs incremental streaming: {f['model']['version']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
