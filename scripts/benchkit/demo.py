"""The bundled demo model and bars (``daemon/assets``), and windows of the bars prepared for the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from kronos_core import Kronos, KronosTokenizer
from kronos_core.preprocess import prepare_series

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "daemon" / "assets"


def demo_windows(context: int = 116, horizon: int = 12, step: int = 7) -> tuple[Kronos, KronosTokenizer, list[Any]]:
    """The bundled demo model and windows of the bundled real bars (every ``step``-th bar), prepared
    as the predictor prepares them (normalised, clipped, time features)."""
    model = Kronos.from_pretrained(ASSETS / "demo-model" / "predictor")
    tokenizer = KronosTokenizer.from_pretrained(ASSETS / "demo-model" / "tokenizer")
    bars = pd.read_csv(ASSETS / "bars_5min_a_share.csv", parse_dates=["timestamps"])
    features = bars[["open", "high", "low", "close", "volume", "amount"]]
    series = [
        prepare_series(
            features.iloc[o - context : o], bars.timestamps.iloc[o - context : o],
            bars.timestamps.iloc[o : o + horizon], horizon,
        )
        for o in range(context, len(bars) - horizon, step)
    ]
    return model, tokenizer, series
