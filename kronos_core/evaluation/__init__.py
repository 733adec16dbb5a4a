"""Forecast evaluation and the published distribution: baselines, scores, the guarded online
calibration and combination, and the walk-forward backtest on a user's own bars.

Library use::

    from kronos_core.evaluation import BacktestConfig, load_bars_csv, run_backtest
    bars = load_bars_csv("my_bars.csv", tz="America/New_York")
    result = run_backtest(forecaster, {"AAPL": bars}, BacktestConfig(horizon=12, origins=300))
    print(result.summary["published"]["crps"], result.summary["baselines"]["rw_vol"]["crps"])
"""

from kronos_core.evaluation.baselines import ewma_vol_quantiles, persistence_quantiles, rw_vol_quantiles
from kronos_core.evaluation.data import Bars, load_bars_csv
from kronos_core.evaluation.distribution import GRID, prob_up, quantiles_at
from kronos_core.evaluation.publisher import Published, Publisher, PublisherConfig
from kronos_core.evaluation.stats import diebold_mariano
from kronos_core.evaluation.walk import BacktestConfig, BacktestResult, predict_distribution, run_backtest

__all__ = [
    "GRID",
    "BacktestConfig",
    "BacktestResult",
    "Bars",
    "Published",
    "Publisher",
    "PublisherConfig",
    "diebold_mariano",
    "ewma_vol_quantiles",
    "load_bars_csv",
    "persistence_quantiles",
    "predict_distribution",
    "prob_up",
    "quantiles_at",
    "run_backtest",
    "rw_vol_quantiles",
]
