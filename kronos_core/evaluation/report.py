"""A backtest's results for people: ``backtest.json`` (the summary), ``backtest.md`` (tables) and
``backtest.png`` (a fan chart of a few origins, coverage by step, the P(up) reliability diagram and
skill by step)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from kronos_core.evaluation.distribution import quantiles_at

ROWS = (
    ("published", "published (calibrated, guarded)"),
    ("model", "model as it samples"),
    ("model_calibrated", "model, calibrated"),
    ("rw_vol", "random walk, rolling vol"),
    ("ewma_vol", "random walk, EWMA vol"),
    ("persistence", "persistence"),
)


def _entry(summary: dict[str, Any], name: str) -> dict[str, Any]:
    return summary["baselines"][name] if name in summary["baselines"] else summary[name]


def _f(x: Any, spec: str = ".5f") -> str:
    return "n/a" if x is None else format(x, spec)


def summary_table(summary: dict[str, Any]) -> str:
    """The headline table (CRPS and MAE in units of the origin's last close)."""
    run = summary["run"]
    lines = [
        f"{summary['n_origins']} scored origins over {len(run['symbols'])} symbol(s), horizon {run['horizon']}, "
        f"context {run['context']}, {run['samples']} paths, model {run['model_version']}",
        f"{'distribution':<34}{'CRPS':>10}{'MAE':>10}{'p10-p90':>9}{'width':>10}{'Brier up':>10}",
    ]
    for name, label in ROWS:
        e = _entry(summary, name)
        lines.append(
            f"{label:<34}{_f(e.get('crps')):>10}{_f(e.get('mae')):>10}{_f(e.get('coverage_p10_p90'), '.1%'):>9}"
            f"{_f(e.get('width_p10_p90')):>10}{_f(e.get('brier_up'), '.4f'):>10}"
        )
    clim = summary["climatology"]
    lines.append(f"{'climatological P(up)':<34}{'':>39}{_f(clim.get('brier_up'), '.4f'):>10}")
    g = summary["guard"]
    lines.append(
        f"published CRPS / better of (model calibrated, rw_vol): {_f(g.get('crps_vs_better_of_model_and_rw_vol'), '.4f')}"
        f"; mean model weight {_f(g.get('model_weight_mean'), '.3f')}"
    )
    for key, p in summary["dm_pvalue"].items():
        lines.append(f"skill {key:<30} {_f(summary['skill'][key], '+.1%'):>8}  DM p-value {_f(p, '.3g')}")
    lines.append(f"{run['forecasts']} forecasts, {run['forecasts_per_s']} forecasts/s (model alone {run['model_forecasts_per_s']}/s)")
    return "\n".join(lines)


def markdown(summary: dict[str, Any], title: str = "Backtest") -> str:
    run = summary["run"]
    out = [f"# {title}", "", "```", summary_table(summary), "```", "", "## Per step", ""]
    steps = run["horizon"]
    out.append("| step | " + " | ".join(f"{n} CRPS" for n in ("published", "model", "rw_vol", "persistence"))
               + " | published p10-p90 | model p10-p90 |")  # fmt: skip
    out.append("|---" * 7 + "|")
    ps = summary["per_step"]
    for k in range(steps):
        out.append(
            f"| {k + 1} | " + " | ".join(_f(ps[n]["crps"][k]) for n in ("published", "model", "rw_vol", "persistence"))
            + f" | {_f(ps['published']['coverage_p10_p90'][k], '.1%')} | {_f(ps['model']['coverage_p10_p90'][k], '.1%')} |"
        )  # fmt: skip
    out += ["", "## Per symbol", "", "| symbol | origins | CRPS | rw_vol CRPS | p10-p90 | Brier up |", "|---|---|---|---|---|---|"]
    for s, e in summary["per_symbol"].items():
        out.append(f"| {s} | {e['origins']} | {_f(e['crps'])} | {_f(e['rw_vol_crps'])} | "
                   f"{_f(e['coverage_p10_p90'], '.1%')} | {_f(e['brier_up'], '.4f')} |")  # fmt: skip
    out += ["", "## P(up) reliability", "", "| bin | n | mean P(up) | frequency |", "|---|---|---|---|"]
    for row in summary["reliability_up"]:
        out.append(f"| {row['bin']} | {row['n']} | {_f(row['mean_p'], '.3f')} | {_f(row['frequency'], '.3f')} |")
    out += ["", f"PIT histogram (published, 10 bins): {summary['published']['pit_histogram']}", ""]
    return "\n".join(out)


def plot(result: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result.summary
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    ax = axes[0, 0]
    for i, fan in enumerate(result.fans):
        x0 = np.arange(len(fan["history"])) + i * (len(fan["history"]) + len(fan["realised"]) + 4)
        x1 = x0[-1] + 1 + np.arange(len(fan["realised"]))
        lo, mid, hi = quantiles_at(fan["published"], (0.1, 0.5, 0.9))
        mlo, mhi = quantiles_at(fan["model"], (0.1, 0.9))
        ax.plot(x0, fan["history"], color="k", lw=1)
        ax.fill_between(x1, lo, hi, color="tab:blue", alpha=0.3, label="published p10-p90" if i == 0 else None)
        ax.plot(x1, mlo, color="tab:orange", lw=0.8, ls="--", label="model p10/p90" if i == 0 else None)
        ax.plot(x1, mhi, color="tab:orange", lw=0.8, ls="--")
        ax.plot(x1, mid, color="tab:blue", lw=1)
        ax.plot(x1, fan["realised"], color="tab:red", lw=1.2, label="realised" if i == 0 else None)
    ax.set_title(f"{result.fans[0]['symbol'] if result.fans else ''}: a few origins")
    ax.legend(fontsize=8)
    ax.set_xticks([])
    steps = np.arange(1, s["run"]["horizon"] + 1)
    ax = axes[0, 1]
    for name in ("published", "model", "rw_vol"):
        ax.plot(steps, s["per_step"][name]["coverage_p10_p90"], marker="o", ms=3, label=name)
    ax.axhline(0.8, color="k", lw=0.8, ls=":")
    ax.axhspan(0.7, 0.9, color="grey", alpha=0.1)
    ax.set_ylim(0, 1)
    ax.set_title("p10-p90 coverage by step (nominal 80%)")
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    ax = axes[1, 0]
    rows = [r for r in s["reliability_up"] if r["n"]]
    ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls=":")
    ax.scatter([r["mean_p"] for r in rows], [r["frequency"] for r in rows], s=[10 + r["n"] / 5 for r in rows])
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"P(up) reliability (Brier {s['published']['brier_up']}, climatology {s['climatology']['brier_up']})")
    ax.set_xlabel("forecast P(up)")
    ax.set_ylabel("observed frequency")
    ax = axes[1, 1]
    for name in ("published", "model"):
        for base, ls in (("rw_vol", "-"), ("persistence", "--")):
            ours = np.asarray(s["per_step"][name]["crps"], dtype=float)
            theirs = np.asarray(s["per_step"][base]["crps"], dtype=float)
            ax.plot(steps, 1 - ours / theirs, ls=ls, label=f"{name} vs {base}")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_title("CRPS skill by step (above 0: better than the baseline)")
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(result: Any, out: Path, title: str = "Backtest") -> list[Path]:
    """``backtest.json``, ``backtest.md`` and ``backtest.png`` in ``out`` (created)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "backtest.json", out / "backtest.md", out / "backtest.png"]
    paths[0].write_text(json.dumps(result.summary, indent=1) + "\n")
    paths[1].write_text(markdown(result.summary, title))
    plot(result, paths[2])
    return paths
