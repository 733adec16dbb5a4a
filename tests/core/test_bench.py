"""The inference benchmark runs end to end and reports what it measured (no timing assertions)."""

from __future__ import annotations

import json

from kronos_core.bench import main
from kronos_core.bench_efficiency import block_matmul_shapes
from kronos_core.flops import exact_forecast_flops
from kronos_core.presets import preset_config


def test_bench_inference_writes_both_paths(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    code = main(["--preset", "Kronos-tiny", "--context", "40", "--horizon", "6", "--batch", "2",
                 "--max-context", "64", "--repeats", "1", "--threads", "1", "--efficiency-batches", "",
                 "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["fast_forecasts_per_s"] > 0 and result["baseline_forecasts_per_s"] > 0
    # the KV cache feeds one token per generated step: context + horizon - 1 token-forwards
    assert result["fast_token_forwards_per_forecast"] == 40 + 6 - 1
    assert result["baseline_token_forwards_per_forecast"] == sum(40 + i for i in range(6))
    assert "efficiency" not in result
    assert "speedup" in capsys.readouterr().out


def test_bench_reports_peak_and_achieved_rate(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    code = main(["--preset", "Kronos-tiny", "--context", "40", "--horizon", "6", "--batch", "2",
                 "--max-context", "64", "--repeats", "1", "--threads", "1", "--no-baseline",
                 "--efficiency-batches", "1,3", "--efficiency-repeats", "2", "--out", str(out)])
    assert code == 0
    eff = json.loads(out.read_text())["efficiency"]
    assert eff["loadavg_before"] and eff["loadavg_after"]
    tiny = exact_forecast_flops(preset_config("Kronos-tiny"), preset_config("Kronos-Tokenizer-tiny"), 40, 6)  # type: ignore[arg-type]
    assert eff["exact_flops_per_forecast"]["total"] == tiny.total
    assert [e["batch"] for e in eff["by_batch"]] == [1, 3]
    for e in eff["by_batch"]:
        assert len(e["peak_fp32_rounds"]) == 2 and e["peak_fp32_gflops"] > 0
        ex, inc = e["exact"], e["incremental"]
        assert ex["gflop_per_forecast"] * 1e9 == tiny.total
        assert abs(ex["ratio_to_peak"] - ex["achieved_gflops"] / e["peak_fp32_gflops"]) < 1e-12
        assert e["peak_fp32_best_gflops"] == max(e["peak_fp32_rounds"])
        assert abs(ex["ratio_best_to_best_peak"] - ex["achieved_best_gflops"] / e["peak_fp32_best_gflops"]) < 1e-12
        # incremental calls appended one bar to warm sessions: nothing refreshed or rebuilt
        assert inc["last_call_served"] == {"warm": e["batch"], "refreshed": 0, "rebuilt": 0}
        assert 0 < inc["gflop_per_forecast"] < ex["gflop_per_forecast"]
        # the roofline: the read rate measured in the same rounds, a floor no faster than the peak allows
        assert len(e["memory_read_rounds"]) == 2 and e["memory_read_gbps"] > 0
        for mode in (ex, inc):
            roof = mode["roofline"]
            assert roof["seconds"] >= roof["compute_s"] > 0 and roof["steps"] >= 6
            assert roof["attainable_gflops"] <= e["peak_fp32_gflops"] * (1 + 1e-9)
            assert abs(roof["achieved_over_attainable"] - mode["achieved_gflops"] / roof["attainable_gflops"]) < 1e-9
        assert ex["roofline"]["flops"] == e["batch"] * tiny.total
    printed = capsys.readouterr().out
    assert "matrix-multiply peak" in printed and "loadavg" in printed and "roofline" in printed


def test_block_shapes_follow_the_config() -> None:
    cfg = preset_config("Kronos-small")
    assert block_matmul_shapes(cfg, 3200) == [(3200, 1536, 512), (3200, 512, 512), (3200, 2048, 512), (3200, 512, 1024)]  # type: ignore[arg-type]
