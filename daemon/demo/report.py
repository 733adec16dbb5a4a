"""The demo's report: the line printed per forecast, the scores against the realised bars, the figure
and the summary (JSON and text) of a replay (:mod:`daemon.demo.replay`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from zoneinfo import ZoneInfo

import numpy as np

from daemon.demo.config import CSV_TZ, MODEL_DIR, DemoConfig
from daemon.io.feeds import FeedBar
from daemon.io.messages import format_ts, quantile_key, to_ns
from daemon.scoring.report import report_dict
from daemon.scoring.scorer import MODEL_BANDS_SUFFIX
from daemon.settings import Settings
from kronos_core.scoring import ScoreAccumulator

if TYPE_CHECKING:
    from daemon.demo.replay import ReplayResult

HISTORY_BARS = 96  # bars of history drawn before the plotted forecast


# -- the printed forecasts ------------------------------------------------------------------------


def forecast_line(record: dict[str, Any], last_close: float | None, zone: ZoneInfo) -> str:
    """One compact line per forecast: symbol, as-of (local time), next-bar close mean [p10, p90],
    horizon-end close mean, model time."""
    as_of = datetime.fromisoformat(record["as_of"]).astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")
    mean = record["mean"]["close"]
    lo, hi = _band(record)
    last = "" if last_close is None else f"close {last_close:.2f}  "
    return (
        f"{record['symbol']}  {as_of}  {last}next {mean[0]:.3f} [{lo[0]:.3f}-{hi[0]:.3f}]  "
        f"+{record['horizon']} bars {mean[-1]:.3f}  model {record['latency_ms']['model']:.0f} ms"
    )


def _band(record: dict[str, Any]) -> tuple[list[float], list[float]]:
    """The outermost quantile band of the close (p10 and p90 with the default levels)."""
    levels, bands = record["quantile_levels"], record["quantiles"]
    return bands[quantile_key(levels[0])]["close"], bands[quantile_key(levels[-1])]["close"]


# -- scoring --------------------------------------------------------------------------------------


def _mae_block(pred: list[float], base: list[float], real: list[float], inside: list[bool]) -> dict[str, Any]:
    if not real:
        return {"n": 0}
    p, b, r = np.asarray(pred), np.asarray(base), np.asarray(real)
    model_mae = float(np.mean(np.abs(p - r)))
    base_mae = float(np.mean(np.abs(b - r)))
    return {
        "n": len(real),
        "model_mae": round(model_mae, 5),
        "persistence_mae": round(base_mae, 5),
        "skill_vs_persistence": round(1.0 - model_mae / base_mae, 4) if base_mae > 0 else None,
        "band_coverage": round(float(np.mean(inside)), 4),
    }


def score(forecasts: Sequence[dict[str, Any]], bars: Sequence[FeedBar]) -> dict[str, Any]:
    """Close MAE of the forecast mean at horizon step 1, at the last step and over all steps, against
    the realised bars (the k-th bar after the forecast's bar) and against persistence (the last close);
    ``band_coverage`` is the share of realised closes inside the outermost quantile band (p10-p90)."""
    index = {format_ts(to_ns(ts)): i for i, (_, ts, _) in enumerate(bars)}
    closes = [values[3] for _, _, values in bars]
    steps: dict[str, tuple[list[float], list[float], list[float], list[bool]]] = {
        name: ([], [], [], []) for name in ("horizon_1", "horizon_end", "all_steps")
    }
    for record in forecasts:
        i = index[record["as_of"]]
        horizon = record["horizon"]
        mean = record["mean"]["close"]
        lo, hi = _band(record)
        for k in range(horizon):
            if i + 1 + k >= len(closes):
                break
            real = closes[i + 1 + k]
            names = ["all_steps"] if i + horizon < len(closes) else []
            names += ["horizon_1"] if k == 0 else []
            names += ["horizon_end"] if k == horizon - 1 else []
            for name in names:
                pred, base, realised, inside = steps[name]
                pred.append(mean[k])
                base.append(closes[i])
                realised.append(real)
                inside.append(lo[k] <= real <= hi[k])
    return {name: _mae_block(*lists) for name, lists in steps.items()}


# -- the figure -----------------------------------------------------------------------------------


def _tick_labels(axis: Any, positions: Sequence[int], stamps: Sequence[datetime], count: int = 6) -> None:
    if not positions:
        return
    step = max(1, len(positions) // count)
    chosen = list(range(0, len(positions), step))
    axis.set_xticks([positions[j] for j in chosen])
    axis.set_xticklabels([stamps[j].strftime("%m-%d %H:%M") for j in chosen], fontsize=8)


def plot(
    path: Path,
    forecasts: Sequence[dict[str, Any]],
    history: Sequence[FeedBar],
    bars: Sequence[FeedBar],
    title: str,
) -> dict[str, Any] | None:
    """Two panels: the last forecast whose horizon is fully realised (history, realised continuation,
    mean path, p10-p90 band), and the horizon-1 forecast against the realised close over the replay.
    Returns the plotted forecast."""
    from matplotlib.figure import Figure

    zone = ZoneInfo(CSV_TZ)
    every = [*history, *bars]
    stamps = [ts.astimezone(zone) for _, ts, _ in every]
    closes = [values[3] for _, _, values in every]
    index = {format_ts(to_ns(ts)): i for i, (_, ts, _) in enumerate(every)}
    realised_ok = [r for r in forecasts if index[r["as_of"]] + r["horizon"] < len(every)]
    chosen = realised_ok[-1] if realised_ok else None

    fig = Figure(figsize=(11, 8), layout="constrained")
    top, bottom = fig.subplots(2, 1)
    if chosen is not None:
        i, h = index[chosen["as_of"]], chosen["horizon"]
        lo, hi = _band(chosen)
        first = max(0, i - HISTORY_BARS)
        xs = list(range(first, i + 1))
        future = list(range(i + 1, i + 1 + h))
        top.plot(xs, closes[first : i + 1], color="black", lw=1.2, label="close (history)")
        top.plot([i, *future], closes[i : i + 1 + h], color="tab:green", lw=1.5, label="realised")
        top.plot([i, *future], [closes[i], *chosen["mean"]["close"]], color="tab:blue", lw=1.5,
                 label=f"forecast mean ({chosen['sample_count']} paths)")  # fmt: skip
        top.fill_between(future, lo, hi, color="tab:blue", alpha=0.2, label="p10-p90")
        top.axvline(i, color="grey", lw=0.8, ls="--")
        when = stamps[i].strftime("%Y-%m-%d %H:%M %Z")
        top.set_title(f"{title}: the last forecast with a fully realised horizon (as of {when})", fontsize=10)
        _tick_labels(top, list(range(first, i + 1 + h)), stamps[first : i + 1 + h])
        top.legend(fontsize=8, loc="best")
    top.set_ylabel("close")
    top.set_xlabel("five-minute bars (trading time; breaks and nights closed up)")

    pos, real, pred, lo1, hi1 = [], [], [], [], []
    for record in forecasts:
        j = index[record["as_of"]] + 1
        if j < len(every):
            lo, hi = _band(record)
            pos.append(j)
            real.append(closes[j])
            pred.append(record["mean"]["close"][0])
            lo1.append(lo[0])
            hi1.append(hi[0])
    bottom.plot(pos, real, color="black", lw=1.0, label="realised close")
    bottom.plot(pos, pred, color="tab:blue", lw=1.0, label="forecast for the next bar (mean)")
    bottom.fill_between(pos, lo1, hi1, color="tab:blue", alpha=0.2, label="p10-p90")
    bottom.set_title("Next-bar forecasts over the replay", fontsize=10)
    bottom.set_ylabel("close")
    bottom.set_xlabel("the bar forecast (trading time)")
    _tick_labels(bottom, pos, [stamps[j] for j in pos])
    bottom.legend(fontsize=8, loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return chosen


# -- the summary ----------------------------------------------------------------------------------


def _command(config: DemoConfig) -> str:
    parts = ["kronos-stream demo", f"--bars {config.bars}", f"--mode {config.mode}"]
    if config.warmup is not None:
        parts.append(f"--warmup {config.warmup}")
    parts += [f"--speed {config.speed:g}", f"--samples {config.sample_count}", f"--symbol {config.symbol}"]
    if not config.calibrate:
        parts.append("--no-calibration")
    parts += [] if config.retrain else ["--no-retrain"]
    return " ".join([*parts, f"--out {config.out}"])


def summarise(
    config: DemoConfig, settings: Settings, result: ReplayResult, bars: Sequence[FeedBar], accuracy: dict[str, Any],
    plotted: dict[str, Any] | None, json_path: Path, wall_s: float,
) -> dict[str, Any]:  # fmt: skip
    forecasts = result.forecasts
    model_ms = np.asarray([r["latency_ms"]["model"] for r in forecasts] or [0.0])
    ids = [r["id"] for r in forecasts]
    manifest = json.loads((MODEL_DIR / "manifest.json").read_text())
    train_last = datetime.fromisoformat(manifest["data"]["train"]["last"]).replace(tzinfo=ZoneInfo(CSV_TZ))
    in_training = sum(1 for _, ts, _ in bars if ts <= train_last)
    zone = ZoneInfo(CSV_TZ)
    m = settings.model
    last = forecasts[-1] if forecasts else None
    return {
        "command": _command(config),
        "symbol": config.symbol,
        "model_version": last["model_version"] if last else None,
        "mode": settings.mode,
        "device": result.device,
        "torch_threads": result.torch_threads,
        "settings": {
            "max_context": m.max_context,
            "horizon": m.horizon,
            "sample_count": m.sample_count,
            "temperature": m.temperature,
            "top_p": m.top_p,
            "top_k": m.top_k,
            "quantile_levels": list(m.quantile_levels),
            "refresh_every_bars": settings.refresh_every_bars,
            "drift_sigma": settings.drift_sigma,
            "calendar_tz": m.calendar_tz,
            "exchange_calendar": m.exchange_calendar,
        },
        "data": {
            "csv": "daemon/assets/bars_5min_a_share.csv",
            "warmup_bars": config.warmup_bars,
            "replayed_bars": len(bars),
            "first_replayed_local": bars[0][1].astimezone(zone).isoformat() if bars else None,
            "last_replayed_local": bars[-1][1].astimezone(zone).isoformat() if bars else None,
            "replayed_bars_in_model_training_rows": in_training,
        },
        "forecasts": {
            "replayed": len(forecasts),
            "warmup": result.warmup_forecasts,
            "dead_letters": result.dead_letters,
            "unique_ids": len(set(ids)) == len(ids),
            "latest_in_store_is_last_published": bool(
                last and result.latest_in_store and result.latest_in_store["id"] == last["id"]
            ),
        },
        "timing": {
            "wall_s": round(wall_s, 2),
            "model_load_s": round(result.model_load_s, 2),
            "warmup_s": round(result.warmup_s, 2),
            "replay_s": round(result.replay_s, 2),
            "bars_per_s": round(len(forecasts) / result.replay_s, 1) if result.replay_s > 0 else None,
            "model_ms": {
                "mean": round(float(model_ms.mean()), 2),
                "p50": round(float(np.percentile(model_ms, 50)), 2),
                "p90": round(float(np.percentile(model_ms, 90)), 2),
            },
            "speed": config.speed,
        },
        "accuracy": {
            "note": "close MAE in price units of the forecast mean vs the realised k-th next bar; "
            "persistence = the last close; band_coverage = share of realised closes inside p10-p90",
            **accuracy,
        },
        "accuracy_by_version": {
            version: score([r for r in forecasts if r["model_version"] == version], bars)
            for version in dict.fromkeys(r["model_version"] for r in forecasts)
        },
        "retrain": result.retrain,
        "online_scores": _online(result.online, settings),
        "plot": {
            "png": str(config.out),
            "json": str(json_path),
            "as_of": plotted["as_of"] if plotted else None,
        },
    }


def _merged(accs: Sequence[ScoreAccumulator]) -> ScoreAccumulator | None:
    merged: ScoreAccumulator | None = None
    for acc in accs:
        merged = ScoreAccumulator.from_dict(acc.to_dict()) if merged is None else merged.merge(acc)
    return merged


def _online(sums: dict[str, ScoreAccumulator], settings: Settings) -> dict[str, Any]:
    """All model versions together (a retrain swaps the model halfway), and each version alone."""
    versions = [v for v in sums if not v.endswith(MODEL_BANDS_SUFFIX)]
    published = _merged([sums[v] for v in versions])
    model = _merged([sums.get(v + MODEL_BANDS_SUFFIX, sums[v]) for v in versions])
    return {
        "note": "the daemon's online scores (daemon/scoring/scorer.py) of the forecasts made on the replayed "
        "bars, all steps, every model version together; model_bands: the bands the model made; "
        "published_bands: as published (when calibrated is true: the calibrated distribution guarded by the "
        "rolling-volatility walk, learning per symbol from every earlier realised forecast, warm-up and "
        "model versions included, daemon/scoring/calibration.py)",
        "calibrated": settings.scoring.calibrate,
        "calibration_min": settings.scoring.calibration_min,
        "model_bands": report_dict(model) if model is not None else None,
        "published_bands": report_dict(published) if published is not None else None,
        "by_version": {v: {"published_bands": report_dict(sums[v])} for v in versions},
    }


def _online_lines(online: dict[str, Any]) -> list[str]:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:+.1%}"

    lines = [
        "  online scores (the daemon's scorer; forecasts of the replayed bars, all steps):",
        "    bands                  close MAE  persistence  skill    CRPS      CRPS skill  p10-p90 coverage  n",
    ]
    rows = [("model", online["model_bands"])]
    if online["calibrated"]:
        rows.append(("published (guarded)", online["published_bands"]))
    for label, rep in rows:
        if not rep or rep["mae"] is None:
            lines.append(f"    {label:<22} (nothing realised yet)")
            continue
        lines.append(
            f"    {label:<22} {rep['mae']:<10.4f} {rep['persistence_mae']:<12.4f} {pct(rep['skill_mae']):<8} "
            f"{rep['crps']:<9.4f} {pct(rep['skill_crps']):<11} {rep['coverage']:<17.0%} {rep['count']}"
        )
    return lines


def print_summary(summary: dict[str, Any], echo: TextIO) -> None:
    t, f, a = summary["timing"], summary["forecasts"], summary["accuracy"]
    lines = [
        "",
        f"{f['replayed']} forecasts for {summary['data']['replayed_bars']} bars of {summary['symbol']} "
        f"(after {f['warmup']} warm-up bars), model {summary['model_version']}, {summary['mode']} mode, "
        f"{summary['settings']['sample_count']} paths, {summary['device']}, {summary['torch_threads']} thread(s)",
        f"  throughput {t['bars_per_s']} bars/s over {t['replay_s']} s (speed {t['speed']:g}); "
        f"model {t['model_ms']['mean']} ms mean, {t['model_ms']['p90']} ms p90; wall {t['wall_s']} s "
        f"(model load {t['model_load_s']} s, warm-up {t['warmup_s']} s)",
        f"  ids unique: {f['unique_ids']}; latest forecast in the state store = last published: "
        f"{f['latest_in_store_is_last_published']}; dead letters: {f['dead_letters']}",
        "  close MAE vs realised bars     model     persistence   skill    p10-p90 coverage     n",
    ]
    for name, label in (("horizon_1", "next bar"), ("horizon_end", f"+{summary['settings']['horizon']} bars"),
                        ("all_steps", "all steps")):  # fmt: skip
        b = a[name]
        if b["n"] == 0:
            lines.append(f"    {label:<28} (nothing realised yet)")
            continue
        skill = "n/a" if b["skill_vs_persistence"] is None else f"{b['skill_vs_persistence']:+.1%}"
        lines.append(
            f"    {label:<28} {b['model_mae']:<9.4f} {b['persistence_mae']:<13.4f} {skill:<8} "
            f"{b['band_coverage']:<20.0%} {b['n']}"
        )
    by_version = summary.get("accuracy_by_version") or {}
    if len(by_version) > 1:
        lines.append(
            "  by model version (each on the bars it forecast)   next bar: model / persistence   all steps: model / persistence"
        )
        for version, v in by_version.items():
            h1, al = v["horizon_1"], v["all_steps"]
            lines.append(
                f"    {version:<44} {_mae(h1, 'model_mae')} / {_mae(h1, 'persistence_mae')} (n {h1['n']})"
                f"   {_mae(al, 'model_mae')} / {_mae(al, 'persistence_mae')} (n {al['n']})"
            )
    lines += _online_lines(summary["online_scores"])
    verdict = a["horizon_1"].get("skill_vs_persistence")
    if verdict is not None and verdict < 0:
        lines.append("  (the demo model is tiny and briefly trained: persistence beats it here)")
    lines.append(f"  figure {summary['plot']['png']}, summary {summary['plot']['json']}")
    print("\n".join(lines), file=echo, flush=True)


def _mae(block: dict[str, Any], key: str) -> str:
    return "n/a" if not block["n"] else f"{block[key]:.4f}"
