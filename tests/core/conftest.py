"""Fixtures for kronos_core tests: the in-repo reference fixtures and the real bars CSV."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from kronos_core import Kronos, KronosTokenizer

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
TINY = FIXTURES / "kronos-tiny-a"
BARS_CSV = REPO / "daemon" / "assets" / "bars_5min_a_share.csv"


@pytest.fixture(scope="session")
def tiny_tokenizer() -> KronosTokenizer:
    return KronosTokenizer.from_pretrained(TINY / "tokenizer")


@pytest.fixture(scope="session")
def tiny_model() -> Kronos:
    return Kronos.from_pretrained(TINY / "predictor")


@pytest.fixture(scope="session")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(TINY / "golden.safetensors"))


@pytest.fixture(scope="session")
def forecasts() -> dict[str, Any]:
    return json.loads((TINY / "forecasts.json").read_text())


@pytest.fixture(scope="session")
def official_shapes() -> dict[str, Any]:
    return json.loads((FIXTURES / "official-shapes.json").read_text())


@pytest.fixture(scope="session")
def bars() -> pd.DataFrame:
    return pd.read_csv(BARS_CSV, parse_dates=["timestamps"])


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """The tiny models run faster on one thread than on a busy shared pool."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
