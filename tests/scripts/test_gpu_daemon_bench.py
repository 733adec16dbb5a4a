"""The prepared GPU script (scripts/gpu_daemon_bench.py) is not broken: its CPU smoke mode runs the
engine step and the daemon bursts end to end; the daemon settings it gives a GPU run are valid; the
daemon's engine is built with the graph buckets and warmed up, and exports its capture counts."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.model.build import build_engine_forecaster, graph_captures
from daemon.ops.metrics import Metrics
from daemon.settings import load_settings
from scripts import gpu_daemon_bench

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_daemon_bench.py"
TINY = REPO / "tests" / "fixtures" / "kronos-tiny-a"


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(tmp_path)], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=600)


def test_cpu_smoke_engine_step(tmp_path: Path) -> None:
    proc = _run(["--cpu-smoke", "--skip", "bursts"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    engine = summary["engine"]
    assert engine["buckets"] == [1, 4] and engine["captures_after_warm_up"] == 0
    assert all(r["decode_loops"] == ["fixed+bucketed"] for r in engine["batches"].values())
    assert "| 3 |" in (tmp_path / "summary.md").read_text()


@pytest.mark.slow
def test_cpu_smoke_bursts_through_the_daemon(tmp_path: Path, kafka_bootstrap: str, redis_url: str) -> None:
    proc = _run(["--cpu-smoke", "--skip", "engine"], tmp_path, KAFKA_BOOTSTRAP=kafka_bootstrap, REDIS_URL=redis_url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    for name in ("exact_4", "incremental_4"):
        bursts = [b for r in summary["bursts"][name]["report"]["modes"].values() for b in r["bursts"]]
        assert bursts and all(b["complete"] for b in bursts)


def test_gpu_daemon_settings_are_valid(monkeypatch) -> None:
    """What the GPU run sets on top of bench_load's environment loads as daemon settings."""
    args = argparse.Namespace(cpu_smoke=False, buckets="1,8,64", residual_fp32=True)
    for key in [k for k in os.environ if k.startswith("KRONOS_")]:
        monkeypatch.delenv(key)
    for key, value in gpu_daemon_bench.daemon_overrides(args).items():
        if value:
            monkeypatch.setenv(key, value)
    m = load_settings().model
    assert (m.device, m.dtype, m.preset, m.graph_buckets, m.residual_fp32) == (
        "cuda", "bfloat16", "Kronos-small", (1, 8, 64), True
    )


def test_daemon_builds_the_engine_with_buckets_and_exports_captures(monkeypatch) -> None:
    for key in [k for k in os.environ if k.startswith("KRONOS_")]:
        monkeypatch.delenv(key)
    settings = load_settings(model={
        "tokenizer_dir": TINY / "tokenizer", "predictor_dir": TINY / "predictor", "device": "cpu",
        "max_context": 64, "horizon": 4, "graph_buckets": (2, 4), "dtype": "bfloat16", "residual_fp32": True,
    })
    forecaster = build_engine_forecaster(settings)
    engine = forecaster.engine  # type: ignore[attr-defined]
    assert engine.residual_fp32 and engine.graph_buckets is None  # CPU: the auto loop never pads
    assert graph_captures(forecaster) == (0, 0)
    metrics = Metrics()
    metrics.watch_graph_captures(lambda: (10, 8))
    text = metrics.render()[0].decode()
    assert 'kronos_graph_captures_total{phase="warm_up"} 8.0' in text
    assert 'kronos_graph_captures_total{phase="serving"} 2.0' in text


@pytest.mark.parametrize(
    ("value", "message"),
    [("8,1", "increasing without repeats"), ("0,8", "positive whole numbers"), ("", "at least one batch size")],
)
def test_bad_graph_buckets_stop_the_daemon_with_the_variable_named(monkeypatch, value, message) -> None:
    from daemon.errors import ConfigError

    monkeypatch.setenv("KRONOS_MODEL__GRAPH_BUCKETS", value)
    with pytest.raises(ConfigError, match=rf"KRONOS_MODEL__GRAPH_BUCKETS: .*{message}"):
        load_settings()
    monkeypatch.setenv("KRONOS_MODEL__GRAPH_BUCKETS", "1,8,64")
    assert load_settings().model.graph_buckets == (1, 8, 64)
