"""The GPU figures issue #4 asks for, in one process and one prepared run (device tool or any CUDA box).

Kronos-small (random weights) at context 400 / horizon 30, batch 1, 64 and 1024, fp32 and bf16,
with the CUDA-graph decode loop and, for comparison, the plain (dynamic) loop; the recompute
baseline where it is affordable; the greedy token agreement of bf16 with fp32. Configurations run
in priority order, each guarded (a failure is recorded and the next one runs) and inside a time
budget; results are rewritten to ``$OUT/gpu_bench.json`` (or ``results/``) after each one, and a
table is printed last.

    PYTHONPATH=. python3 scripts/gpu_bench.py [--budget-s 300] [--skip-tests]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from kronos_core import bench
from scripts.benchkit.demo import demo_windows

COMMON = ["--device", "cuda", "--preset", "Kronos-small", "--context", "400", "--horizon", "30"]


def _configs() -> list[tuple[str, list[str]]]:
    """(name, bench arguments), most wanted first; ``demo_agreement`` is the trained-model check."""
    b1024 = ["--batch", "1024", "--repeats", "3", "--no-baseline"]
    runs: list[tuple[str, list[str]]] = [
        ("bfloat16_b1024_graphed", ["--dtype", "bfloat16", *b1024]),
        ("float32_b1024_graphed", ["--dtype", "float32", *b1024]),
        # 16 sample paths: graphed with the context cache shared by the paths, against the
        # dynamic loop over per-path copies of it
        ("bfloat16_b64_s16_graphed", ["--dtype", "bfloat16", "--batch", "64", "--sample-count", "16", "--repeats", "3",
                                      "--no-baseline"]),
        ("bfloat16_b64_s16_dynamic", ["--dtype", "bfloat16", "--batch", "64", "--sample-count", "16", "--repeats", "3",
                                      "--no-baseline", "--decode-loop", "dynamic"]),
    ]
    for dtype in ("bfloat16", "float32"):
        runs.append((f"{dtype}_b64_graphed", ["--dtype", dtype, "--batch", "64", "--repeats", "5", "--baseline-repeats", "1"]))
        runs.append((f"{dtype}_b1_graphed", ["--dtype", dtype, "--batch", "1", "--repeats", "5", "--baseline-repeats", "2"]))
    runs += [
        ("demo_agreement", []),
        ("bf16_agreement_b256", ["--batch", "256", "--repeats", "1", "--no-baseline", "--compare-dtype", "bfloat16"]),
        ("bfloat16_b1024_graphed_compiled", ["--dtype", "bfloat16", "--compile", *b1024]),
        ("float32_b1024_graphed_compiled", ["--dtype", "float32", "--compile", *b1024]),
        ("bfloat16_b64_graphed_compiled", ["--dtype", "bfloat16", "--compile", "--batch", "64", "--repeats", "5", "--no-baseline"]),
        ("bfloat16_b1_graphed_compiled", ["--dtype", "bfloat16", "--compile", "--batch", "1", "--repeats", "5", "--no-baseline"]),
    ]
    for batch in ("1", "64", "1024"):
        runs.append((f"bfloat16_b{batch}_dynamic", ["--dtype", "bfloat16", "--batch", batch, "--repeats", "3",
                                                     "--no-baseline", "--decode-loop", "dynamic"]))
    runs += [
        ("bfloat16_b64_s16_graphed_compiled", ["--dtype", "bfloat16", "--compile", "--batch", "64", "--sample-count", "16",
                                               "--repeats", "3", "--no-baseline"]),
        ("bfloat16_b2048_graphed_compiled", ["--dtype", "bfloat16", "--compile", "--batch", "2048", "--graph-buckets", "2048", "--repeats", "3",
                                             "--no-baseline"]),
        ("float32_tf32_b1024_graphed_compiled", ["--dtype", "float32", "--tf32", "--compile", *b1024]),
    ]
    return runs


def _nvidia_smi() -> str:
    query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.sm", "--format=csv,noheader"]
    try:
        return subprocess.run(query, capture_output=True, text=True, check=False, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi unavailable: {exc}"


def _dry(extra: list[str]) -> list[str]:
    """The same configuration at CPU-sized scale (tiny preset, small batches) for ``--dry-run``."""
    argv = ["--device", "cpu", "--preset", "Kronos-tiny", "--context", "40", "--horizon", "6", "--max-context", "64"]
    small = [a for a in extra if a != "--compile"]  # compiling on CPU is slow; the test suite covers it
    for i, a in enumerate(small[:-1]):
        if a == "--batch":
            small[i + 1] = str(min(int(small[i + 1]), 4))
    return argv + small


def demo_model_agreement(device: str) -> dict[str, Any]:
    """Greedy bf16 vs fp32 on a trained checkpoint (the bundled demo model) over windows of the real
    bars. Random weights give near-flat logits whose argmax flips at the smallest rounding, so this
    is the figure that says what bf16 does to a real model's forecasts."""
    context, horizon, max_context = 116, 12, 128  # the demo model's trained window
    model, tokenizer, series = demo_windows(context, horizon)
    args = argparse.Namespace(device=device, max_context=max_context, horizon=horizon)
    result = bench.greedy_agreement(
        args, model, tokenizer, torch.bfloat16,
        [s.x for s in series], [s.x_stamp for s in series], [s.y_stamp for s in series],
    )
    return {"windows": len(series), "context": context, "horizon": horizon, **result}


