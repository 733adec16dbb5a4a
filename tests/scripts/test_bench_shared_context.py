"""scripts/bench_shared_context.py runs end to end on a few windows: the challenger that takes the
champion's context ids gives the forecasts it gives encoding them itself, and the report says so."""

from __future__ import annotations

import json
from pathlib import Path

from scripts import bench_shared_context


def test_a_small_run_reports_the_same_forecasts_and_both_timings(tmp_path: Path) -> None:
    out = tmp_path / "shared.json"
    assert bench_shared_context.main(["--batch", "3", "--rounds", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["same_forecasts"] is True
    assert report["context_tokens_taken_per_call"] == 3 * 52  # lookback 64 - 12 of each window
    assert set(report["ms_per_window"]) == {"encodes", "takes_ids"}
    assert report["ratio_takes_ids_to_encodes"] > 0
