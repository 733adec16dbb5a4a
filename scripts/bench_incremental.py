"""Incremental vs exact streaming: model time per bar at full context, one batch of series.

A randomly initialised model of a ``kronos_core`` preset (default Kronos-small, the shapes that
matter for the cost), ``--batch`` series that each get one new bar per call, ``--paths`` sample
paths, horizon ``--horizon``, ``max_context`` 512. The series are windows of the bundled 5-minute
bars at different offsets (the weights are random, so only the cost is measured here; the error of
each mode against the realised bars comes from ``scripts/compare_modes.py`` with the demo model).

- ``exact``: every call prefills the last ``max_context - horizon`` bars of every series.
The calls are interleaved (exact, append, exact, append, ...) after the incremental cold start, so a
drift of the machine's load touches both modes alike.

- ``incremental``: the first call is a cold start (a refresh of every series: the last
  ``max_context - horizon - refresh_every`` bars encoded and prefilled into the session pool); each
  following call appends one bar per series (one encoder, predictor and decoder step for the
  batch) and runs the horizon. A last call drops the token caches, so every series refreshes in a
  warm process: a scheduled refresh does that work every ``refresh_every + 1`` bars, so the
  amortised cost per bar is ``(refresh + refresh_every * append) / (refresh_every + 1)``.

Writes ``--out`` (JSON, default ``results/bench_incremental.json``) and a Markdown table beside it,
and prints the ratios of the one run. Run: ``python scripts/bench_incremental.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from kronos_core import KronosEngine, SamplingParams, build_pair
from kronos_core.stream_types import SeriesWindow, StreamMode, TokenState, derive_seed
from kronos_core.streaming import StreamConfig, StreamingForecaster

REPO = Path(__file__).resolve().parents[1]
BARS_CSV = REPO / "daemon" / "assets" / "bars_5min_a_share.csv"
COLUMNS = ["open", "high", "low", "close", "volume", "amount"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="Kronos-small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--paths", type=int, default=8)
    parser.add_argument("--horizon", type=int, default=12)
    parser.add_argument("--max-context", type=int, default=512)
    parser.add_argument("--refresh-every", type=int, default=StreamConfig.refresh_every)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds: one exact call, one append")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench_incremental.json")
    return parser.parse_args(argv)


class Feed:
    """``batch`` series: the bundled bars at different offsets, one more bar per call."""

    def __init__(self, batch: int, context: int, horizon: int, calls: int) -> None:
        bars = pd.read_csv(BARS_CSV, parse_dates=["timestamps"])
        self.values = bars[COLUMNS].to_numpy(np.float64)
        self.ts = bars["timestamps"].to_numpy("datetime64[ns]")
        room = len(bars) - context - horizon - calls
        if room < 1:
            raise SystemExit(f"the bundled bars ({len(bars)}) are too few for context {context} + {calls} calls")
        self.starts = [(17 * i) % room for i in range(batch)]
        self.context, self.horizon = context, horizon
        self.states: dict[str, TokenState | None] = {}

    def windows(self, call: int) -> list[SeriesWindow]:
        out = []
        for j, s in enumerate(self.starts):
            sid, end = f"S{j:04d}", s + self.context + call  # the window's last bar is end - 1
            out.append(SeriesWindow(
                sid, self.values[end - self.context : end], self.ts[end - self.context : end],
                self.ts[end : end + self.horizon], seed=derive_seed(sid, int(self.ts[end - 1].astype(np.int64)), "b"),
                token_state=self.states.get(sid),
            ))
        return out


def timed_call(fc: StreamingForecaster, feed: Feed, call: int, horizon: int) -> dict[str, Any]:
    windows = feed.windows(call)
    t0 = time.perf_counter()
    results = fc.forecast(windows, horizon)
    ms = (time.perf_counter() - t0) * 1e3
    for r in results:
        feed.states[r.series_id] = r.token_state
    st = fc.last_stats
    return {
        "ms": round(ms, 1),
        "stages_ms": {k: round(v, 1) for k, v in sorted(st.timings_ms.items())},
        "tokens": {"encode": st.encode_tokens, "prefill": st.prefill_tokens, "step": st.step_tokens,
                   "decode": st.decode_tokens},
        "sessions_moved": getattr(st, "sessions_moved", None),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer, model = build_pair(args.preset, seed=0)
    engine = KronosEngine(model, tokenizer, device="cpu", max_context=args.max_context)
    sampling = SamplingParams(T=1.0, top_p=0.9, sample_count=args.paths)
    modes: tuple[StreamMode, ...] = ("exact", "incremental")
    fcs = {m: StreamingForecaster(engine, StreamConfig(mode=m, sampling=sampling, refresh_every=args.refresh_every),
                                  model_version="bench") for m in modes}
    feeds = {m: Feed(args.batch, args.max_context, args.horizon, args.rounds + 1) for m in modes}
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}

    def call(mode: StreamMode, index: int) -> None:
        runs[mode].append(timed_call(fcs[mode], feeds[mode], index, args.horizon))
        print(f"{mode} call {index}: {runs[mode][-1]['ms']:.0f} ms", file=sys.stderr)

    call("incremental", 0)  # the cold start: every series refreshed (and the session pool allocated)
    for r in range(args.rounds):  # interleaved, so the machine's load drifts over both modes alike
        call("exact", r)
        call("incremental", r + 1)
    feeds["incremental"].states.clear()  # a refresh of every series in a warm process: what a scheduled one costs
    call("incremental", args.rounds + 1)

    exact_ms = float(np.mean([r["ms"] for r in runs["exact"]]))
    cold_ms, refresh_ms = runs["incremental"][0]["ms"], runs["incremental"][-1]["ms"]
    append_ms = float(np.mean([r["ms"] for r in runs["incremental"][1:-1]]))
    amortised_ms = (refresh_ms + args.refresh_every * append_ms) / (args.refresh_every + 1)
    figures: dict[str, Any] = {
        "command": " ".join(["python scripts/bench_incremental.py", *(sys.argv[1:] if argv is None else argv)]),
        "settings": {
            "preset": args.preset, "weights": "random (build_pair seed 0)", "batch": args.batch,
            "paths": args.paths, "horizon": args.horizon, "max_context": args.max_context,
            "exact_lookback": args.max_context - args.horizon,
            "refresh_every": args.refresh_every, "device": "cpu", "torch_threads": torch.get_num_threads(),
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}; shared with other jobs",
        },
        "calls": runs,
        "per_call_ms": {
            "exact": round(exact_ms, 1), "incremental_append": round(append_ms, 1),
            "incremental_cold_start": round(cold_ms, 1), "incremental_refresh": round(refresh_ms, 1),
            "incremental_amortised": round(amortised_ms, 1),
        },
        "per_series_bar_ms": {
            "exact": round(exact_ms / args.batch, 2), "incremental_append": round(append_ms / args.batch, 2),
            "incremental_amortised": round(amortised_ms / args.batch, 2),
        },
        "exact_over_incremental": {
            "append": round(exact_ms / append_ms, 2), "amortised": round(exact_ms / amortised_ms, 2),
            "append_paired": [round(e["ms"] / a["ms"], 2) for e, a in zip(runs["exact"], runs["incremental"][1:-1],
                                                                          strict=True)],
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(figures))
    print(json.dumps({k: figures[k] for k in ("per_call_ms", "exact_over_incremental")}, indent=2))
    return 0


def markdown(f: dict[str, Any]) -> str:
    s, pc, pb, r = f["settings"], f["per_call_ms"], f["per_series_bar_ms"], f["exact_over_incremental"]

    def stages(mode: str, i: int) -> str:
        return ", ".join(f"{k} {v:.0f}" for k, v in f["calls"][mode][i]["stages_ms"].items())

    return "\n".join([
        "# Incremental vs exact: model time per bar",
        "",
        f"{s['preset']} shapes ({s['weights']}), batch {s['batch']}, {s['paths']} paths, horizon {s['horizon']}, "
        f"max_context {s['max_context']}, refresh_every {s['refresh_every']}, CPU, {s['torch_threads']} threads "
        f"({s['machine']}). Command: `{f['command']}`.",
        "",
        "| mode | ms per call (batch) | ms per series and bar | exact / this |",
        "|---|---:|---:|---:|",
        f"| exact (prefill {s['exact_lookback']} bars) | {pc['exact']:.0f} | {pb['exact']:.1f} | 1.00x |",
        f"| incremental, append | {pc['incremental_append']:.0f} | {pb['incremental_append']:.1f} | {r['append']:.2f}x |",
        f"| incremental, refresh of every series | {pc['incremental_refresh']:.0f} | | |",
        f"| incremental, cold start (first call of the process) | {pc['incremental_cold_start']:.0f} | | |",
        f"| incremental, amortised over a refresh cycle | {pc['incremental_amortised']:.0f} | "
        f"{pb['incremental_amortised']:.1f} | {r['amortised']:.2f}x |",
        "",
        "Exact / append per round (interleaved): " + ", ".join(f"{x:.2f}x" for x in r["append_paired"]) + ".",
        "",
        f"Stages (ms) of one exact call: {stages('exact', -1)}; of one append: {stages('incremental', -2)}; "
        f"of the refresh: {stages('incremental', -1)}.",
        "",
    ])


if __name__ == "__main__":
    raise SystemExit(main())
