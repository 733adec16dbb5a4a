"""Scores of a backtest: every distribution against the realised closes, per origin and step.

Distributions: ``published`` (guarded), ``model`` (as the model made it), ``model_calibrated``, and
the baselines ``rw_vol``, ``ewma_vol`` and ``persistence``. Per origin and step: CRPS, the absolute
error of the distribution's mean, pinball loss at ``LEVELS``, coverage of the central 50/80/90% bands,
the PIT of the outcome, the p10-p90 width, and P(up) with its outcome. Price quantities are taken
relative to the origin's last close, so symbols of any price pool; skill ratios do not depend on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kronos_core.evaluation.distribution import cdf_at, crps, prob_up, quantiles_at
from kronos_core.evaluation.publisher import Published
from kronos_core.evaluation.stats import diebold_mariano

LEVELS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
BANDS: dict[str, tuple[float, float]] = {"p25_p75": (0.25, 0.75), "p10_p90": (0.1, 0.9), "p05_p95": (0.05, 0.95)}
NAMES = ("published", "model", "model_calibrated", "rw_vol", "ewma_vol", "persistence")
BASELINES = ("persistence", "rw_vol", "ewma_vol")


def _r(x: Any, digits: int = 6) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), digits)


class Scores:
    def __init__(self, horizon: int, symbols: Sequence[str]) -> None:
        self.horizon = horizon
        self.rows: dict[str, dict[str, list[np.ndarray]]] = {s: {} for s in symbols}

    def count(self, symbol: str) -> int:
        return len(self.rows[symbol].get("up", ()))

    def _put(self, symbol: str, key: str, value: np.ndarray) -> None:
        self.rows[symbol].setdefault(key, []).append(np.asarray(value, dtype=np.float64))

    def add(self, symbol: str, p: Published, extra: dict[str, np.ndarray], realised: np.ndarray) -> None:
        y = np.asarray(realised, dtype=np.float64)
        last = p.last_close
        grids = {"published": p.quantiles, "model": p.model, "model_calibrated": p.model_calibrated, "rw_vol": p.rw_vol, **extra}
        lvl = np.asarray(LEVELS)[:, None]
        at = {lv: i for i, lv in enumerate(LEVELS)}  # every band edge is one of LEVELS
        for name, q in grids.items():
            self._put(symbol, f"{name}.crps", crps(q, y) / last)
            self._put(symbol, f"{name}.mae", np.abs(q.mean(axis=0) - y) / last)
            lv = quantiles_at(q, LEVELS)  # [L, H]
            diff = y[None, :] - lv
            self._put(symbol, f"{name}.pinball", np.maximum(lvl * diff, (lvl - 1) * diff) / last)
            for band, (lo, hi) in BANDS.items():
                self._put(symbol, f"{name}.cover_{band}", (lv[at[lo]] <= y) & (y <= lv[at[hi]]))
            self._put(symbol, f"{name}.width", (lv[at[0.9]] - lv[at[0.1]]) / last)
            self._put(symbol, f"{name}.pit", cdf_at(q, y))
            up = p.p_up if name == "published" else prob_up(q, last)
            self._put(symbol, f"{name}.p_up", up)
        self._put(symbol, "weights", p.weights)
        self._put(symbol, "p_freq", p.ticket.p_freq)
        self._put(symbol, "up", (y > last).astype(np.float64))

    # ------------------------------------------------------------------ summary

    def _stack(self, key: str, symbols: Sequence[str] | None = None) -> np.ndarray:
        parts = [np.stack(self.rows[s][key]) for s in (symbols or self.rows) if self.rows[s].get(key)]
        return np.concatenate(parts) if parts else np.zeros((0, self.horizon))

    def _one(self, name: str, symbols: Sequence[str] | None = None) -> dict[str, Any]:
        crps_ = self._stack(f"{name}.crps", symbols)
        if not len(crps_):
            return {}
        up = self._stack("up", symbols)
        p_up = self._stack(f"{name}.p_up", symbols)
        pin = self._stack(f"{name}.pinball", symbols)  # [N, L, H]
        out: dict[str, Any] = {
            "crps": _r(crps_.mean()),
            "mae": _r(self._stack(f"{name}.mae", symbols).mean()),
            "pinball": {f"{lv:g}": _r(pin[:, i].mean()) for i, lv in enumerate(LEVELS)},
            "width_p10_p90": _r(self._stack(f"{name}.width", symbols).mean()),
            "brier_up": _r(np.mean((p_up - up) ** 2)) if name != "persistence" else None,
        }
        for band in BANDS:
            out[f"coverage_{band}"] = _r(self._stack(f"{name}.cover_{band}", symbols).mean(), 4)
        return out

    def _per_step(self, name: str) -> dict[str, list[float | None]]:
        crps_ = self._stack(f"{name}.crps")
        return {
            "crps": [_r(v) for v in crps_.mean(axis=0)],
            "mae": [_r(v) for v in self._stack(f"{name}.mae").mean(axis=0)],
            "coverage_p10_p90": [_r(v, 4) for v in self._stack(f"{name}.cover_p10_p90").mean(axis=0)],
            "width_p10_p90": [_r(v) for v in self._stack(f"{name}.width").mean(axis=0)],
        }

    def _dm(self, name: str, base: str) -> dict[str, float | int | None]:
        diffs = [
            np.stack(r[f"{name}.crps"]).mean(axis=1) - np.stack(r[f"{base}.crps"]).mean(axis=1)
            for r in self.rows.values()
            if r.get(f"{name}.crps")
        ]
        return {k: _r(v) if isinstance(v, float) else v for k, v in diebold_mariano(diffs, self.horizon - 1).items()}

    def summary(self, levels: tuple[float, ...] = LEVELS) -> dict[str, Any]:
        up = self._stack("up")
        n_origins = int(len(up))
        rate = float(up.mean()) if n_origins else float("nan")
        out: dict[str, Any] = {"n_origins": n_origins, "units": "fraction of the origin's last close"}
        for name in ("published", "model", "model_calibrated"):
            out[name] = self._one(name)
        out["baselines"] = {b: self._one(b) for b in BASELINES}
        freq = self._stack("p_freq")
        out["climatology"] = {  # P(up) = the frequency of up-moves: known so far at each origin, and in hindsight
            "up_rate": _r(rate, 4),
            "brier_up": _r(np.mean((freq - up) ** 2)) if n_origins else None,
            "brier_up_in_sample": _r(np.mean((rate - up) ** 2)) if n_origins else None,
        }
        pit = self._stack("published.pit")
        out["published"]["pit_histogram"] = np.histogram(pit, bins=10, range=(0, 1))[0].tolist()
        out["model"]["pit_histogram"] = np.histogram(self._stack("model.pit"), bins=10, range=(0, 1))[0].tolist()
        out["reliability_up"] = self._reliability()
        out["guard"] = {"model_weight_mean": _r(self._stack("weights").mean(), 4)}
        best = min(x for x in (out["model_calibrated"].get("crps"), out["baselines"]["rw_vol"].get("crps")) if x is not None)
        out["guard"]["crps_vs_better_of_model_and_rw_vol"] = _r(out["published"]["crps"] / best, 4) if best else None
        out["skill"] = {}
        out["dm_pvalue"] = {}
        out["dm"] = {}
        for name in ("published", "model"):
            for base in BASELINES:
                key = f"{name}_vs_{base}"
                c, b = out[name]["crps"] if name in out else None, out["baselines"][base]["crps"]
                out["skill"][key] = _r(1 - c / b, 4) if c is not None and b else None
                out["dm"][key] = self._dm(name, base)
                out["dm_pvalue"][key] = out["dm"][key]["pvalue"]
        out["per_step"] = {name: self._per_step(name) for name in NAMES}
        out["per_symbol"] = {
            s: {k: self._one("published", [s]).get(k) for k in ("crps", "coverage_p10_p90", "brier_up")}
            | {"origins": self.count(s), "rw_vol_crps": self._one("rw_vol", [s]).get("crps")}
            for s in self.rows
            if self.count(s)
        }
        return out

    def _reliability(self, bins: int = 10) -> list[dict[str, Any]]:
        p = self._stack("published.p_up").ravel()
        o = self._stack("up").ravel()
        edges = np.linspace(0, 1, bins + 1)
        idx = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
        rows = []
        for b in range(bins):
            m = idx == b
            rows.append({
                "bin": f"{edges[b]:.1f}-{edges[b + 1]:.1f}", "n": int(m.sum()),
                "mean_p": _r(p[m].mean(), 4) if m.any() else None, "frequency": _r(o[m].mean(), 4) if m.any() else None,
            })  # fmt: skip
        return rows
