"""What a challenger saves by taking the champion's context ids (exact mode, the tokenizer frozen).

One process, the bundled demo model (max_context 64, horizon 12, 4 sample paths, torch on 1 thread)
and ``--batch`` windows of the bundled real bars. The champion forecasts them once; then a challenger
(the demo predictor perturbed, the same tokenizer) forecasts the same windows in interleaved rounds,
encoding them itself and taking the champion's ids, as the daemon's challengers do between bursts
(docs/models/challengers.md). Prints the time per window of each and their ratio, checks that both
give the same forecasts, and writes results/bench_shared_context.json (``--out``).

    PYTHONPATH=. .venv/bin/python scripts/bench_shared_context.py [--batch 200] [--rounds 8]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kronos_core import Kronos, KronosEngine, KronosTokenizer, SamplingParams, SeriesWindow
from kronos_core.bench_efficiency import load_average
from kronos_core.streaming import StreamConfig, StreamingForecaster
from scripts.benchkit.demo import BARS_CSV, COLUMNS, DEMO_MODEL, REPO
from scripts.benchkit.timing import interleaved_rounds
from tests.support.hotswap import perturb_

MAX_CONTEXT, HORIZON = 64, 12


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=200, help="windows per call (default 200: a gap's call)")
    p.add_argument("--rounds", type=int, default=8, help="timed rounds of each (default 8)")
    p.add_argument("--out", type=Path, default=REPO / "results" / "bench_shared_context.json")
    args = p.parse_args(argv)
    if args.batch < 1 or args.rounds < 1:
        p.error("--batch and --rounds must be at least 1")
    return args


def windows(batch: int) -> list[SeriesWindow]:
    """``batch`` windows of the bundled bars ending at evenly spaced bars (wrapping around if needed)."""
    bars = pd.read_csv(BARS_CSV, parse_dates=["timestamps"])
    values, ts = bars[COLUMNS].to_numpy(np.float64), bars["timestamps"].to_numpy("datetime64[ns]")
    ends = np.linspace(MAX_CONTEXT, len(bars) - HORIZON - 1, batch).astype(int)
    return [
        SeriesWindow(f"S{k}", values[e - MAX_CONTEXT + 1 : e + 1], ts[e - MAX_CONTEXT + 1 : e + 1],
                     ts[e + 1 : e + 1 + HORIZON], seed=k)  # fmt: skip
        for k, e in enumerate(ends)
    ]


def forecaster(model: Kronos, tokenizer: KronosTokenizer, version: str) -> StreamingForecaster:
    engine = KronosEngine(model, tokenizer, device="cpu", max_context=MAX_CONTEXT)
    config = StreamConfig(mode="exact", sampling=SamplingParams(sample_count=4))
    return StreamingForecaster(engine, config, model_version=version)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(args, argv)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    tokenizer = KronosTokenizer.from_pretrained(DEMO_MODEL / "tokenizer")
    model = Kronos.from_pretrained(DEMO_MODEL / "predictor")
    tuned = perturb_(copy.deepcopy(model), 0.02, torch.Generator().manual_seed(2))
    champion, challenger = forecaster(model, tokenizer, "v1"), forecaster(tuned, tokenizer, "v2")
    ws = windows(args.batch)
    made = champion.forecast(ws, HORIZON)
    given = [dataclasses.replace(w, context_tokens=f.context_tokens) for w, f in zip(ws, made, strict=True)]
    same = all(
        np.array_equal(a.samples, b.samples)
        for a, b in zip(challenger.forecast(ws, HORIZON), challenger.forecast(given, HORIZON), strict=True)
    )
    shared = challenger.last_stats.given_tokens
    load_before = load_average()
    times = interleaved_rounds(
        {"encodes": lambda: challenger.forecast(ws, HORIZON), "takes_ids": lambda: challenger.forecast(given, HORIZON)},
        args.rounds,
    )
    per_window = {k: statistics.median(v) / args.batch * 1e3 for k, v in times.items()}
    report = {
        "command": "python scripts/bench_shared_context.py" + "".join(f" {a}" for a in (argv or [])),
        "settings": {"batch": args.batch, "rounds": args.rounds, "max_context": MAX_CONTEXT, "horizon": HORIZON,
                     "sample_count": 4, "threads": 1, "model": "demo"},  # fmt: skip
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "load_avg_before": load_before,
                    "load_avg_after": load_average()},  # fmt: skip
        "ms_per_window": {k: round(v, 3) for k, v in per_window.items()},
        "seconds_per_round": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "ratio_takes_ids_to_encodes": round(per_window["takes_ids"] / per_window["encodes"], 3),
        "context_tokens_taken_per_call": shared,
        "same_forecasts": same,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"challenger call of {args.batch} windows, median of {args.rounds} interleaved rounds: "
          f"{per_window['encodes']:.3f} ms per window encoding its contexts, {per_window['takes_ids']:.3f} ms "
          f"taking the champion's ids: ratio {report['ratio_takes_ids_to_encodes']}; same forecasts: {same}")  # fmt: skip
    print(f"wrote {args.out}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
