"""``kronos-stream backtest``: the demo model on a user's CSV, on the Parquet archive and from a registry
version, with its three output files; bad input gets a message that says what to do."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from daemon.cli.main import main as cli
from daemon.demo.config import MODEL_DIR
from daemon.demo.retrain import publish_demo_model
from kronos_contract.archive import write_bars

pytestmark = pytest.mark.timeout(300)

FAST = ["--origins", "12", "--warmup", "6", "--samples", "4", "--horizon", "4", "--threads", "1", "--quiet"]


def _csv(path: Path, n: int = 200, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    close = 20 * np.exp(np.cumsum(rng.normal(0, 0.004, n)))
    ts = pd.date_range("2024-03-01 01:30", periods=n, freq="5min")
    pd.DataFrame({"Date": ts, "Open": close, "HIGH": close * 1.002, "low": close * 0.998, "Close": close,
                  "Volume": 1000.0}).to_csv(path, index=False)  # fmt: skip
    return path


def test_backtest_of_a_csv_writes_json_markdown_and_a_chart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bt"
    assert cli(["backtest", str(_csv(tmp_path / "bars.csv")), "--symbol", "XYZ", "--out", str(out), *FAST]) == 0
    summary = json.loads((out / "backtest.json").read_text())
    assert summary["n_origins"] == 12 and summary["run"]["model_version"].startswith("demo-")
    for name in ("published", "model"):
        assert {"crps", "mae", "coverage_p10_p90", "brier_up"} <= set(summary[name])
    for base in ("persistence", "rw_vol"):
        assert {"crps", "mae", "coverage_p10_p90"} <= set(summary["baselines"][base])
        assert f"published_vs_{base}" in summary["dm_pvalue"]
    assert len(summary["per_step"]["published"]["crps"]) == 4
    assert "# Backtest" in (out / "backtest.md").read_text()
    assert (out / "backtest.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "published (calibrated, guarded)" in printed and "random walk, rolling vol" in printed


def test_backtest_of_the_archive_and_of_a_registry_version(tmp_path: Path) -> None:
    frame = pd.read_csv(_csv(tmp_path / "bars.csv", seed=1))
    archive = pd.DataFrame({
        "symbol": "ARC", "ts": pd.to_datetime(frame["Date"], utc=True), "open": frame["Open"], "high": frame["HIGH"],
        "low": frame["low"], "close": frame["Close"], "volume": frame["Volume"], "amount": frame["Volume"] * frame["Close"],
    })  # fmt: skip
    root = tmp_path / "archive"
    write_bars(str(root), archive, name="bars-0-0-199")
    registry = tmp_path / "registry"
    version = publish_demo_model(str(registry), MODEL_DIR)
    out = tmp_path / "bt"
    args = ["backtest", "--archive", str(root), "--symbols", "ARC", "--registry", str(registry), "--out", str(out)]
    assert cli([*args, *FAST]) == 0
    summary = json.loads((out / "backtest.json").read_text())
    assert summary["run"]["model_version"] == version and list(summary["run"]["symbols"]) == ["ARC"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["backtest"], "name the bars"),
        (["backtest", "missing.csv"], "cannot read"),
        (["backtest", "{csv}", "--model", "{tmp}"], "name the tokenizer with --tokenizer"),
        (["backtest", "{csv}", "--horizon", "400"], "exceeds the model's max_context"),
        (["backtest", "{csv}", "--registry", "{tmp}/none", "--model", "x"], "--registry names the model"),
    ],
)
def test_bad_input_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    csv = _csv(tmp_path / "bars.csv")
    argv = [a.replace("{csv}", str(csv)).replace("{tmp}", str(tmp_path)) for a in argv]
    assert cli([*argv, "--quiet"]) == 2
    assert message in capsys.readouterr().err
