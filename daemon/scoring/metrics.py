"""Online scores in Prometheus: the sums per model version and horizon step (no symbol label)."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from daemon.scoring.store import merge_into
from kronos_core.scoring import ScoreAccumulator, level_key

_STEP_SUMS = (
    ("n", "kronos_score_steps", "Scored (forecast, horizon step) pairs."),
    ("abs_err", "kronos_score_close_abs_error", "Sum of |forecast mean - realised close| (price units)."),
    (
        "persist_err",
        "kronos_score_persistence_abs_error",
        "Sum of |last close - realised close| (price units).",
    ),
    ("crps", "kronos_score_crps", "Sum of the close CRPS of the sample paths."),
    ("inside", "kronos_score_band_hits", "Realised closes inside the outermost published band (p10-p90)."),
)


class ScoreMetrics:
    """Score sums per model version and horizon step (rates of sums give rolling means in PromQL), and
    the since-start aggregates as gauges."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        vs = ["model_version", "step"]
        self.forecasts = Counter(
            "kronos_scored_forecasts",
            "Forecasts scored against their realised horizon.",
            ["model_version"],
            registry=r,
        )
        self.expired = Counter(
            "kronos_scoring_expired_forecasts",
            "Forecasts dropped unscored: their bar left the ring before the horizon was complete.",
            registry=r,
        )
        self.errors = Counter("kronos_scoring_errors", "Rounds whose scoring failed (logged).", registry=r)
        self.step_sums = {  # accumulator field -> its counter by (model_version, step)
            field: Counter(name, text, vs, registry=r) for field, name, text in _STEP_SUMS
        }
        self.pinball = Counter(
            "kronos_score_pinball_loss", "Sum of the close pinball loss, by quantile level.",
            ["model_version", "level"], registry=r,
        )  # fmt: skip
        gv = ["model_version"]
        self.mae = Gauge("kronos_score_close_mae", "Close MAE since start, all steps.", gv, registry=r)
        self.persistence_mae = Gauge(
            "kronos_score_persistence_close_mae",
            "Persistence close MAE since start, all steps.",
            gv,
            registry=r,
        )
        self.skill = Gauge(
            "kronos_score_skill", "1 - model / persistence since start (MAE; CRPS for metric=crps).",
            ["model_version", "metric"], registry=r,
        )  # fmt: skip
        self.coverage = Gauge(
            "kronos_score_band_coverage",
            "Share of realised closes inside the outermost band since start (bands=published or model).",
            ["model_version", "bands"],
            registry=r,
        )
        self.brier_up = Counter(
            "kronos_score_brier_up", "Sum of (published P(up) - outcome)^2 by horizon step; / kronos_score_up_forecasts "
            "gives the Brier score.", vs, registry=r,
        )  # fmt: skip
        self.up_forecasts = Counter(
            "kronos_score_up_forecasts", "Published P(up) forecasts scored, by model version and P(up) bin (reliability).",
            ["model_version", "bin"], registry=r,
        )  # fmt: skip
        self.up_outcomes = Counter(
            "kronos_score_up_outcomes", "Of those, the ones whose close went up (observed frequency per bin).",
            ["model_version", "bin"], registry=r,
        )  # fmt: skip
        self._totals: dict[str, ScoreAccumulator] = {}

    def add_up(self, version: str, p_up: np.ndarray, up: np.ndarray) -> None:
        """Published P(up) [H] against what happened [H]: the Brier sums and the reliability bins."""
        for k, (p, o) in enumerate(zip(p_up, up, strict=True)):
            self.brier_up.labels(version, str(k + 1)).inc(float((p - o) ** 2))
            b = f"{min(int(p * 10), 9) / 10:.1f}"
            self.up_forecasts.labels(version, b).inc()
            if o:
                self.up_outcomes.labels(version, b).inc()

    def add(self, version: str, acc: ScoreAccumulator, bands: str = "published") -> None:
        key = f"{version}|{bands}"
        merge_into(self._totals, key, acc)
        total = self._totals[key].report()
        if total.coverage is not None:
            self.coverage.labels(version, bands).set(total.coverage)
        if bands != "published":
            return
        self.forecasts.labels(version).inc(acc.forecasts)
        for k in range(acc.horizon):
            if not acc.n[k]:
                continue
            for field, counter in self.step_sums.items():
                counter.labels(version, str(k + 1)).inc(float(getattr(acc, field)[k]))
        for i, q in enumerate(acc.levels):
            self.pinball.labels(version, level_key(q)).inc(float(acc.pinball[i].sum()))
        if total.mae is not None:
            self.mae.labels(version).set(total.mae)
        if total.persistence_mae is not None:
            self.persistence_mae.labels(version).set(total.persistence_mae)
        if total.skill_mae is not None:
            self.skill.labels(version, "mae").set(total.skill_mae)
        if total.skill_crps is not None:
            self.skill.labels(version, "crps").set(total.skill_crps)
