"""The Diebold-Mariano test of equal predictive accuracy, with a HAC (Newey-West) variance."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def hac_variance(d: np.ndarray, lags: int) -> float:
    """Newey-West long-run variance of the series ``d`` (Bartlett weights up to ``lags``)."""
    x = np.asarray(d, dtype=np.float64) - float(np.mean(d))
    n = len(x)
    var = float(np.dot(x, x) / n)
    for lag in range(1, min(lags, n - 1) + 1):
        var += 2.0 * (1.0 - lag / (lags + 1.0)) * float(np.dot(x[lag:], x[:-lag]) / n)
    return max(var, 0.0)


def diebold_mariano(differences: Sequence[np.ndarray], lags: int) -> dict[str, float | int | None]:
    """DM test that the mean loss difference is zero.

    ``differences``: one series per symbol, in time order, of per-origin loss differences
    (forecast minus baseline; negative favours the forecast). Symbols are taken as independent: the
    variance of the overall mean sums each symbol's HAC variance. ``lags`` is horizon - 1 for
    overlapping multi-step forecasts. Returns the mean difference, the statistic and the two-sided
    p-value (normal approximation); None where fewer than 3 origins are given or the variance is 0.
    """
    series = [np.asarray(d, dtype=np.float64) for d in differences if len(d)]
    n = sum(len(d) for d in series)
    if n < 3:
        return {"mean_difference": None, "statistic": None, "pvalue": None, "n": n}
    mean = float(sum(d.sum() for d in series) / n)
    var_mean = sum(len(d) ** 2 * hac_variance(d, lags) / len(d) for d in series if len(d) > 1) / n**2
    if var_mean <= 0:
        return {"mean_difference": mean, "statistic": None, "pvalue": None, "n": n}
    stat = mean / math.sqrt(var_mean)
    return {"mean_difference": mean, "statistic": stat, "pvalue": math.erfc(abs(stat) / math.sqrt(2)), "n": n}
