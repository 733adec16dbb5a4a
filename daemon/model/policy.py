"""The live decisions as pure functions: promote a challenger, keep the champion, roll the champion back.

Inputs are per-forecast losses (:mod:`daemon.scoring.paired`): the CRPS of each version's own
forecast distribution and of the rolling-volatility walk, per (symbol, origin), scored on the same
realised bars (why the model's own and not the published one: see :mod:`daemon.scoring.paired`; the
published CRPS is reported beside).

Promotion (:func:`weigh`): on the pairs of champion and challenger, the Diebold-Mariano test of equal
CRPS (:func:`kronos_core.evaluation.stats.diebold_mariano`, HAC variance with horizon - 1 lags, symbols
independent), one-sided:

- ``promote``: at least ``min_forecasts`` pairs, the challenger's mean CRPS lower with one-sided p below
  ``level``, and the challenger's CRPS also below the walk's on the same forecasts;
- ``keep``: at least ``min_forecasts`` pairs and the champion better with one-sided p below ``level``
  (the challenger is significantly worse);
- ``undecided``: anything else (too few pairs, or a difference that could be chance).

Rollback (:func:`rollback_due`): the champion's skill against the walk, ``1 - mean CRPS / mean walk
CRPS`` over its last ``window`` realised forecasts, below ``threshold``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from daemon.scoring.paired import Key, LossRow, paired
from kronos_core.evaluation.stats import diebold_mariano


@dataclass(frozen=True)
class Evidence:
    """A challenger against the champion on their paired forecasts."""

    champion: str
    challenger: str
    n: int
    crps_champion: float | None
    crps_challenger: float | None
    crps_walk: float | None
    dm_statistic: float | None  # negative favours the challenger
    pvalue: float | None  # one-sided: the challenger's CRPS is lower
    skill_vs_walk: float | None  # the challenger's, 1 - CRPS / walk CRPS on these forecasts
    champion_skill_vs_walk: float | None
    published_champion: float | None = None  # mean CRPS of the published (calibrated) distributions
    published_challenger: float | None = None

    def figures(self) -> dict[str, Any]:
        """What a decision records (rounded for people)."""
        d = asdict(self)
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in d.items()}


def one_sided_p(statistic: float | None) -> float | None:
    """P(Z <= statistic): small when the first loss is significantly lower."""
    if statistic is None:
        return None
    return 0.5 * math.erfc(-statistic / math.sqrt(2.0))


def _skill(model: float | None, walk: float | None) -> float | None:
    if model is None or walk is None or walk <= 0:
        return None
    return 1.0 - model / walk


def compare(
    champion: str,
    challenger: str,
    champion_rows: dict[Key, LossRow],
    challenger_rows: dict[Key, LossRow],
    horizon: int,
) -> Evidence:
    """The evidence of ``challenger`` against ``champion`` on the forecasts both made."""
    pairs = paired(challenger_rows, champion_rows)
    diffs = [np.array([a.crps - b.crps for a, b in rows]) for rows in pairs.values()]
    flat = [(a, b) for rows in pairs.values() for a, b in rows]
    n = len(flat)
    if not n:
        return Evidence(champion, challenger, 0, None, None, None, None, None, None, None)
    c_ch = float(np.mean([a.crps for a, _ in flat]))
    c_cp = float(np.mean([b.crps for _, b in flat]))
    walk = float(np.mean([b.walk for _, b in flat]))
    dm = diebold_mariano(diffs, max(horizon - 1, 0))
    stat = dm["statistic"]
    statistic = None if stat is None else float(stat)
    return Evidence(
        champion, challenger, n, c_cp, c_ch, walk, statistic, one_sided_p(statistic),
        _skill(c_ch, walk), _skill(c_cp, walk),
        float(np.mean([b.published for _, b in flat])), float(np.mean([a.published for a, _ in flat])),
    )  # fmt: skip


def weigh(evidence: Evidence, min_forecasts: int, level: float) -> str:
    """``promote``, ``keep`` or ``undecided`` (see the module docstring)."""
    e = evidence
    if e.n < min_forecasts or e.pvalue is None or e.dm_statistic is None:
        return "undecided"
    if e.pvalue < level and e.skill_vs_walk is not None and e.skill_vs_walk > 0:
        return "promote"
    if 1.0 - e.pvalue < level:
        return "keep"
    return "undecided"


@dataclass(frozen=True)
class RollbackCheck:
    due: bool
    n: int
    skill_vs_walk: float | None
    crps: float | None
    crps_walk: float | None

    def figures(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def rollback_due(rows: dict[Key, LossRow], window: int, threshold: float) -> RollbackCheck:
    """Whether the champion's skill vs the walk over its last ``window`` forecasts (by origin) is below
    ``threshold``; never due with fewer than ``window`` forecasts."""
    recent = sorted(rows.values(), key=lambda r: (r.origin, r.symbol))
    recent = recent[-window:]
    if not recent:
        return RollbackCheck(False, 0, None, None, None)
    model = float(np.mean([r.crps for r in recent]))
    walk = float(np.mean([r.walk for r in recent]))
    skill = _skill(model, walk)
    due = len(recent) >= window and skill is not None and skill < threshold
    return RollbackCheck(due, len(recent), skill, model, walk)
