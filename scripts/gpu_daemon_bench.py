"""The ONE prepared script for a session with a GPU (issue #13): the daemon path and the bucketed
CUDA graphs, Kronos-small shapes in bfloat16, with figures written under ``$OUT`` (or results/gpu/).

NOT RUN ON A GPU YET: written and checked on CPU only (``--cpu-smoke``, which the test suite runs);
the first GPU session to run it should read its log first and fix what a GPU reveals.

Steps, each guarded (a failure is recorded and the next step runs), inside ``--budget-s``:

1. **engine**: forecasts/s of ``KronosEngine`` (Kronos-small, random weights, bf16, the graphed
   loop with the batch-size buckets) at batch 1, 64 and 1,024 (context 400, horizon 30, one path,
   the shapes of results/gpu/NOTES.md), after ``warm_up`` captured every bucket; then calls of other
   sizes (3, 100, 1,000) to show that no call captures after warm-up (``graph_captures``); then
   batch 1,024 with ``tokenizer_fp32`` and with ``residual_fp32`` (what the fidelity options cost).
2. **services**: a Kafka broker and a Redis server started with ``scripts/services up`` (reused when
   ``KAFKA_BOOTSTRAP`` and ``REDIS_URL`` already point at running ones). Offline machines need the
   broker's jars in ``.cache/`` (carry it) and ``redis-server`` installed.
3. **bursts through the daemon**: ``scripts/bench_load.py --burst`` (owned by branch ``bench``; its
   CLI is called, not edited) with the daemon on CUDA in bf16 with a random-weight Kronos-small
   (``KRONOS_MODEL__PRESET``), 8 sample paths, horizon 12: 1,000 symbols exact, 1,000 incremental,
   and the stretch, 5,000 incremental (at max_context 256: see GPU_BURSTS). bench_load starts the daemon with ``device=cpu`` and a model
   folder; the daemon's environment is amended here (a wrapper around its ``daemon_env``) to
   device ``cuda``, dtype ``bfloat16``, the preset, the graph buckets and ``residual_fp32``. The
   warm-up of a burst forecasts every warm-up bar, so ``--warm-bars`` is kept short to fit the
   budget: the burst's windows hold that many bars (+1), not a full context (recorded).
4. The daemon's ``kronos_graph_captures_total{phase}`` cannot be read from bench_load's results;
   the engine step reports the capture counts instead.

Output: ``engine.json``, ``burst_<name>.json``/``.md`` (bench_load's own), ``summary.json`` and
``summary.md``, the logs of each step, all under ``--out`` (default ``$OUT`` when set, else
results/gpu/daemon_bench/).

    PYTHONPATH=. python3 scripts/gpu_daemon_bench.py                 # on the GPU machine
    PYTHONPATH=. .venv/bin/python scripts/gpu_daemon_bench.py --cpu-smoke --out /tmp/smoke   # anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"

# The daemon bursts: (name, bench_load arguments). Kronos-small shapes, 8 paths, horizon 12.
GPU_BURSTS = [
    ("exact_1000", ["--modes", "exact", "--burst", "1000", "--warm-bars", "16"]),
    ("incremental_1000", ["--modes", "incremental", "--burst", "1000", "--warm-bars", "16"]),
    # max_context 256 here: the daemon and bench_load's reference model (a second process) each keep
    # every symbol's warm caches, ~13 MB per symbol in bf16 at 512, twice 65 GB for 5,000 symbols.
    ("incremental_5000", ["--modes", "incremental", "--burst", "5000", "--warm-bars", "4", "--max-context", "256"]),
]
GPU_COMMON = ["--max-context", "512", "--horizon", "12", "--sample-count", "8", "--partitions", "8",
              "--burst-repeats", "2", "--ready-timeout", "300", "--warm-timeout", "240", "--drain-timeout", "60"]
SMOKE_BURSTS = [("exact_4", ["--modes", "exact", "--burst", "4", "--warm-bars", "3"]),
                ("incremental_4", ["--modes", "incremental", "--burst", "4", "--warm-bars", "3"])]
SMOKE_COMMON = ["--max-context", "32", "--horizon", "4", "--sample-count", "2", "--partitions", "2",
                "--burst-repeats", "1", "--ready-timeout", "120", "--warm-timeout", "120", "--drain-timeout", "60"]


def daemon_overrides(args: argparse.Namespace) -> dict[str, str]:
    """What the daemon's environment gets on top of bench_load's (and which of its keys go)."""
    if args.cpu_smoke:  # the tiny checkpoint on CPU; the fixed loop pads to the buckets only when asked
        return {"KRONOS_MODEL__GRAPH_BUCKETS": args.buckets}
    return {
        "KRONOS_MODEL__DEVICE": "cuda",
        "KRONOS_MODEL__DTYPE": "bfloat16",
        "KRONOS_MODEL__PRESET": "Kronos-small",
        "KRONOS_MODEL__TOKENIZER_DIR": "",  # removed: the preset names the model
        "KRONOS_MODEL__PREDICTOR_DIR": "",
        "KRONOS_MODEL__GRAPH_BUCKETS": args.buckets,
        "KRONOS_MODEL__RESIDUAL_FP32": "true" if args.residual_fp32 else "false",
        "KRONOS_MODEL__MAX_SESSIONS": "5000",  # incremental: every symbol of the stretch stays warm
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    }


# -- step 1: the engine through the bucketed graphs --------------------------------------------------


def engine_step(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from kronos_core.bench_efficiency import bench_inputs
    from kronos_core.engine import GenerationStats, KronosEngine, SamplingParams
    from kronos_core.presets import build_pair

    cuda = not args.cpu_smoke
    preset, context, horizon, max_context = ("Kronos-small", 400, 30, 512) if cuda else ("Kronos-tiny", 24, 4, 32)
    batches, odd = ((1, 64, 1024), (3, 100, 1000)) if cuda else ((1, 3), (2,))
    buckets = tuple(int(b) for b in args.buckets.split(","))
    tokenizer, model = build_pair(preset, seed=0)
    engine = KronosEngine(
        model, tokenizer, device="cuda" if cuda else "cpu", max_context=max_context,
        dtype=torch.bfloat16, residual_fp32=args.residual_fp32,
        decode_loop="graphed" if cuda else "fixed", graph_buckets=buckets,
    )
    params = SamplingParams(T=1.0, top_k=0, top_p=0.9, sample_count=1)
    t0 = time.perf_counter()
    captured = engine.warm_up(horizon, params)
    out: dict[str, Any] = {
        "preset": preset, "context": context, "horizon": horizon, "max_context": max_context, "dtype": "bfloat16",
        "residual_fp32": engine.residual_fp32, "decode_loop": engine.decode_loop, "buckets": list(buckets),
        "device": str(engine.device), "warm_up_s": round(time.perf_counter() - t0, 2), "warm_up_captures": captured,
        "torch": torch.__version__, "batches": {},
    }
    if cuda:
        out["device_name"] = torch.cuda.get_device_name(engine.device)

    def timed(batch: int, repeats: int) -> dict[str, Any]:
        ns = argparse.Namespace(seed=0, batch=batch, context=context, horizon=horizon)
        xs, x_st, y_st = bench_inputs(ns)
        seconds, loops = [], []
        for r in range(repeats + 1):  # the first call is a warm-up (allocator), not timed
            stats = GenerationStats()
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            engine.generate(xs, x_st, y_st, horizon, params, seeds=list(range(batch)), stats=stats)
            if cuda:
                torch.cuda.synchronize()
            if r:
                seconds.append(time.perf_counter() - t)
            loops = stats.decode_loops
        med = float(np.median(seconds))
        return {"seconds": seconds, "forecasts_per_s": batch / med, "decode_loops": loops}

    for batch in batches:
        out["batches"][str(batch)] = timed(batch, args.repeats)
        print(f"engine: batch {batch}: {out['batches'][str(batch)]['forecasts_per_s']:.1f} forecasts/s", flush=True)
    for batch in odd:  # sizes between buckets: padded, never captured
        out["batches"][str(batch)] = timed(batch, 1)
    out["captures_after_warm_up"] = engine.graph_captures - (engine.graph_captures_at_warm_up or 0)
    print(f"engine: captures at warm-up {captured}, after it {out['captures_after_warm_up']}", flush=True)

    # What the fidelity options cost (results/bf16_residual.md measured what they fix): the largest
    # batch again with a float32 tokenizer, and with a float32 residual stream.
    big = batches[-1]
    out["variants"] = {}
    for name, extra in (("tokenizer_fp32", {"tokenizer_fp32": True}), ("residual_fp32", {"residual_fp32": True})):
        del engine
        if cuda:
            torch.cuda.empty_cache()
        engine = KronosEngine(
            model, tokenizer, device="cuda" if cuda else "cpu", max_context=max_context, dtype=torch.bfloat16,
            decode_loop="graphed" if cuda else "fixed", graph_buckets=(big,), **extra,
        )
        engine.warm_up(horizon, params)
        out["variants"][name] = {"batch": big, **timed(big, args.repeats)}
        print(f"engine: {name}, batch {big}: {out['variants'][name]['forecasts_per_s']:.1f} forecasts/s", flush=True)
    return out


# -- step 2: services ------------------------------------------------------------------------------


def services_step(args: argparse.Namespace, log: Path) -> dict[str, str]:
    """KAFKA_BOOTSTRAP and REDIS_URL of running services, started with scripts/services when unset."""
    if os.environ.get("KAFKA_BOOTSTRAP") and os.environ.get("REDIS_URL"):
        return {"KAFKA_BOOTSTRAP": os.environ["KAFKA_BOOTSTRAP"], "REDIS_URL": os.environ["REDIS_URL"],
                "started": "no (reused from the environment)"}
    env = {**os.environ, "PYTHON": sys.executable}
    with log.open("a") as fh:
        subprocess.run([str(SCRIPTS / "services"), "up", "kafka", "redis"], cwd=REPO, env=env, check=True,
                       stdout=fh, stderr=subprocess.STDOUT, timeout=args.services_timeout)
    text = subprocess.run([str(SCRIPTS / "services"), "env"], cwd=REPO, env=env, check=True, capture_output=True,
                          text=True, timeout=60).stdout
    found = dict(line.removeprefix("export ").split("=", 1) for line in text.splitlines() if "=" in line)
    found = {k: v.strip("'\"") for k, v in found.items()}
    return {"KAFKA_BOOTSTRAP": found["KAFKA_BOOTSTRAP"], "REDIS_URL": found["REDIS_URL"], "started": "yes"}


# -- step 3: bursts through the daemon (bench_load in a child process) ------------------------------


def burst_child(overrides_json: str, argv: list[str]) -> int:
    """Run bench_load's CLI with the daemon's environment amended by ``overrides_json``."""
    from scripts.benchload.cli import main

    overrides: dict[str, str] = json.loads(overrides_json)
    return main(argv, env_overrides=overrides)


def bursts_step(args: argparse.Namespace, services: dict[str, str], out: Path, left_s: float) -> dict[str, Any]:
    plan, common = (SMOKE_BURSTS, SMOKE_COMMON) if args.cpu_smoke else (GPU_BURSTS, GPU_COMMON)
    model = ["--model", "tiny"] if args.cpu_smoke else ["--model", "demo"]  # the preset replaces the folders
    env = {**os.environ, "KAFKA_BOOTSTRAP": services["KAFKA_BOOTSTRAP"], "REDIS_URL": services["REDIS_URL"],
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if not args.cpu_smoke:  # bench_load's reference model runs in that process
        env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    results: dict[str, Any] = {}
    deadline = time.monotonic() + left_s
    for name, extra in plan:
        if args.only and name not in args.only.split(","):
            continue
        left = deadline - time.monotonic()
        if left < 30:
            results[name] = {"skipped": f"budget spent ({left:.0f} s left)"}
            continue
        target = out / f"burst_{name}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--burst-child", json.dumps(daemon_overrides(args)),
               "--", *common, *model, *extra, "--out", str(target)]  # a later --max-context wins (argparse)
        t0 = time.perf_counter()
        with (out / f"burst_{name}.log").open("w") as fh:
            try:
                rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=left).returncode
            except subprocess.TimeoutExpired:
                rc = 124
        entry: dict[str, Any] = {"returncode": rc, "seconds": round(time.perf_counter() - t0, 1),
                                 "bench_load_args": [*common, *model, *extra]}
        if target.exists():
            entry["report"] = json.loads(target.read_text())
        results[name] = entry
        print(f"burst {name}: rc={rc} in {entry['seconds']} s", flush=True)
    return results


# -- summary -----------------------------------------------------------------------------------------


def _burst_rows(results: dict[str, Any]) -> list[str]:
    rows = []
    for name, entry in results.items():
        report = entry.get("report") or {}
        for mode, r in (report.get("modes") or {}).items():
            for b in r.get("bursts", []):
                rows.append(
                    f"| {name} | {mode} | {b.get('symbols')} | {b.get('repeat')} | {b.get('time_to_last_forecast_s', 'n/a')} | "
                    f"{b.get('efficiency', 'n/a')} | {b.get('complete')} |"
                )
            if "error" in r:
                rows.append(f"| {name} | {mode} | error: {r['error']} | | | | |")
        if not report:
            rows.append(f"| {name} | | {entry.get('skipped') or 'rc=' + str(entry.get('returncode'))} | | | | |")
    return rows


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    eng = summary.get("engine") or {}
    lines = [
        "# GPU daemon bench (scripts/gpu_daemon_bench.py)",
        "",
        f"mode: {'CPU smoke (sizes tiny, figures meaningless)' if summary['cpu_smoke'] else 'GPU'}; "
        f"wall {summary.get('wall_s')} s; errors: {summary.get('errors') or 'none'}",
        "",
        "## Engine through the bucketed graphs",
        "",
        f"{eng.get('preset')} {eng.get('dtype')} residual_fp32={eng.get('residual_fp32')} on {eng.get('device_name', eng.get('device'))}, "
        f"context {eng.get('context')}, horizon {eng.get('horizon')}, buckets {eng.get('buckets')}; "
        f"warm-up captured {eng.get('warm_up_captures')} graphs in {eng.get('warm_up_s')} s, "
        f"captures after warm-up: {eng.get('captures_after_warm_up')}",
        "",
        "| batch | forecasts/s | loop |",
        "|---|---|---|",
    ]
    for batch, r in (eng.get("batches") or {}).items():
        lines.append(f"| {batch} | {r['forecasts_per_s']:.1f} | {', '.join(r['decode_loops'])} |")
    for name, r in (eng.get("variants") or {}).items():
        lines.append(f"| {r['batch']}, {name} | {r['forecasts_per_s']:.1f} | {', '.join(r['decode_loops'])} |")
    lines += ["", "## Bursts through the daemon (bench_load)", "",
              "| run | mode | symbols | repeat | s to last forecast | efficiency | complete |", "|---|---|---|---|---|---|---|",
              *_burst_rows(summary.get("bursts") or {}), ""]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--burst-child"]:
        rest = argv[2:]
        return burst_child(argv[1], rest[1:] if rest[:1] == ["--"] else rest)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU: proves the script runs, nothing more")
    p.add_argument("--out", type=Path, default=None, help="default $OUT, else results/gpu/daemon_bench")
    p.add_argument("--budget-s", type=float, default=540.0, help="stop starting steps after this (default 540)")
    p.add_argument("--buckets", default="1,8,32,64,128,256,512,1024")
    p.add_argument("--residual-fp32", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--repeats", type=int, default=3, help="timed engine calls per batch size")
    p.add_argument("--skip", default="", help="comma list of steps to skip: engine, bursts")
    p.add_argument("--only", default="", help="comma list of burst names to run (default all)")
    p.add_argument("--services-timeout", type=float, default=180.0)
    args = p.parse_args(argv)
    if args.cpu_smoke and args.buckets == p.get_default("buckets"):
        args.buckets = "1,4"
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "results" / "gpu" / "daemon_bench")
    out.mkdir(parents=True, exist_ok=True)
    if not args.cpu_smoke:
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # before torch is imported
    began = time.monotonic()
    skip = set(filter(None, args.skip.split(",")))
    summary: dict[str, Any] = {"cpu_smoke": args.cpu_smoke, "argv": argv, "errors": {}}
    if "engine" not in skip:
        try:
            summary["engine"] = engine_step(args)
            (out / "engine.json").write_text(json.dumps(summary["engine"], indent=2) + "\n")
        except Exception as exc:  # the next step still runs
            summary["errors"]["engine"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        write_summary(out, summary)
    if "bursts" not in skip:
        try:
            services = services_step(args, out / "services.log")
            summary["services"] = services
            summary["bursts"] = bursts_step(args, services, out, args.budget_s - (time.monotonic() - began))
            failed = [k for k, v in summary["bursts"].items() if v.get("returncode") not in (0, None)]
            if failed:
                summary["errors"]["bursts"] = f"failed: {failed} (see burst_<name>.log)"
        except Exception as exc:
            summary["errors"]["bursts"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
    summary["wall_s"] = round(time.monotonic() - began, 1)
    write_summary(out, summary)
    print((out / "summary.md").read_text())
    print(f"written under {out}")
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
