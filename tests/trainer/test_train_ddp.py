"""DDP equivalence: two gloo processes on CPU against one process on the concatenated batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.trainer.train_helpers import first_step_grads, free_port, tiny_models
from trainer.loop import setup_distributed, teardown

HELPER = Path(__file__).with_name("train_helpers.py")
REPO = HELPER.parents[2]
ROWS = 3  # windows per rank


def torchrun(nproc: int, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           f"--master-port={free_port()}", str(HELPER), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_gloo_ranks_match_one_process_on_the_concatenated_batch(tmp_path: Path) -> None:
    torchrun(2, "--steps", "4", "--grad-rows", str(ROWS), "--work-dir", str(tmp_path / "work"),
             "--out", str(tmp_path))
    runtime = setup_distributed("cpu")  # a group of one: the same DDP wrapper, the whole batch
    try:
        single = first_step_grads(runtime, slice(0, 2 * ROWS))
    finally:
        teardown(runtime)
    rank0 = torch.load(tmp_path / "grads-rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "grads-rank1.pt", weights_only=True)
    assert rank0.keys() == single.keys() and len(single) > 10
    for name, grad in single.items():
        assert torch.equal(rank0[name], rank1[name]), name  # all-reduced: the same on both ranks
        assert torch.allclose(rank0[name], grad, rtol=1e-4, atol=1e-6), name
    assert any(g.abs().sum() > 0 for g in single.values())
    # after k optimiser steps every rank holds the very same parameters
    p0 = torch.load(tmp_path / "params-rank0.pt", weights_only=True)
    p1 = torch.load(tmp_path / "params-rank1.pt", weights_only=True)
    assert all(torch.equal(p0[k], p1[k]) for k in p0)
    _, model_init = tiny_models()
    assert any(not torch.equal(p0[k], v) for k, v in model_init.state_dict().items())  # it did train
