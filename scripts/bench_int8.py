"""int8 dynamic quantization (opt-in) against float32: what it changes in the forecasts, what it saves.

Two measurements, one process:

- *fidelity*, on a trained model (the demo checkpoint, ``daemon/assets/demo-model``) over windows of
  the bundled 5-minute bars (``--series`` windows of ``max_context - horizon`` bars): greedy decoding
  with and without ``quantize="int8"`` on the same inputs (token agreement, steps before the first s1
  token differs, forecast gap in normalised units, first-step logit error; see
  ``kronos_core.bench.greedy_agreements``), and the sampled mean forecast (8 paths, the same seeds)
  of both against the realised bars: close MAE in price units, and the gap between the two forecasts.
  Random-weight models are not used for this: their logits are near-ties everywhere, so any rounding
  flips tokens and says nothing about a trained model.
- *speed*, on the Kronos-small shape (random weights; only the cost matters): exact forecasts of a
  batch, float32 and int8 engines interleaved, fastest and median rounds.

Writes ``--out`` (JSON, default ``results/int8.json``) and a Markdown summary beside it, with
``/proc/loadavg``. Run: ``PYTHONPATH=. .venv/bin/python scripts/bench_int8.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from kronos_core import Kronos, KronosTokenizer
from kronos_core.bench import greedy_agreements
from kronos_core.bench_efficiency import load_average
from kronos_core.engine import KronosEngine, SamplingParams
from kronos_core.preprocess import denormalize, normalize, time_features
from kronos_core.presets import build_pair
from scripts.benchkit.demo import BARS_CSV, COLUMNS
from scripts.benchkit.demo import DEMO_MODEL as MODEL
from scripts.benchkit.timing import interleaved_rounds

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--series", type=int, default=64)
    p.add_argument("--horizon", type=int, default=12)
    p.add_argument("--max-context", type=int, default=128)
    p.add_argument("--paths", type=int, default=8)
    p.add_argument("--speed-batch", type=int, default=8)
    p.add_argument("--speed-rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "results" / "int8.json")
    return p.parse_args(argv)


def fidelity(args: argparse.Namespace) -> dict[str, Any]:
    tokenizer = KronosTokenizer.from_pretrained(MODEL / "tokenizer")
    model = Kronos.from_pretrained(MODEL / "predictor")
    bars = pd.read_csv(BARS_CSV, parse_dates=["timestamps"])
    lookback = args.max_context - args.horizon
    room = len(bars) - lookback - args.horizon
    xs, x_st, y_st, stats, realised = [], [], [], [], []
    for i in range(args.series):
        start = (37 * i) % room
        ctx = bars.iloc[start : start + lookback]
        fut = bars.iloc[start + lookback : start + lookback + args.horizon]
        x, mean, std = normalize(ctx[COLUMNS].to_numpy(np.float64))
        xs.append(x)
        stats.append((mean, std))
        x_st.append(time_features(ctx["timestamps"]))
        y_st.append(time_features(fut["timestamps"]))
        realised.append(fut["close"].to_numpy(np.float64))
    ns = argparse.Namespace(device="cpu", max_context=args.max_context, horizon=args.horizon)
    greedy = greedy_agreements(ns, model, tokenizer, {"int8": {"quantize": "int8"}}, xs, x_st, y_st)["int8"]
    params = SamplingParams(sample_count=args.paths)
    seeds = list(range(args.series))
    closes = {}
    for name, kwargs in (("float32", {}), ("int8", {"quantize": "int8"})):
        eng = KronosEngine(model, tokenizer, max_context=args.max_context, **kwargs)  # type: ignore[arg-type]
        paths = eng.generate(xs, x_st, y_st, args.horizon, params, seeds=seeds)  # [B, S, H, 6]
        closes[name] = np.stack([
            denormalize(paths[b].mean(axis=0), *stats[b])[:, 3] for b in range(args.series)
        ])  # [B, H]
    truth = np.stack(realised)
    scale = np.abs(truth).mean()
    return {
        "model": "demo (daemon/assets/demo-model)",
        "series": args.series, "horizon": args.horizon, "max_context": args.max_context, "paths": args.paths,
        "greedy": greedy,
        "sampled_close_mae": {k: float(np.abs(v - truth).mean()) for k, v in closes.items()},
        "sampled_close_gap_mean_abs": float(np.abs(closes["int8"] - closes["float32"]).mean()),
        "sampled_close_gap_rel_to_price": float(np.abs(closes["int8"] - closes["float32"]).mean() / scale),
    }


def speed(args: argparse.Namespace) -> dict[str, Any]:
    tokenizer, model = build_pair("Kronos-small")
    engines = {"float32": KronosEngine(model, tokenizer), "int8": KronosEngine(model, tokenizer, quantize="int8")}
    rng = np.random.default_rng(0)
    b, ctx, hz = args.speed_batch, 400, 30
    xs = [np.clip(rng.standard_normal((ctx, 6)), -5, 5).astype(np.float32) for _ in range(b)]
    minutes = np.arange(ctx + hz) * 5
    st = np.stack([minutes % 60, (minutes // 60) % 24, (minutes // 1440) % 5, 1 + (minutes // 1440) % 28,
                   np.full_like(minutes, 6)], axis=1).astype(np.float32)
    params = SamplingParams()
    times = interleaved_rounds(
        {name: lambda eng=eng: eng.generate(xs, [st[:ctx]] * b, [st[ctx:]] * b, hz, params, seeds=list(range(b)))
         for name, eng in engines.items()},
        args.speed_rounds,
    )  # fmt: skip
    return {
        "shape": f"Kronos-small (random weights), batch {b}, context {ctx}, horizon {hz}, 1 path",
        "seconds": times,
        "forecasts_per_s_median": {k: b / statistics.median(v) for k, v in times.items()},
        "speedup_median": statistics.median(times["float32"]) / statistics.median(times["int8"]),
        "speedup_fastest": min(times["float32"]) / min(times["int8"]),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    before = load_average()
    result = {"threads": args.threads, "torch": torch.__version__, "loadavg_before": before,
              "fidelity": fidelity(args), "speed": speed(args), "loadavg_after": load_average()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    f, s, g = result["fidelity"], result["speed"], result["fidelity"]["greedy"]
    lines = [
        "# int8 dynamic quantization (opt-in) against float32",
        "",
        f"torch {torch.__version__}, {args.threads} threads; loadavg {before} -> {result['loadavg_after']}. "
        "Command: `PYTHONPATH=. .venv/bin/python scripts/bench_int8.py`.",
        "",
        f"**Fidelity** ({f['model']}, {f['series']} windows of the bundled bars, context {args.max_context - args.horizon}, "
        f"horizon {args.horizon}):",
        "",
        f"- greedy: s1 tokens agree {g['s1_token_agreement']:.1%}, s2 {g['s2_token_agreement']:.1%}; "
        f"first s1 difference after {g['mean_steps_before_first_s1_divergence']:.1f} steps on average; "
        f"context tokens (tokenizer) agree {g['context_s1_token_agreement']:.1%} / {g['context_s2_token_agreement']:.1%}; "
        f"first-step s1 logits move by {g['first_step_s1_logits_rel_error']:.1%} (relative norm); "
        f"forecast gap {g['forecast_mean_abs_diff_normalised']:.3f} in normalised units.",
        f"- sampled mean of {f['paths']} paths (same seeds): close MAE against the realised bars "
        f"{f['sampled_close_mae']['float32']:.4f} (float32) vs {f['sampled_close_mae']['int8']:.4f} (int8); "
        f"the two forecasts differ by {f['sampled_close_gap_mean_abs']:.4f} on average "
        f"({f['sampled_close_gap_rel_to_price']:.2%} of the price).",
        "",
        f"**Speed** ({s['shape']}, interleaved rounds): float32 {s['forecasts_per_s_median']['float32']:.2f} "
        f"forecasts/s, int8 {s['forecasts_per_s_median']['int8']:.2f} (medians); int8 is "
        f"{s['speedup_median']:.2f}x (medians), {s['speedup_fastest']:.2f}x (fastest rounds).",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
