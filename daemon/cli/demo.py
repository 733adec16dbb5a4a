"""``kronos-stream demo``: the daemon on the bundled real bars with the demo model."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="the daemon on the bundled real bars with the demo model: no Kafka, no Redis",
        description=(
            "Replays the bundled five-minute bars (Asia/Shanghai local times, sent as UTC) through the "
            "daemon with an in-memory bus and state store and the project's demo model (max_context 128, "
            "horizon 12). First --warmup bars are published and their forecasts consumed without printing, "
            "so the replayed bars see a full context; then the last --bars bars of the file are replayed "
            "and each forecast is printed as it arrives. Halfway (unless --no-retrain) the bars seen so far are "
            "archived, the model fine-tuned on them, gated and published to a temporary registry that the "
            "daemon follows: it hot-swaps to the new version if the gate passed. At the end: a summary (throughput, close MAE of the "
            "next-bar and horizon-end forecasts against the realised bars and against persistence), a PNG "
            "(--out) and the summary as JSON beside it. Daemon logs: warnings only, on stderr. KRONOS_* "
            "variables the demo does not set itself apply (e.g. KRONOS_MODEL__DEVICE, KRONOS_MODEL__THREADS, "
            "default 1 here; KRONOS_DRIFT_SIGMA)."
        ),
    )
    demo.add_argument(
        "--bars", type=int, default=240, help="replay the last N bars of the file (default 240)"
    )
    demo.add_argument(
        "--warmup", type=int, help="bars published before them, not printed (default: max_context, 128)"
    )
    demo.add_argument(
        "--mode", choices=["exact", "incremental"], default="incremental", help="default incremental"
    )
    demo.add_argument(
        "--speed",
        type=float,
        default=0.0,
        help="multiple of real time, market breaks and nights included; 0 = as fast as possible (default)",
    )
    demo.add_argument("--samples", type=int, default=16, help="sample paths per forecast (default 16)")
    demo.add_argument(
        "--no-calibration",
        dest="calibrate",
        action="store_false",
        help="publish the model's bands as they are (both are scored either way)",
    )
    demo.add_argument("--symbol", default="DEMO", help="symbol the bars are sent under (default DEMO)")
    demo.add_argument(
        "--no-retrain",
        action="store_true",
        help="skip the act halfway (archive the bars seen, fine-tune, gate, publish, hot-swap)",
    )
    demo.add_argument(
        "--out", type=Path, default=Path("results/demo.png"), help="the PNG; the JSON goes beside it"
    )


def run(args: Any) -> int:
    from daemon.demo.config import DemoConfig
    from daemon.demo.replay import main as demo_main

    return demo_main(
        DemoConfig(
            bars=args.bars,
            warmup=args.warmup,
            mode=args.mode,
            speed=args.speed,
            out=args.out,
            symbol=args.symbol,
            sample_count=args.samples,
            calibrate=args.calibrate,
            retrain=not args.no_retrain,
        )
    )
