"""The inference benchmark runs end to end and reports what it measured (no timing assertions)."""

from __future__ import annotations

import json

from kronos_core.bench import main


def test_bench_inference_writes_both_paths(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    code = main(["--preset", "Kronos-tiny", "--context", "40", "--horizon", "6", "--batch", "2",
                 "--max-context", "64", "--repeats", "1", "--threads", "1", "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["fast_forecasts_per_s"] > 0 and result["baseline_forecasts_per_s"] > 0
    # the KV cache feeds one token per generated step: context + horizon - 1 token-forwards
    assert result["fast_token_forwards_per_forecast"] == 40 + 6 - 1
    assert result["baseline_token_forwards_per_forecast"] == sum(40 + i for i in range(6))
    assert "speedup" in capsys.readouterr().out
