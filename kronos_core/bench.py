"""``kronos-stream bench inference``: the fast engine against the recompute-everything baseline,
and against the machine's own matrix-multiply peak.

Both engines run in the same process on the same random-weight models and inputs, interleaved
(fast, baseline, fast, baseline, ...), so machine noise hits both alike. Prints forecasts/s of
each, their ratio, the token-forwards each needed, and writes everything to a JSON file.
With ``--compare-dtype bfloat16`` it also reports the greedy token agreement of that dtype with
float32 on the same inputs.

The efficiency section (``--efficiency-batches``, default 1, 8 and 32) states the limit the
forecasts run against: at each batch size, in interleaved rounds, it times a plain ``torch.mm`` of
the predictor's own block shapes with the prompt's rows (batch x context; float32, and bfloat16
where the CPU has it, same thread count), an exact forecast of the batch and an incremental one
(one new bar per series on warm sessions). The FLOPs of each forecast come from the model configs
(:mod:`kronos_core.flops`); achieved GFLOP/s over the float32 peak is the figure that carries from
machine to machine. It also times a plain read of a buffer as large as a generated step's traffic
and states the roofline (:mod:`kronos_core.roofline`): the best ratio any engine could reach on this
machine, where the generated steps are bound by memory, and the engine's rate over that. ``/proc/loadavg`` is recorded before and after, as the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kronos_core.bench_efficiency import bench_inputs, efficiency, print_efficiency, sync
from kronos_core.engine import DecodeState, GenerationStats, KronosEngine, SamplingParams
from kronos_core.presets import build_pair
from kronos_core.reference_generate import generate_recompute

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="Kronos-small", help="predictor preset (random weights), e.g. Kronos-small")
    p.add_argument("--context", type=int, default=400, help="context bars per series")
    p.add_argument("--horizon", type=int, default=30, help="bars to forecast")
    p.add_argument("--batch", type=int, default=8, help="series per call")
    p.add_argument("--sample-count", type=int, default=1, help="sample paths per series")
    p.add_argument("--max-context", type=int, default=512)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--baseline-repeats", type=int, default=None, help="baseline rounds (default: --repeats)")
    p.add_argument("--no-baseline", action="store_true", help="time only the fast path (large batches)")
    p.add_argument("--compare-dtype", default=None, choices=sorted(DTYPES), help="greedy token agreement vs fp32")
    p.add_argument("--no-packed", action="store_true", help="fast path without oneDNN-prepacked weights (CPU)")
    p.add_argument(
        "--decode-loop", default="auto", choices=("auto", "dynamic", "fixed", "graphed"),
        help="generated-step loop: auto is graphed (CUDA graphs) on CUDA, dynamic elsewhere",
    )
    p.add_argument(
        "--graph-buckets", default=None,
        help="batch sizes the graphed loop pads to, comma list (default: the engine's; larger batches run in chunks)",
    )
    p.add_argument(
        "--quantize", default=None, choices=["int8"],
        help="opt-in int8 dynamic quantization of the blocks' products (CPU, not exact)",
    )
    p.add_argument(
        "--compare-int8", action="store_true",
        help="greedy token agreement and forecast difference of int8 quantization vs fp32",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks (see KronosEngine)")
    p.add_argument("--tf32", action="store_true", help="let CUDA fp32 matrix products use TF32 tensor cores")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--efficiency-batches", default="1,8,32",
        help="batch sizes of the peak/achieved section, comma list ('' skips it)",
    )
    p.add_argument("--efficiency-repeats", type=int, default=3, help="interleaved rounds per batch size")
    p.add_argument("--out", default="results/bench_inference.json", help="where to write the JSON results")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
    tokenizer, model = build_pair(args.preset, seed=args.seed)
    engine = KronosEngine(
        model, tokenizer, device=args.device, max_context=args.max_context, dtype=DTYPES[args.dtype],
        packed=not args.no_packed, decode_loop=args.decode_loop, compile_blocks=args.compile, quantize=args.quantize,
        graph_buckets=[int(b) for b in args.graph_buckets.split(",")] if args.graph_buckets else None,
    )
    device = engine.device
    stage_sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    xs, x_st, y_st = bench_inputs(args)
    params = SamplingParams(T=1.0, top_k=0, top_p=0.9, sample_count=args.sample_count)
    seeds = list(range(args.batch))

    def fast() -> GenerationStats:
        stats = GenerationStats(synchronize=stage_sync)
        engine.generate(xs, x_st, y_st, args.horizon, params, seeds=seeds, stats=stats)
        sync(device)
        return stats

    x_t = torch.as_tensor(np.stack(xs), device=device).to(engine.dtype)
    xs_t = torch.as_tensor(np.stack(x_st), device=device).to(engine.dtype)
    ys_t = torch.as_tensor(np.stack(y_st), device=device).to(engine.dtype)

    def baseline() -> None:
        generate_recompute(
            engine.tokenizer, engine.model, x_t, xs_t, ys_t, args.horizon, args.max_context,
            T=1.0, top_k=0, top_p=0.9, sample_count=args.sample_count,
        )
        sync(device)

    fast()  # warm-up (allocator, kernels)
    fast_s: list[float] = []
    base_s: list[float] = []
    stats = GenerationStats()
    base_rounds = args.repeats if args.baseline_repeats is None else args.baseline_repeats
    for r in range(args.repeats):
        t0 = time.perf_counter()
        stats = fast()
        fast_s.append(time.perf_counter() - t0)
        if not args.no_baseline and r < base_rounds:
            t0 = time.perf_counter()
            baseline()
            base_s.append(time.perf_counter() - t0)

    n = args.batch
    fast_fps = n / statistics.median(fast_s)
    result: dict[str, Any] = {
        "preset": args.preset,
        "context": args.context,
        "horizon": args.horizon,
        "batch": n,
        "sample_count": args.sample_count,
        "max_context": args.max_context,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": args.dtype,
        "packed_weights": engine.packed,
        "quantize": args.quantize,
        "decode_loop": engine.decode_loop,
        "compiled": engine.compiled,
        "graph_buckets": list(engine.graph_buckets) if engine.graph_buckets else None,
        "tf32": bool(args.tf32),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "fast_seconds": fast_s,
        "fast_forecasts_per_s": fast_fps,
        "fast_token_forwards_per_forecast": (stats.prefill_tokens + stats.step_tokens + stats.recompute_tokens) / n,
        "fast_stage_ms": stats.timings_ms,
        "fast_decode_loop_used": stats.decode_loops[-1] if stats.decode_loops else None,
    }
    if base_s:
        base_fps = n / statistics.median(base_s)
        base_forwards = sum(min(args.context + i, args.max_context) for i in range(args.horizon)) * args.sample_count
        result.update(
            baseline_seconds=base_s,
            baseline_forecasts_per_s=base_fps,
            baseline_token_forwards_per_forecast=base_forwards,
            speedup=fast_fps / base_fps,
        )
    if args.compare_dtype:
        result["dtype_agreement"] = greedy_agreement(args, model, tokenizer, DTYPES[args.compare_dtype], xs, x_st, y_st)
    if args.compare_int8:
        result["int8_agreement"] = greedy_agreements(
            args, model, tokenizer, {"int8": {"quantize": "int8"}}, xs, x_st, y_st
        )["int8"]
    batches = [int(b) for b in args.efficiency_batches.split(",") if b.strip()]
    if batches:
        result["efficiency"] = efficiency(args, engine, batches)
    return result


def greedy_agreement(
    args: argparse.Namespace,
    model: torch.nn.Module,
    tokenizer: torch.nn.Module,
    dtype: torch.dtype,
    xs: list[np.ndarray],
    x_st: list[np.ndarray],
    y_st: list[np.ndarray],
) -> dict[str, float]:
    """Greedy decoding in ``dtype`` against float32 on the same inputs: token agreement, forecast gap."""
    return greedy_agreements(args, model, tokenizer, {"low": {"dtype": dtype}}, xs, x_st, y_st)["low"]


def greedy_agreements(
    args: argparse.Namespace,
    model: torch.nn.Module,
    tokenizer: torch.nn.Module,
    variants: dict[str, dict[str, Any]],
    xs: list[np.ndarray],
    x_st: list[np.ndarray],
    y_st: list[np.ndarray],
) -> dict[str, dict[str, float]]:
    """Greedy decoding of each variant (``KronosEngine`` keyword arguments, e.g. ``{"dtype":
    torch.bfloat16, "residual_fp32": True}``) against float32 on the same inputs, by variant name:
    token agreement, steps before the first s1 divergence, forecast gap, first-step logit error."""
    greedy = SamplingParams(T=1.0, top_k=1, top_p=1.0)
    lengths = torch.tensor([len(x) for x in xs])
    rows = torch.arange(len(xs))
    context_mask = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]  # [B, L]

    def run(**kwargs: Any) -> tuple[KronosEngine, DecodeState, Tensor, tuple[np.ndarray, np.ndarray]]:
        eng = KronosEngine(model, tokenizer, device=args.device, max_context=args.max_context, **kwargs)  # type: ignore[arg-type]
        stats = GenerationStats()
        with torch.inference_mode():
            state = eng.prefill(xs, x_st, y_st, args.horizon, stats)
            first = state.last_logits.float().cpu()
            return eng, state, first, eng.run_horizon_tokens(
                state, args.horizon, greedy, seeds=list(range(len(xs))), stats=stats
            )

    def predictor_logits(eng: KronosEngine, ref: DecodeState) -> Tensor:
        """s1 logits after the context when ``eng``'s predictor reads ``ref``'s context tokens."""
        width = int(lengths.max())
        with torch.inference_mode():
            h = eng.transformer(eng.embed(ref.tok1[:, :width], ref.tok2[:, :width], ref.stamps[:, :width].to(eng.dtype)), None)
            return eng.head_s1(h[rows, lengths - 1]).float().cpu()

    _, ref, l32, (p32, t32) = run(dtype=torch.float32)
    fits = int(lengths.max()) <= args.max_context  # the predictor-only figure needs the whole context in one window
    out = {}
    for name, kwargs in variants.items():
        # The first step's s1 logits (same tokens in, before any divergence): how far the numbers move.
        eng, state, llo, (plo, tlo) = run(**kwargs)
        first_diff = [
            int(np.argmax(a != b)) if (a != b).any() else args.horizon for a, b in zip(t32[0, :, 0], tlo[0, :, 0], strict=True)
        ]
        width = int(lengths.max())
        figures = {
            "s1_token_agreement": float((t32[0] == tlo[0]).mean()),
            "s2_token_agreement": float((t32[1] == tlo[1]).mean()),
            "mean_steps_before_first_s1_divergence": float(np.mean(first_diff)),
            "forecast_mean_abs_diff_normalised": float(np.abs(p32 - plo).mean()),
            "first_step_s1_logits_rel_error": float((llo - l32).norm() / l32.norm()),
            "first_step_s1_top1_agreement": float((llo.argmax(-1) == l32.argmax(-1)).float().mean()),
            # The tokenizer's share: context tokens that differ from float32's (quantisation flips).
            "context_s1_token_agreement": float((state.tok1[:, :width].cpu() == ref.tok1[:, :width].cpu())[context_mask].float().mean()),
            "context_s2_token_agreement": float((state.tok2[:, :width].cpu() == ref.tok2[:, :width].cpu())[context_mask].float().mean()),
        }
        if fits:  # the predictor's share: its first-step logits from float32's context tokens
            lp = predictor_logits(eng, ref)
            figures["predictor_only_s1_logits_rel_error"] = float((lp - l32).norm() / l32.norm())
            figures["predictor_only_s1_top1_agreement"] = float((lp.argmax(-1) == l32.argmax(-1)).float().mean())
        out[name] = figures
    return out


def print_report(result: dict[str, Any]) -> None:
    print(
        f"preset={result['preset']} context={result['context']} horizon={result['horizon']} batch={result['batch']} "
        f"samples={result['sample_count']} device={result['device']} ({result['device_name']}) dtype={result['dtype']} "
        f"packed={result['packed_weights']} quantize={result['quantize']} loop={result['decode_loop']} "
        f"threads={result['threads']}"
    )
    print(
        f"fast path:  {result['fast_forecasts_per_s']:.3f} forecasts/s "
        f"({result['fast_token_forwards_per_forecast']:.0f} token-forwards per forecast, "
        f"loop {result['fast_decode_loop_used']})"
    )
    if "speedup" in result:
        print(
            f"recompute:  {result['baseline_forecasts_per_s']:.3f} forecasts/s "
            f"({result['baseline_token_forwards_per_forecast']:.0f} token-forwards per forecast)"
        )
        print(f"speedup:    {result['speedup']:.1f}x (median of interleaved rounds)")
    if "dtype_agreement" in result:
        print(f"dtype fidelity vs fp32: {result['dtype_agreement']}")
    if "int8_agreement" in result:
        print(f"int8 fidelity vs fp32: {result['int8_agreement']}")
    if "efficiency" in result:
        print_efficiency(result["efficiency"])


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kronos-stream bench inference", description=__doc__)
    add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_and_report(make_parser().parse_args(argv))


def run_and_report(args: argparse.Namespace) -> int:
    try:
        result = run(args)
    except ValueError as exc:  # KronosError/ConfigError/InputError are ValueErrors: bad options
        print(f"kronos-stream bench inference: {exc}", file=sys.stderr)
        return 2
    print_report(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
