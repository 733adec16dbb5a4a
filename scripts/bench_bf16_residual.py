"""bfloat16 with and without a float32 residual stream (and a float32 tokenizer), against float32.

The engine's ``residual_fp32`` keeps the running hidden state of every transformer stack (between
blocks, and the adds of the attention and feed-forward outputs) in float32 while the products,
attention and KV caches run in bfloat16 (``KRONOS_MODEL__RESIDUAL_FP32``); ``tokenizer_fp32`` runs
the tokenizer in float32 and only the predictor in bfloat16 (``KRONOS_MODEL__TOKENIZER_FP32``).
This measures, greedy decoding, each variant against float32 on the same inputs:

- s1/s2 token agreement over the horizon and the mean step of the first s1 divergence;
- the mean absolute forecast difference (normalised units);
- the first step's s1 logits (same tokens in, before any divergence): relative error, top-1 agreement;
- the tokenizer's share: context tokens equal to float32's (quantisation flips);
- the predictor's share: its first-step logits when it reads float32's context tokens.

Workloads: the bundled demo model (trained; d_model 64, 2 layers) on windows of the bundled real
bars (context 116, horizon 12, every 7th bar), and a random-weight Kronos-small (8 layers, d_model
512) on random bars (context 400, horizon 30, max_context 512). Random logits are nearly flat, so
its greedy agreement collapses after the first flip; its first-step figures are the meaningful ones.

    PYTHONPATH=. .venv/bin/python scripts/bench_bf16_residual.py [--device cpu] [--small-batch 8]

Writes ``results/bf16_residual.json`` and ``.md`` (``--out``). On CPU, bfloat16 products run through
oneDNN (this machine has AVX512-BF16); a CUDA run would measure the GPU kernels' rounding instead.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from kronos_core import bench
from kronos_core.bench_efficiency import bench_inputs
from kronos_core.presets import build_pair
from scripts.benchkit.demo import demo_windows

REPO = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, dict[str, Any]] = {
    "bf16": {"dtype": torch.bfloat16},
    "bf16+fp32_residual": {"dtype": torch.bfloat16, "residual_fp32": True},
    "bf16+fp32_tokenizer": {"dtype": torch.bfloat16, "tokenizer_fp32": True},
    "bf16+both": {"dtype": torch.bfloat16, "residual_fp32": True, "tokenizer_fp32": True},
}
METRICS = [
    ("s1_token_agreement", "s1 agree", "{:.1%}"),
    ("s2_token_agreement", "s2 agree", "{:.1%}"),
    ("mean_steps_before_first_s1_divergence", "first s1 divergence (step)", "{:.2f}"),
    ("forecast_mean_abs_diff_normalised", "mean abs forecast diff", "{:.4f}"),
    ("first_step_s1_logits_rel_error", "first-step logit rel. error", "{:.4f}"),
    ("first_step_s1_top1_agreement", "first-step top-1 agree", "{:.1%}"),
    ("context_s1_token_agreement", "context tokens s1 agree (tokenizer)", "{:.2%}"),
    ("context_s2_token_agreement", "context tokens s2 agree (tokenizer)", "{:.2%}"),
    ("predictor_only_s1_logits_rel_error", "predictor-only first-step logit rel. error (fp32 tokens in)", "{:.4f}"),
    ("predictor_only_s1_top1_agreement", "predictor-only first-step top-1 agree", "{:.1%}"),
]


def demo_workload(device: str, step: int) -> dict[str, Any]:
    context, horizon, max_context = 116, 12, 128  # the demo model's trained window
    model, tokenizer, series = demo_windows(context, horizon, step)
    args = argparse.Namespace(device=device, max_context=max_context, horizon=horizon)
    t0 = time.perf_counter()
    got = bench.greedy_agreements(
        args, model, tokenizer, VARIANTS,
        [s.x for s in series], [s.x_stamp for s in series], [s.y_stamp for s in series],
    )
    return {"model": "demo (trained, d64 x 2 layers)", "inputs": "real bars (bundled 5-min A-share file)",
            "windows": len(series), "context": context, "horizon": horizon, "max_context": max_context,
            "seconds": round(time.perf_counter() - t0, 1), "variants": got}


def small_workload(device: str, batch: int, context: int, horizon: int, seed: int) -> dict[str, Any]:
    tokenizer, model = build_pair("Kronos-small", seed=seed)
    args = argparse.Namespace(device=device, max_context=512, horizon=horizon, batch=batch, context=context, seed=seed)
    xs, x_st, y_st = bench_inputs(args)
    t0 = time.perf_counter()
    got = bench.greedy_agreements(args, model, tokenizer, VARIANTS, xs, x_st, y_st)
    return {"model": f"Kronos-small shape, random weights (seed {seed})", "inputs": "random bars",
            "windows": batch, "context": context, "horizon": horizon, "max_context": 512,
            "seconds": round(time.perf_counter() - t0, 1), "variants": got}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# bfloat16 with a float32 residual stream or tokenizer, against float32 (greedy)",
        "",
        f"Device {report['device']} ({report['machine']}), torch {report['torch']}, {report['threads']} threads. "
        "Written by `scripts/bench_bf16_residual.py`.",
        "",
    ]
    for w in report["workloads"]:
        lines += [
            f"## {w['model']}: {w['inputs']}, {w['windows']} windows, context {w['context']}, horizon {w['horizon']}",
            "",
            "| figure | " + " | ".join(w["variants"]) + " |",
            "|---|" + "---|" * len(w["variants"]),
        ]
        for key, label, fmt in METRICS:
            lines.append(f"| {label} | " + " | ".join(fmt.format(v[key]) for v in w["variants"].values()) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--demo-step", type=int, default=7, help="every n-th bar starts a demo window (default 7)")
    p.add_argument("--small-batch", type=int, default=8, help="Kronos-small windows (0: skip)")
    p.add_argument("--small-context", type=int, default=400)
    p.add_argument("--small-horizon", type=int, default=30)
    p.add_argument("--seeds", default="0", help="Kronos-small random-weight seeds, comma list")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=REPO / "results" / "bf16_residual.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "device": args.device, "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "workloads": [],
    }
    report["workloads"].append(demo_workload(args.device, args.demo_step))
    print(json.dumps(report["workloads"][-1]["variants"], indent=1), flush=True)
    if args.small_batch:
        for seed in (int(s) for s in args.seeds.split(",")):
            report["workloads"].append(
                small_workload(args.device, args.small_batch, args.small_context, args.small_horizon, seed)
            )
            print(json.dumps(report["workloads"][-1]["variants"], indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report) + "\n")
    print(markdown(report))
    print(f"written: {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