def _run_tests(out: Path) -> dict[str, Any]:
    """kronos_core's test suite on this machine (the CUDA tests run here; the rest run on CPU)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--confcutdir=tests/core", "-m", "not slow",
           "tests/core"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    (out / "gpu_tests.log").write_text(proc.stdout + proc.stderr)
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    print(f"tests/core on this machine: rc={proc.returncode} {tail}", flush=True)
    return {"returncode": proc.returncode, "summary": tail, "seconds": time.perf_counter() - t0}


def _profile(out: Path) -> None:
    """Top CUDA kernels of bf16 batch-1024 calls (compiled blocks, graphed decode) (where the time goes, for the next change)."""
    from torch.profiler import ProfilerActivity, profile

    args = bench.make_parser().parse_args([*COMMON, "--dtype", "bfloat16", "--batch", "1024", "--repeats", "1",
                                          "--compile", "--no-baseline", "--out", str(out / "scratch.json")])
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        bench.run(args)
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30)
    (out / "gpu_profile_bf16_b1024.txt").write_text(table)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--budget-s", type=float, default=300.0, help="start no new configuration after this many seconds")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--only", nargs="*", default=None, help="run only these configuration names")
    p.add_argument("--dry-run", action="store_true", help="check this script on CPU with a tiny model and batches")
    opts = p.parse_args()
    cuda = torch.cuda.is_available() and not opts.dry_run
    # Many shapes and two dtypes go through the same compiled functions in this one process: let
    # dynamo keep them all instead of silently falling back to eager after its default of 8.
    torch._dynamo.config.cache_size_limit = 64
    torch._dynamo.config.accumulated_cache_size_limit = 512
    out = Path(os.environ.get("OUT") or "results")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(0) if cuda else "cpu (dry run)",
        "nvidia_smi": _nvidia_smi(),
        "runs": {},
    }
    print(report["device_name"], report["nvidia_smi"], flush=True)
    if not opts.skip_tests and cuda:
        report["tests"] = _run_tests(out)
    results_path = out / "gpu_bench.json"
    for name, extra in _configs():
        if opts.only is not None and name not in opts.only:
            continue
        elapsed = time.perf_counter() - t_start
        if elapsed > opts.budget_s:
            report["runs"][name] = {"skipped": f"time budget spent ({elapsed:.0f} s)"}
            continue
        argv = [*COMMON, *extra] if cuda else _dry(extra)
        args = bench.make_parser().parse_args([*argv, "--out", str(out / "scratch.json")])
        t0 = time.perf_counter()
        try:
            if name == "demo_agreement":
                report["demo_model_bf16_agreement"] = demo_model_agreement("cuda" if cuda else "cpu")
                print(f"demo model, bf16 vs fp32 (greedy, real bars): {report['demo_model_bf16_agreement']}", flush=True)
                continue
            result = bench.run(args)
            result["wall_s"] = time.perf_counter() - t0
            result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
            bench.print_report(result)
        except Exception as exc:  # recorded, and the next configuration still runs
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
            print(f"{name}: FAILED {result['error']}", flush=True)
        report["runs"][name] = result
        results_path.write_text(json.dumps(report, indent=2, default=str))
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    if cuda and time.perf_counter() - t_start < opts.budget_s and (opts.only is None or "profile" in opts.only):
        try:
            _profile(out)
        except Exception as exc:
            print(f"profile: FAILED {type(exc).__name__}: {exc}", flush=True)
    (out / "scratch.json").unlink(missing_ok=True)
    results_path.write_text(json.dumps(report, indent=2, default=str))

    print(f"\n{'configuration':32s} {'fc/s':>10s} {'baseline':>9s} {'ratio':>7s} {'peak GiB':>8s}  stages ms")
    for name, r in report["runs"].items():
        if "fast_forecasts_per_s" not in r:
            print(f"{name:32s} {r.get('error') or r.get('skipped')}")
            continue
        base = r.get("baseline_forecasts_per_s")
        stages = " ".join(f"{k}={v:.1f}" for k, v in r["fast_stage_ms"].items())  # the last timed call
        print(
            f"{name:32s} {r['fast_forecasts_per_s']:10.1f} {base or float('nan'):9.2f} {r.get('speedup', float('nan')):7.1f} "
            f"{r['peak_memory_gib']:8.1f}  {stages}"
        )
        if "dtype_agreement" in r:
            print(f"{'':32s} bf16 vs fp32: {r['dtype_agreement']}")
    if "demo_model_bf16_agreement" in report:
        print(f"demo model (trained), bf16 vs fp32, greedy on real bars: {report['demo_model_bf16_agreement']}")
    print(f"total {time.perf_counter() - t_start:.0f} s; results in {results_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
