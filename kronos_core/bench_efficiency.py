"""The efficiency section of ``kronos-stream bench inference``: the machine's own limits and the
engine's rate against them.

At each batch size, in interleaved rounds: a plain ``torch.mm`` of the predictor block's shapes over
the prompt's rows (the matrix-multiply peak, float32 and, where the CPU has it, bfloat16), a plain
read of a buffer as large as a generated step's traffic (the read rate), an exact forecast of the
batch and an incremental one (one new bar per series on warm sessions). The FLOPs come from
:mod:`kronos_core.flops`, the least time a call can take from :mod:`kronos_core.roofline`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kronos_core.config import PredictorConfig
from kronos_core.engine import KronosEngine, SamplingParams
from kronos_core.flops import exact_forecast_flops, incremental_forecast_flops
from kronos_core.roofline import Floor, exact_floor, incremental_floor
from kronos_core.stream_types import SeriesWindow
from kronos_core.streaming import StreamConfig, StreamingForecaster


def bench_inputs(args: argparse.Namespace) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """``args.batch`` random normalised windows of ``args.context`` bars, 5-minute stamps and the horizon's."""
    rng = np.random.default_rng(args.seed)
    xs = [np.clip(rng.standard_normal((args.context, 6)), -5, 5).astype(np.float32) for _ in range(args.batch)]
    minutes = np.arange(args.context + args.horizon) * 5
    stamp = np.stack(
        [minutes % 60, (minutes // 60) % 24, (minutes // 1440) % 5, 1 + (minutes // 1440) % 28, np.full_like(minutes, 6)],
        axis=1,
    ).astype(np.float32)
    return xs, [stamp[: args.context]] * args.batch, [stamp[args.context :]] * args.batch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so a timer reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)



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
        sync(self.device)
        t0 = time.perf_counter()
        for x, w in self.operands:
            torch.mm(x, w.t())
        sync(self.device)
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
        sync(self.device)
        t0 = time.perf_counter()
        self.buffer.sum()
        sync(self.device)
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
        _, x_st, y_st = bench_inputs(sub)
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
            sync(device)
            exact_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            feed.call()
            sync(device)
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


def print_efficiency(eff: dict[str, Any]) -> None:
    """The efficiency section of the report."""
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
