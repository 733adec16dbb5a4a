"""Trainer benchmark: CPU training throughput with 1 and 2 processes, and the demo model's skill vs
persistence before and after a short fine-tune. Writes ``results/bench_train.json`` and ``.md``.

1. An archive is built from the bundled bars (symbol ``DEMO``; naive Asia/Shanghai times -> UTC) in a
   temporary folder, and a registry whose champion is the shipped demo model.
2. Throughput: ``kronos-stream train`` on the demo model's shapes (lookback 116 + horizon 12 = its
   max_context 128), ``--batch-size`` windows per process and step, ``--steps`` steps, plainly (1 process,
   1 thread; 1 process, 2 threads) and under ``torchrun --nproc-per-node 2`` (1 thread each). samples/s
   = windows of all processes / the training loop's wall time (first steps included), as the manifest
   records it. The load average is recorded beside each run: this machine may be shared.
3. Skill: one plain fine-tune of the registry champion (the demo model) for ``--finetune-steps`` steps
   with the trainer's defaults (predictor lr 4e-5, tokenizer frozen); the gate scores the champion
   (before) and the candidate (after) on the same held-out windows (the most recent ``val_fraction``
   of the bars): CRPS and close MAE in price units, skill = 1 - model / persistence.

Run: ``PYTHONPATH=. .venv/bin/python scripts/bench_train.py [--steps 30] [--finetune-steps 100] [--out-dir results]``.
``--small-shapes cuda`` instead measures fine-tuning samples/s of the Kronos-small shapes (random
weights, random-walk bars, window ``--small-lookback`` + 12, bf16 on CUDA) into
``bench_train_small.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from kronos_contract.archive import write_bars
from kronos_contract.registry import Registry
from trainer.demo_model import BARS_CSV, CALENDAR_TZ, DEFAULT_OUT, read_manifest

REPO = Path(__file__).resolve().parents[1]


def build_archive(root: Path) -> int:
    df = pd.read_csv(BARS_CSV, parse_dates=["timestamps"])
    frame = df.rename(columns={"timestamps": "ts"})
    frame["ts"] = frame["ts"].dt.tz_localize(CALENDAR_TZ).dt.tz_convert("UTC")
    frame.insert(0, "symbol", "DEMO")
    write_bars(str(root), frame, name="bundled-p0-o0-" + str(len(frame) - 1))
    return len(frame)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train(args: list[str], *, nproc: int, threads: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    if nproc == 1:
        cmd = [sys.executable, "-m", "daemon.cli", "train"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
               f"--master-port={_free_port()}", "-m", "daemon.cli", "train"]
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    done = subprocess.run([*cmd, *args, "--threads", str(threads), "--progress", "log"], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"train failed ({done.returncode}):\n{done.stderr[-4000:]}")
    summary: dict[str, Any] = json.loads(done.stdout)
    summary["process_wall_s"] = round(time.monotonic() - t0, 2)
    summary["loadavg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return summary


def small_shapes(device: str, steps: int, batch_size: int, lookback: int, bf16: bool) -> dict[str, Any]:
    """Fine-tuning samples/s of the Kronos-small shapes (random weights, random-walk bars)."""
    import numpy as np

    from kronos_core.presets import build_pair

    with tempfile.TemporaryDirectory(prefix="bench-train-small-") as tmp:
        root = Path(tmp)
        tokenizer, model = build_pair("Kronos-small")
        tok, pred = tokenizer.save_pretrained(root / "tokenizer"), model.save_pretrained(root / "predictor")
        rng = np.random.default_rng(0)
        n = 4 * (lookback + 12) * max(1, batch_size)
        close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
        frame = pd.DataFrame({
            "symbol": "SYN", "ts": pd.date_range("2024-01-01", periods=n, freq="1min", tz="UTC"),
            "open": close, "high": close * 1.001, "low": close * 0.999, "close": close,
            "volume": rng.uniform(1e3, 1e4, n), "amount": rng.uniform(1e5, 1e6, n),
        })
        write_bars(str(root / "archive"), frame, name="syn-p0-o0-" + str(n - 1))
        summary = train(["--archive", str(root / "archive"), "--tokenizer-dir", str(tok), "--predictor-dir", str(pred),
                         "--lookback", str(lookback), "--horizon", "12", "--steps", str(steps), "--batch-size",
                         str(batch_size), "--device", device, "--bf16" if bf16 else "--no-bf16", "--eval-windows", "2",
                         "--eval-samples", "2", "--save-every", str(steps), "--work-dir", str(root / "work")],
                        nproc=1, threads=max(1, os.cpu_count() or 1))
    return {"device": device, "bf16": bf16, "steps": steps, "batch_size": batch_size, "window": lookback + 12,
            "samples_per_s": summary["training"]["samples_per_s"], "loop_wall_s": summary["training"]["wall_s"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="steps per throughput run")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per process and step")
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--eval-windows", type=int, default=64)
    parser.add_argument("--eval-samples", type=int, default=8)
    parser.add_argument("--out-dir", type=Path, default=REPO / "results")
    parser.add_argument("--small-shapes", metavar="DEVICE",
                        help="only measure Kronos-small shapes on DEVICE (e.g. cuda; bf16 there) and write "
                        "bench_train_small.json")
    parser.add_argument("--small-lookback", type=int, default=500)
    args = parser.parse_args()
    if args.small_shapes:
        result = small_shapes(args.small_shapes, args.steps, args.batch_size, args.small_lookback,
                              bf16=args.small_shapes.startswith("cuda"))
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "bench_train_small.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return 0

    report: dict[str, Any] = {"cpu_count": os.cpu_count(), "steps": args.steps, "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = Path(tmp)
        report["bars"] = build_archive(root / "archive")
        demo = read_manifest(DEFAULT_OUT)
        registry = Registry(str(root / "registry"))
        registry.publish(demo["version"], DEFAULT_OUT / "tokenizer", DEFAULT_OUT / "predictor",
                         {k: v for k, v in demo.items() if k != "files"}, promote=True)
        common = ["--archive", str(root / "archive"), "--lookback", "116", "--horizon", "12"]
        shapes = ["--tokenizer-dir", str(DEFAULT_OUT / "tokenizer"), "--predictor-dir", str(DEFAULT_OUT / "predictor"),
                  "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--eval-windows", "4",
                  "--eval-samples", "2", "--save-every", str(args.steps)]
        runs = {}
        for name, nproc, threads in (("1 process, 1 thread", 1, 1), ("2 processes (gloo), 1 thread each", 2, 1),
                                     ("1 process, 2 threads", 1, 2)):
            work = root / f"work-{nproc}-{threads}"
            summary = train([*common, *shapes, "--work-dir", str(work)], nproc=nproc, threads=threads)
            runs[name] = {"processes": nproc, "threads_per_process": threads,
                          "samples_per_s": summary["training"]["samples_per_s"],
                          "loop_wall_s": summary["training"]["wall_s"], "process_wall_s": summary["process_wall_s"],
                          "loadavg_1m_before_after": summary["loadavg_1m"]}
            print(f"{name}: {runs[name]['samples_per_s']} samples/s", flush=True)
        report["throughput"] = runs
        one = runs["1 process, 1 thread"]["samples_per_s"]
        report["ratio_2proc_vs_1proc"] = round(runs["2 processes (gloo), 1 thread each"]["samples_per_s"] / one, 3)

        summary = train([*common, "--registry", str(root / "registry"), "--work-dir", str(root / "work-ft"),
                         "--steps", str(args.finetune_steps), "--eval-windows", str(args.eval_windows),
                         "--eval-samples", str(args.eval_samples)], nproc=1, threads=2)
        version = summary["version"]
        manifest = (registry.manifest(version) if summary["promoted"] else registry.refused_manifest(version))
        ev = manifest["evaluation"]

        def figures(part: dict[str, Any]) -> dict[str, Any]:
            keys = ("crps", "mae", "persistence_mae", "skill_crps", "skill_mae", "coverage", "nominal_coverage")
            return {k: part.get(k) for k in keys}

        report["finetune"] = {
            "model": demo["version"], "steps": args.finetune_steps, "lr": manifest["settings"]["lr"],
            "batch_size": manifest["settings"]["batch_size"], "tokenizer_frozen": True,
            "data": {k: manifest["data"][k] for k in ("first", "last", "cut", "train_windows", "val_windows")},
            "eval_windows": ev["windows"], "sample_paths": ev["sample_paths"], "horizon": ev["horizon"],
            "before": figures(ev["champion"]), "after": figures(ev["candidate"]),
            "persistence": {"mae": ev["persistence"]["mae"]},
            "gate": manifest["gate"], "wall_s": manifest["training"]["wall_s"],
        }
    report["torch_threads_note"] = "OMP_NUM_THREADS and --threads set per run"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "bench_train.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out_dir / "bench_train.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def _f(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Trainer benchmark (scripts/bench_train.py)", "",
        f"CPU training throughput, demo-model shapes (window 128), {r['batch_size']} windows per process and "
        f"step, {r['steps']} steps; {r['cpu_count']} CPU cores (shared machine: load average beside each run).", "",
        "| run | samples/s | loop wall s | load avg (before, after) |", "|---|---|---|---|",
    ]
    for name, run in r["throughput"].items():
        lines.append(f"| {name} | {run['samples_per_s']} | {run['loop_wall_s']} | {run['loadavg_1m_before_after']} |")
    lines += ["", f"2 processes vs 1 process (1 thread each): {r['ratio_2proc_vs_1proc']}x", ""]
    ft = r["finetune"]
    lines += [
        f"Demo model ({ft['model']}) fine-tuned {ft['steps']} steps (lr {ft['lr']}, batch {ft['batch_size']}, "
        f"tokenizer frozen); held-out: {ft['eval_windows']} windows after {ft['data']['cut']}, "
        f"{ft['sample_paths']} sample paths, horizon {ft['horizon']}; close in price units.", "",
        "| model | CRPS | MAE | skill (CRPS) | skill (MAE) | p10-p90 coverage |", "|---|---|---|---|---|---|",
    ]
    for label, key in (("before (champion)", "before"), ("after (candidate)", "after")):
        f = ft[key]
        lines.append(f"| {label} | {_f(f['crps'])} | {_f(f['mae'])} | {_f(f['skill_crps'], 3)} | "
                     f"{_f(f['skill_mae'], 3)} | {_f(f['coverage'], 3)} |")
    lines.append(f"| persistence | {_f(ft['persistence']['mae'])} | {_f(ft['persistence']['mae'])} | 0 | 0 | - |")
    lines += ["", f"Gate: {'promoted' if ft['gate']['promoted'] else 'refused'} ({ft['gate']['reason']}).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
