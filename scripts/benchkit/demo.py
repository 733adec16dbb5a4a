"""The bundled demo model and bars (``daemon/assets``), and windows of the bars prepared for the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from kronos_core import Kronos, KronosTokenizer
from kronos_core.preprocess import prepare_series

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "daemon" / "assets"
DEMO_MODEL = ASSETS / "demo-model"  # tokenizer/ and predictor/
BARS_CSV = ASSETS / "bars_5min_a_share.csv"
COLUMNS = ["open", "high", "low", "close", "volume", "amount"]


def demo_windows(context: int = 116, horizon: int = 12, step: int = 7) -> tuple[Kronos, KronosTokenizer, list[Any]]:
    """The bundled demo model and windows of the bundled real bars (every ``step``-th bar), prepared
    as the predictor prepares them (normalised, clipped, time features)."""
    model = Kronos.from_pretrained(DEMO_MODEL / "predictor")
    tokenizer = KronosTokenizer.from_pretrained(DEMO_MODEL / "tokenizer")
    bars = pd.read_csv(BARS_CSV, parse_dates=["timestamps"])
    features = bars[COLUMNS]
    series = [
        prepare_series(
            features.iloc[o - context : o], bars.timestamps.iloc[o - context : o],
            bars.timestamps.iloc[o : o + horizon], horizon,
        )
        for o in range(context, len(bars) - horizon, step)
    ]
    return model, tokenizer, series
