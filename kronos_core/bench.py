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

from kronos_core.config import PredictorConfig
from kronos_core.engine import DecodeState, GenerationStats, KronosEngine, SamplingParams
from kronos_core.flops import exact_forecast_flops, incremental_forecast_flops
from kronos_core.presets import build_pair
from kronos_core.reference_generate import generate_recompute
from kronos_core.roofline import Floor, exact_floor, incremental_floor
from kronos_core.stream_types import SeriesWindow
from kronos_core.streaming import StreamConfig, StreamingForecaster

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


def _inputs(args: argparse.Namespace) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(args.seed)
    xs = [np.clip(rng.standard_normal((args.context, 6)), -5, 5).astype(np.float32) for _ in range(args.batch)]
    minutes = np.arange(args.context + args.horizon) * 5
    stamp = np.stack(
        [minutes % 60, (minutes // 60) % 24, (minutes // 1440) % 5, 1 + (minutes // 1440) % 28, np.full_like(minutes, 6)],
        axis=1,
    ).astype(np.float32)
    return xs, [stamp[: args.context]] * args.batch, [stamp[args.context :]] * args.batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    xs, x_st, y_st = _inputs(args)
    params = SamplingParams(T=1.0, top_k=0, top_p=0.9, sample_count=args.sample_count)
    seeds = list(range(args.batch))

    def fast() -> GenerationStats:
        stats = GenerationStats(synchronize=sync)
        engine.generate(xs, x_st, y_st, args.horizon, params, seeds=seeds, stats=stats)
        _sync(device)
        return stats

    x_t = torch.as_tensor(np.stack(xs), device=device).to(engine.dtype)
    xs_t = torch.as_tensor(np.stack(x_st), device=device).to(engine.dtype)
    ys_t = torch.as_tensor(np.stack(y_st), device=device).to(engine.dtype)

    def baseline() -> None:
        generate_recompute(
            engine.tokenizer, engine.model, x_t, xs_t, ys_t, args.horizon, args.max_context,
            T=1.0, top_k=0, top_p=0.9, sample_count=args.sample_count,
        )
        _sync(device)

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


# ----------------------------------------------------------------------------- peak and efficiency


def load_average() -> str | None:
    """``/proc/loadavg`` (1, 5, 15-minute load; running/all tasks), or None where there is none."""
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return None


def bf16_matmul_supported() -> bool:
    """Whether this CPU has a native bfloat16 matrix product (AVX512-BF16 or AMX) through oneDNN."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def block_matmul_shapes(cfg: PredictorConfig, rows: int) -> list[tuple[int, int, int]]:
    """(M, N, K) of the predictor block's products over ``rows`` rows: fused q/k/v, attention output,
    fused SwiGLU inputs, SwiGLU output (M x K times K x N)."""
    d, f = cfg.d_model, cfg.ff_dim
    return [(rows, 3 * d, d), (rows, d, d), (rows, 2 * f, d), (rows, d, f)]


class MatmulPeak:
    """Times a plain ``torch.mm(x, w.T)`` over a list of shapes (the layout of ``nn.Linear``)."""

    def __init__(self, shapes: list[tuple[int, int, int]], dtype: torch.dtype, device: torch.device, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.operands = [
            (torch.randn(m, k, generator=gen).to(device, dtype), torch.randn(n, k, generator=gen).to(device, dtype))
            for m, n, k in shapes
        ]
        self.flops = sum(2 * m * n * k for m, n, k in shapes)
        self.device = device
        self.round()  # warm-up: kernels chosen, memory touched

    def round(self) -> float:
        """GFLOP/s of one pass over every shape (total FLOPs over total time)."""
        _sync(self.device)
        t0 = time.perf_counter()
        for x, w in self.operands:
            torch.mm(x, w.t())
        _sync(self.device)
        return self.flops / (time.perf_counter() - t0) / 1e9


class MemoryRead:
    """Times a plain read (``sum``) of a float32 buffer of ``nbytes``: the rate a generated step's
    weights and cache can stream at when the working set has that size."""

    def __init__(self, nbytes: int, device: torch.device):
        self.buffer = torch.ones(max(nbytes // 4, 1), dtype=torch.float32, device=device)
        self.nbytes = self.buffer.numel() * 4
        self.device = device
        self.round()  # warm-up: pages touched

    def round(self) -> float:
        """GB/s of one read of the whole buffer."""
        _sync(self.device)
        t0 = time.perf_counter()
        self.buffer.sum()
        _sync(self.device)
        return self.nbytes / (time.perf_counter() - t0) / 1e9


def _roofline(floor: Floor, peak_gflops: float, achieved_gflops: float) -> dict[str, Any]:
    return {
        **floor.to_dict(),
        "attainable_ratio_to_peak": floor.attainable_gflops / peak_gflops,
        "achieved_over_attainable": achieved_gflops / floor.attainable_gflops,
    }


def _stream_windows(batch: int, context: int, horizon: int, extra: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Synthetic 5-minute bars per series (a noisy cycle: no drift that would force a refresh),
    ``context + extra`` of them, with ``horizon`` future timestamps past the last."""
    rng = np.random.default_rng(seed)
    n = context + extra + horizon
    ts = np.datetime64("2024-01-02T09:30", "ns") + np.arange(n) * np.timedelta64(5, "m")
    out = []
    for b in range(batch):
        close = 100 + 2 * np.sin(np.arange(n) / 37 + b) + 0.2 * rng.standard_normal(n)
        spread = np.abs(0.1 * rng.standard_normal(n))
        volume = 1000 + 100 * rng.random(n)
        values = np.stack([close, close + spread, close - spread, close, volume, volume * close], axis=1)
        out.append({"values": values, "ts": ts})
    return out


class _IncrementalFeed:
    """``batch`` warm incremental sessions that each get one more bar per call."""

    def __init__(self, engine: KronosEngine, args: argparse.Namespace, batch: int, params: SamplingParams, calls: int):
        self.forecaster = StreamingForecaster(
            engine, StreamConfig(mode="incremental", sampling=params, max_sessions=max(batch, 1)), model_version="bench"
        )
        self.context, self.horizon, self.batch = args.context, args.horizon, batch
        self.series = _stream_windows(batch, args.context, args.horizon, calls + 1, args.seed)
        self.states: list[Any] = [None] * batch
        self.calls = 0
        self.session_tokens: list[int] = []
        self.call()  # cold start: every session refreshed (encoded and prefilled)

    def call(self) -> None:
        end = self.context + self.calls  # bars known so far; the window keeps every bar behind the tokens
        windows = [
            SeriesWindow(
                f"S{b}", s["values"][:end], s["ts"][:end], s["ts"][end : end + self.horizon],
                seed=b, token_state=self.states[b],
            )
            for b, s in enumerate(self.series)
        ]
        out = self.forecaster.forecast(windows, self.horizon)
        self.states = [f.token_state for f in out]
        self.session_tokens = [len(f.token_state) for f in out if f.token_state is not None]
        st = self.forecaster.last_stats
        self.served = {"warm": st.series_warm, "refreshed": st.series_refreshed, "rebuilt": st.series_rebuilt}
        self.calls += 1


def efficiency(args: argparse.Namespace, engine: KronosEngine, batches: list[int]) -> dict[str, Any]:
    """Peak, achieved GFLOP/s and their ratio per batch size, exact and incremental, interleaved rounds."""
    device = engine.device
    pred_cfg, tok_cfg = engine.model.config, engine.tokenizer.config
    params = SamplingParams(T=1.0, top_k=0, top_p=0.9, sample_count=args.sample_count)
    exact_flops = exact_forecast_flops(pred_cfg, tok_cfg, args.context, args.horizon, args.sample_count)
    with_bf16 = device.type == "cpu" and bf16_matmul_supported() or device.type == "cuda"
    out: dict[str, Any] = {
        "loadavg_before": load_average(),
        "peak_definition": (
            "torch.mm(x, w.T) of the predictor block's shapes (q/k/v, out, SwiGLU in, SwiGLU out) with "
            "batch x context rows; total FLOPs over total time of one pass. ratio_to_peak: median forecast "
            "rate over the median peak round; ratio_best_to_best_peak: fastest forecast round over the fastest "
            "peak round (both estimate the machine undisturbed when other jobs share it)"
        ),
        "roofline_definition": (
            "the least time of the call on this machine (kronos_core.roofline): the prompt's FLOPs over the "
            "median fp32 peak, plus each generated step's larger of FLOPs/peak and bytes read (weights once "
            "per batch, each row's cached keys and values) over the median read rate of a plain sum over a "
            "buffer as large as the largest step's traffic. attainable_ratio_to_peak: the best ratio_to_peak "
            "any engine could reach here; achieved_over_attainable: the engine's median rate over that"
        ),
        "exact_flops_per_forecast": exact_flops.to_dict(),
        "bf16_matmul": with_bf16,
        "by_batch": [],
    }
    repeats = max(1, args.efficiency_repeats)
    for batch in batches:
        rows = batch * args.context
        shapes = block_matmul_shapes(pred_cfg, rows)
        peak32 = MatmulPeak(shapes, torch.float32, device, args.seed)
        peak16 = MatmulPeak(shapes, torch.bfloat16, device, args.seed) if with_bf16 else None
        floor_args = (pred_cfg, tok_cfg, args.context, args.horizon, batch)
        working_set = exact_floor(*floor_args, peak_flops=1.0, read_bytes_per_s=1.0).step_bytes_max
        memory = MemoryRead(working_set, device)
        rng = np.random.default_rng(args.seed)
        xs = [np.clip(rng.standard_normal((args.context, 6)), -5, 5).astype(np.float32) for _ in range(batch)]
        sub = argparse.Namespace(**{**vars(args), "batch": batch})
        _, x_st, y_st = _inputs(sub)
        seeds = list(range(batch))
        engine.generate(xs, x_st, y_st, args.horizon, params, seeds=seeds)  # warm-up
        feed = _IncrementalFeed(engine, args, batch, params, calls=repeats + 1)
        feed.call()  # warm-up of the append path
        g32: list[float] = []
        g16: list[float] = []
        reads: list[float] = []
        exact_s: list[float] = []
        inc_s: list[float] = []
        inc_flops: list[int] = []
        for _ in range(repeats):
            g32.append(peak32.round())
            if peak16 is not None:
                g16.append(peak16.round())
            reads.append(memory.round())
            t0 = time.perf_counter()
            engine.generate(xs, x_st, y_st, args.horizon, params, seeds=seeds)
            _sync(device)
            exact_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            feed.call()
            _sync(device)
            inc_s.append(time.perf_counter() - t0)
            inc_flops.append(sum(
                incremental_forecast_flops(pred_cfg, tok_cfg, n, args.horizon, args.sample_count).total
                for n in feed.session_tokens
            ))
        peak, peak_best = statistics.median(g32), max(g32)
        exact_gflops = batch * exact_flops.total / statistics.median(exact_s) / 1e9
        exact_best = batch * exact_flops.total / min(exact_s) / 1e9
        inc_rates = [f / s / 1e9 for f, s in zip(inc_flops, inc_s, strict=True)]
        inc_gflops, inc_best = statistics.median(inc_rates), max(inc_rates)
        read_gbps = statistics.median(reads)
        rates = {"peak_flops": peak * 1e9, "read_bytes_per_s": read_gbps * 1e9, "sample_count": args.sample_count}
        exact_roof = exact_floor(*floor_args, **rates)
        inc_context = feed.session_tokens[0] if feed.session_tokens else args.context
        inc_roof = incremental_floor(pred_cfg, tok_cfg, inc_context, args.horizon, batch, **rates)
        entry: dict[str, Any] = {
            "batch": batch,
            "peak_fp32_gflops": peak,
            "peak_fp32_best_gflops": peak_best,
            "peak_fp32_rounds": g32,
            "peak_bf16_gflops": statistics.median(g16) if g16 else None,
            "memory_read_gbps": read_gbps,
            "memory_read_rounds": reads,
            "memory_read_bytes": memory.nbytes,
            "exact": {
                "seconds": exact_s,
                "forecasts_per_s": batch / statistics.median(exact_s),
                "gflop_per_forecast": exact_flops.total / 1e9,
                "achieved_gflops": exact_gflops,
                "ratio_to_peak": exact_gflops / peak,
                "achieved_best_gflops": exact_best,
                "ratio_best_to_best_peak": exact_best / peak_best,
                "roofline": _roofline(exact_roof, peak, exact_gflops),
            },
            "incremental": {
                "seconds": inc_s,
                "ms_per_bar": 1e3 * statistics.median(inc_s) / batch,
                "session_tokens": feed.session_tokens[:1],
                "last_call_served": feed.served,
                "gflop_per_forecast": inc_flops[-1] / batch / 1e9,
                "achieved_gflops": inc_gflops,
                "ratio_to_peak": inc_gflops / peak,
                "achieved_best_gflops": inc_best,
                "ratio_best_to_best_peak": inc_best / peak_best,
                "roofline": _roofline(inc_roof, peak, inc_gflops),
            },
        }
        out["by_batch"].append(entry)
    out["loadavg_after"] = load_average()
    return out


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
        eff = result["efficiency"]
        print(f"matrix-multiply peak and achieved rate (loadavg {eff['loadavg_before']} -> {eff['loadavg_after']}):")
        print("  (median rounds; in brackets: fastest rounds, the fastest forecast over the fastest peak)")
        print("  batch  peak fp32      peak bf16 |  exact GFLOP/s  ratio        forecasts/s | incr. GFLOP/s  ratio   ms/bar")
        for e in eff["by_batch"]:
            bf16 = f"{e['peak_bf16_gflops']:9.1f}" if e["peak_bf16_gflops"] else "        -"
            ex, inc = e["exact"], e["incremental"]
            print(
                f"  {e['batch']:5d}  {e['peak_fp32_gflops']:5.0f} ({e['peak_fp32_best_gflops']:4.0f})  {bf16} | "
                f"{ex['achieved_gflops']:6.1f} ({ex['achieved_best_gflops']:5.1f})  {ex['ratio_to_peak']:4.2f} "
                f"({ex['ratio_best_to_best_peak']:4.2f})  {ex['forecasts_per_s']:6.2f} | "
                f"{inc['achieved_gflops']:5.1f} ({inc['achieved_best_gflops']:5.1f})  {inc['ratio_to_peak']:4.2f} "
                f"({inc['ratio_best_to_best_peak']:4.2f})  {inc['ms_per_bar']:7.2f}"
            )
        print("  roofline (memory read at a generated step's working set; attainable = the least time's rate):")
        print("  batch  read GB/s | exact: attainable GFLOP/s  ratio  achieved/attainable | incr.: attainable  ratio  achieved/attainable")
        for e in eff["by_batch"]:
            ex, inc = e["exact"]["roofline"], e["incremental"]["roofline"]
            print(
                f"  {e['batch']:5d}  {e['memory_read_gbps']:9.1f} | {ex['attainable_gflops']:25.1f}  "
                f"{ex['attainable_ratio_to_peak']:5.2f}  {ex['achieved_over_attainable']:19.2f} | "
                f"{inc['attainable_gflops']:17.1f}  {inc['attainable_ratio_to_peak']:5.2f}  "
                f"{inc['achieved_over_attainable']:19.2f}"
            )


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
