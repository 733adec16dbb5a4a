"""Tiny models and bar data for trainer tests; also a worker script (``python train_helpers.py ...``)
that the DDP and crash tests start plainly or under torchrun."""

from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path

import pandas as pd
import torch

from kronos_core import Kronos, KronosTokenizer, PredictorConfig, TokenizerConfig
from trainer.data import SymbolSeries, series_from_frame, walk_forward
from trainer.loop import (
    LoopConfig,
    PhaseConfig,
    Runtime,
    predictor_loss_ddp,
    run_loop,
    setup_distributed,
    teardown,
    wrap,
)

REPO = Path(__file__).resolve().parents[2]
BARS_CSV = REPO / "daemon" / "assets" / "bars_5min_a_share.csv"
TINY_TOKENIZER = TokenizerConfig(
    d_in=6, d_model=16, n_heads=2, ff_dim=32, n_enc_layers=2, n_dec_layers=2, s1_bits=4, s2_bits=4, group_size=4
)
TINY_PREDICTOR = PredictorConfig(
    s1_bits=4, s2_bits=4, n_layers=1, d_model=16, n_heads=2, ff_dim=32,
    ffn_dropout_p=0.0, attn_dropout_p=0.0, resid_dropout_p=0.0, token_dropout_p=0.0,
)
LOOKBACK, HORIZON = 24, 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_models(seed: int = 0) -> tuple[KronosTokenizer, Kronos]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return KronosTokenizer(TINY_TOKENIZER).eval(), Kronos(TINY_PREDICTOR).eval()


def save_tiny(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    tok, model = tiny_models(seed)
    return tok.save_pretrained(folder / "tokenizer"), model.save_pretrained(folder / "predictor")


def archive_frame(symbols: tuple[str, ...] = ("AAA", "BBB"), rows: int = 400) -> pd.DataFrame:
    """The bundled bars as an archive frame (symbol, ts UTC, open..amount), one copy per symbol
    (the second scaled so the symbols differ)."""
    df = pd.read_csv(BARS_CSV, parse_dates=["timestamps"]).tail(rows)
    frames = []
    for k, symbol in enumerate(symbols):
        f = df.rename(columns={"timestamps": "ts"}).copy()
        f["ts"] = f["ts"].dt.tz_localize("Asia/Shanghai").dt.tz_convert("UTC")
        for col in ("open", "high", "low", "close"):
            f[col] = f[col] * (1.0 + 0.5 * k)
        f.insert(0, "symbol", symbol)
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def tiny_series() -> list[SymbolSeries]:
    return series_from_frame(archive_frame())


def loop_config(steps: int, *, lr: float = 1e-3, batch_size: int = 4, save_every: int = 1000,
                teacher_forcing: bool = True) -> LoopConfig:
    return LoopConfig(
        lookback=LOOKBACK, batch_size=batch_size, seed=0, save_every=save_every, log_every=1000, progress="log",
        teacher_forcing=teacher_forcing,
        phases=[PhaseConfig("predictor", steps, lr, 0.0, 0, 1.0, 1e9)],
    )


def first_step_grads(runtime: Runtime, rows: slice) -> dict[str, torch.Tensor]:
    """Gradients after one backward through the DDP wrapper on training windows ``rows`` (fixed)."""
    tok, model = tiny_models()
    split = walk_forward(tiny_series(), LOOKBACK, HORIZON, 0.2)
    xs, stamps = zip(*(split.train[i] for i in range(rows.start, rows.stop)), strict=True)
    model.train()
    ddp = wrap(model, runtime)
    loss, _ = predictor_loss_ddp(ddp, tok, torch.stack(xs), torch.stack(stamps), LOOKBACK, teacher_forcing=True)
    loss.backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def main() -> int:
    """Train the tiny predictor for --steps on the bundled bars; rank 0 writes its parameters."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--save-every", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--step-file", type=Path, help="append each finished step here (crash tests)")
    parser.add_argument("--grad-rows", type=int, default=0, help="first save first-step gradients of N rows per rank")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runtime = setup_distributed("cpu")
    try:
        if args.grad_rows:
            n = args.grad_rows
            grads = first_step_grads(runtime, slice(runtime.rank * n, (runtime.rank + 1) * n))
            torch.save(grads, args.out / f"grads-rank{runtime.rank}.pt")
        tok, model = tiny_models()
        split = walk_forward(tiny_series(), LOOKBACK, HORIZON, 0.2)
        cfg = loop_config(args.steps, batch_size=args.batch_size, save_every=args.save_every)

        def after(step: int) -> None:
            if args.step_file and runtime.is_main:
                with open(args.step_file, "a") as f:
                    f.write(f"{step}\n")

        result = run_loop(tok, model, split.train, cfg, runtime, work_dir=args.work_dir, fingerprint="test",
                          after_step=after)
        params = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save(params, args.out / f"params-rank{runtime.rank}.pt")
        if runtime.is_main:
            (args.out / "result.json").write_text(json.dumps(
                {"resumed_from": result.resumed_from, "history": result.history, "world": runtime.world}))
    finally:
        teardown(runtime)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
