"""SIGKILL during training, then a restart: it resumes from the saved step and ends where an
uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from trainer.loop import STATE_NAME

HELPER = Path(__file__).with_name("train_helpers.py")
REPO = HELPER.parents[2]
STEPS, SAVE_EVERY = 14, 4


def _train(work: Path, out: Path, step_file: Path | None = None) -> subprocess.Popen[bytes]:
    out.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, str(HELPER), "--steps", str(STEPS), "--save-every", str(SAVE_EVERY),
            "--work-dir", str(work), "--out", str(out)]
    if step_file is not None:
        args += ["--step-file", str(step_file)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_then_restart_resumes_from_the_saved_step(tmp_path: Path) -> None:
    work, steps = tmp_path / "work", tmp_path / "steps.txt"
    proc = _train(work, tmp_path / "killed", steps)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        done = steps.read_text().split() if steps.exists() else []
        if len(done) >= 2 * SAVE_EVERY + 1 or proc.poll() is not None:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    saved = torch.load(work / STATE_NAME, weights_only=True)
    assert SAVE_EVERY <= saved["step"] < STEPS and saved["step"] % SAVE_EVERY == 0
    assert {"model", "tokenizer", "optimizer", "scheduler", "rng"} <= saved.keys()

    restarted = _train(work, tmp_path / "resumed")
    _, err = restarted.communicate(timeout=300)
    assert restarted.returncode == 0, err.decode()[-2000:]
    result = json.loads((tmp_path / "resumed" / "result.json").read_text())
    assert result["resumed_from"] == saved["step"]
    assert [h["step"] for h in result["history"]] == list(range(saved["step"] + 1, STEPS + 1))

    straight = _train(tmp_path / "work2", tmp_path / "straight")
    _, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err.decode()[-2000:]
    a = torch.load(tmp_path / "resumed" / "params-rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "straight" / "params-rank0.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same data stream and random draws
