"""Where an exact forecast's time goes on CPU: a torch.profiler summary by kind of work.

A random-weight model of a ``kronos_core`` preset (default Kronos-small: only the cost matters), one
exact ``KronosEngine.generate`` of ``--batch`` series (context 400, horizon 30, one path, 2 threads by
default) under ``torch.profiler``. The engine's pieces are labelled for the run (``record_function``
around attention, norms, rotary, sampling and the tokenizer's stages); each profiled operator's own
(self) time goes to:

- ``matrix products``: the linear layers (``mkldnn::_linear_pointwise``, ``aten::mm``/``addmm``/
  ``linear``), wherever they run;
- otherwise the innermost label around it: ``attention``, ``norms``, ``rotary``, ``sampling``,
  ``tokenizer (other)`` (embedding, quantizer, caches of the tokenizer outside its products);
- ``other operators``: what no label covers (residual adds, SwiGLU, embeddings, cache writes, ...);
- ``python and dispatch``: the wall time of the call that no operator accounts for.

Writes ``--out`` (Markdown, default ``results/profile_inference.md``) and a JSON beside it with the
figures, the top operators and ``/proc/loadavg`` before and after (the machine may be shared).
Run: ``python scripts/profile_inference.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

from kronos_core import engine as engine_mod
from kronos_core import fused_step
from kronos_core.bench_efficiency import load_average
from kronos_core.engine import GenerationStats, KronosEngine, SamplingParams
from kronos_core.flops import exact_forecast_flops
from kronos_core.presets import build_pair

REPO = Path(__file__).resolve().parents[1]
MATMUL_OPS = {"mkldnn::_linear_pointwise", "aten::mm", "aten::addmm", "aten::linear", "mkldnn::_linear_pointwise.binary"}
LABELS = ("attention", "norms", "rotary", "sampling", "tokenizer (other)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="Kronos-small")
    p.add_argument("--context", type=int, default=400)
    p.add_argument("--horizon", type=int, default=30)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--sample-count", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--engine-option", action="append", default=[], help="KronosEngine keyword=value (bool/int)")
    p.add_argument("--out", type=Path, default=REPO / "results" / "profile_inference.md")
    return p.parse_args(argv)


def _labelled(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with record_function(f"kronos::{label}"):
            return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def labels() -> Iterator[None]:
    """Wrap the engine's pieces in record_function labels for the duration of the block."""
    targets: list[tuple[Any, str, str]] = [
        (fused_step, "masked_attention", "attention"),
        (engine_mod, "masked_attention", "attention"),
        (engine_mod, "shared_prefix_attention", "attention"),
        (F, "scaled_dot_product_attention", "attention"),
        (fused_step, "rms_norm", "norms"),
        (fused_step, "_rotate", "rotary"),
        (fused_step, "_rotary_tables", "rotary"),
        (engine_mod._Sampler, "draw", "sampling"),
        (KronosEngine, "encode", "tokenizer (other)"),
        (KronosEngine, "decode_ids", "tokenizer (other)"),
        (KronosEngine, "fill_decoder_caches", "tokenizer (other)"),
        (KronosEngine, "_decode_horizon", "tokenizer (other)"),
    ]
    saved = []
    for owner, name, label in targets:
        if not hasattr(owner, name):
            continue
        original = getattr(owner, name)
        saved.append((owner, name, original))
        setattr(owner, name, _labelled(label, original))
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


def _category(event: Any) -> str | None:
    """The bucket of one profiled operator (None for the labels themselves)."""
    if event.name.startswith("kronos::"):
        return None
    if event.name in MATMUL_OPS:
        return "matrix products"
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("kronos::"):
            return parent.name.removeprefix("kronos::")
        parent = parent.cpu_parent
    return "other operators"


def _engine_options(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = {"true": True, "false": False}.get(value.lower(), int(value) if value.isdigit() else value)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    tokenizer, model = build_pair(args.preset, seed=0)
    engine = KronosEngine(model, tokenizer, max_context=512, **_engine_options(args.engine_option))
    rng = np.random.default_rng(0)
    xs = [np.clip(rng.standard_normal((args.context, 6)), -5, 5).astype(np.float32) for _ in range(args.batch)]
    minutes = np.arange(args.context + args.horizon) * 5
    stamp = np.stack([minutes % 60, (minutes // 60) % 24, (minutes // 1440) % 5, 1 + (minutes // 1440) % 28,
                      np.full_like(minutes, 6)], axis=1).astype(np.float32)
    x_st, y_st = [stamp[: args.context]] * args.batch, [stamp[args.context :]] * args.batch
    params = SamplingParams(T=1.0, top_k=0, top_p=0.9, sample_count=args.sample_count)
    seeds = list(range(args.batch))

    def call(stats: GenerationStats | None = None) -> None:
        engine.generate(xs, x_st, y_st, args.horizon, params, seeds=seeds, stats=stats)

    call()  # warm-up
    t0 = time.perf_counter()
    call()
    plain_s = time.perf_counter() - t0  # the same call without the profiler, for its overhead
    load_before = load_average()
    stats = GenerationStats()
    with labels(), profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        call(stats)
        wall_s = time.perf_counter() - t0
    load_after = load_average()

    by_cat: dict[str, float] = defaultdict(float)
    by_op: dict[str, float] = defaultdict(float)
    for ev in prof.events():
        cat = _category(ev)
        if cat is None:
            continue
        by_cat[cat] += ev.self_cpu_time_total / 1e6
        by_op[ev.name] += ev.self_cpu_time_total / 1e6
    ops_s = sum(by_cat.values())
    by_cat["python and dispatch"] = max(0.0, wall_s - ops_s)
    flops = exact_forecast_flops(model.config, tokenizer.config, args.context, args.horizon, args.sample_count)
    result = {
        "preset": args.preset, "context": args.context, "horizon": args.horizon, "batch": args.batch,
        "sample_count": args.sample_count, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "engine_options": _engine_options(args.engine_option),
        "loadavg_before": load_before, "loadavg_after": load_after,
        "wall_s_profiled": wall_s, "wall_s_unprofiled": plain_s,
        "stage_ms": stats.timings_ms,
        "gflop_per_call": args.batch * flops.total / 1e9,
        "categories_s": dict(sorted(by_cat.items(), key=lambda kv: -kv[1])),
        "top_operators_s": dict(sorted(by_op.items(), key=lambda kv: -kv[1])[:20]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# Profile of one exact forecast call ({args.preset}, batch {args.batch}, context {args.context}, "
        f"horizon {args.horizon}, {args.sample_count} path, {result['threads']} threads)",
        "",
        f"torch {torch.__version__}; engine options {result['engine_options'] or 'default'}; "
        f"loadavg {load_before} -> {load_after}.",
        f"Wall time {wall_s * 1e3:.0f} ms under the profiler, {plain_s * 1e3:.0f} ms without; "
        f"{result['gflop_per_call']:.1f} GFLOP in the call. Stages (ms): "
        + ", ".join(f"{k} {v:.0f}" for k, v in stats.timings_ms.items()),
        "",
        "| where | ms | share of wall |",
        "|---|---:|---:|",
    ]
    for cat, sec in result["categories_s"].items():
        lines.append(f"| {cat} | {sec * 1e3:.0f} | {sec / wall_s:.1%} |")
    lines += ["", "Top operators by own time:", "", "| operator | ms |", "|---|---:|"]
    for op, sec in result["top_operators_s"].items():
        lines.append(f"| `{op}` | {sec * 1e3:.1f} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written to {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
