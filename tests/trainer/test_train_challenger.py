"""The retrain job's candidate as a challenger, and a gate held-out set that covers every symbol and its days."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kronos_contract import challengers as listing
from kronos_contract.registry import Registry
from tests.trainer.train_helpers import HORIZON, LOOKBACK, save_tiny
from trainer.data import SymbolSeries, WindowSet
from trainer.run import publish
from trainer.settings import load_train_settings


def _series(symbol: str, n: int, start: str) -> SymbolSeries:
    times = np.datetime64(start, "ns") + np.arange(n) * np.timedelta64(5, "m")
    return SymbolSeries(symbol, np.ones((n, 6), np.float32), np.zeros((n, 5), np.float32), times)


def test_the_held_out_subset_takes_every_symbol_evenly_over_its_span() -> None:
    series = [_series("AAA", 2000, "2024-01-01"), _series("BBB", 600, "2024-01-01"), _series("CCC", 3000, "2024-01-01")]
    starts = [(k, i) for k, s in enumerate(series) for i in range(0, len(s) - 20, 4)]
    val = WindowSet(series, starts, lookback=16, horizon=4)
    picked = val.subset(90)
    per_symbol = np.bincount(picked.starts[:, 0], minlength=3)
    assert len(picked) == 90 and list(per_symbol) == [30, 30, 30]  # not 90 windows of the longest
    cover = picked.coverage()
    assert cover["symbols"] == 3 and cover["days"] > 9  # CCC's windows reach its last days
    few = WindowSet(series, [(1, 0), (1, 4), (0, 0), (0, 4), (0, 8), (2, 0), (2, 4), (2, 8), (2, 12)], 16, 4)
    shares = list(np.bincount(few.subset(7).starts[:, 0], minlength=3))
    assert sum(shares) == 7 and shares[1] == 2 and sorted(shares) == [2, 2, 3]  # what BBB lacks goes to others


def test_a_candidate_that_passed_the_gate_is_published_as_a_challenger(tmp_path: Path) -> None:
    registry = Registry(str(tmp_path / "registry"))
    tok, pred = save_tiny(tmp_path / "champion")
    registry.publish("v0-champion", tok, pred, {}, promote=True)
    save_tiny(tmp_path / "work" / "candidate")
    settings = load_train_settings(
        registry=str(tmp_path / "registry"), work_dir=str(tmp_path / "work"), lookback=LOOKBACK, horizon=HORIZON,
        challenger=True,
    )  # fmt: skip
    manifest = publish(settings, tmp_path / "work" / "candidate", {"gate": {"passed": True}}, passed=True)
    version = manifest["version"]
    assert registry.champion() == "v0-champion"  # the live comparison decides, not the job
    assert listing.challengers(registry) == [version]
    assert listing.read(registry)["challengers"][0]["by"] == "trainer"
