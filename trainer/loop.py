"""The training loop: plain or under ``torchrun``, always through DistributedDataParallel.

- Process group: ``torchrun`` sets RANK/WORLD_SIZE/LOCAL_RANK (gloo on CPU, nccl on CUDA); a plain
  run makes a one-process gloo group, so the forward goes through the DDP wrapper either way.
- Optional tokenizer phase (``tokenizer_steps``), then the predictor on the frozen tokenizer's
  tokens; AdamW, linear warm-up then cosine decay, gradient-norm clipping, bf16 autocast on CUDA.
- RNG: before every step each rank reseeds from ``(seed, rank, step)`` (dropout, the s1 draws that
  condition s2); data order comes from :class:`trainer.data.RankSampler` ``(seed, epoch)``. The
  step number therefore *is* the random state, and a resumed run replays the same stream.
- State: every ``save_every`` steps and at the end rank 0 writes ``<work_dir>/state.pt`` (weights,
  optimizer, scheduler, step, settings fingerprint; tensors and plain containers only, loaded with
  ``weights_only=True``) to a temp name, fsyncs and renames it. A restarted run continues from it.
- Only rank 0 logs and saves.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from kronos_core.model import Kronos, dual_cross_entropy
from kronos_core.tokenizer import KronosTokenizer
from kronos_core.training import make_optimizer
from trainer.data import RankSampler, WindowSet, derive, position, steps_per_epoch, worker_seed

log = structlog.get_logger("kronos.trainer")

STATE_NAME = "state.pt"
STATE_FORMAT = "kronos-stream/train-state/1"


class ResumeError(RuntimeError):
    """The work folder holds a state that does not belong to this run."""


# ----------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Runtime:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    owns_group: bool  # this code created the process group (and destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> Runtime:
    """Join the torchrun group (or make a one-process gloo group) and pick this rank's device."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device cuda requested but torch sees no CUDA device; use --device cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        if "MASTER_ADDR" in os.environ and world > 1:
            dist.init_process_group(backend, rank=rank, world_size=world)
        else:  # a plain run: a group of one, so the forward still goes through DDP
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        owns = True
    return Runtime(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns)


def teardown(runtime: Runtime) -> None:
    if runtime.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, runtime: Runtime) -> DDP:
    ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return DDP(module, device_ids=ids)


# ----------------------------------------------------------------------------- losses through the wrapper


def predictor_loss_ddp(
    ddp: nn.Module,
    tokenizer: KronosTokenizer,
    x: Tensor,  # [B, W, 6] normalised with lookback-only statistics
    stamp: Tensor,  # [B, W, 5]
    lookback: int,
    *,
    teacher_forcing: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Dual cross-entropy of the horizon tokens only (targets at rows ``>= lookback``)."""
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):  # tokens as at inference (fp32)
        s1, s2 = tokenizer.encode(x, half=True)  # the tokenizer is causal: row t sees rows <= t
    s1_logits, s2_logits = ddp(
        s1[:, :-1], s2[:, :-1], stamp[:, :-1],
        use_teacher_forcing=teacher_forcing, s1_targets=s1[:, 1:], generator=generator,
    )
    ignore = torch.zeros(s1.shape[0], s1.shape[1] - 1, dtype=torch.bool, device=x.device)
    ignore[:, : lookback - 1] = True  # logits row j predicts row j + 1; keep targets j + 1 >= lookback
    loss, ce_s1, ce_s2 = dual_cross_entropy(s1_logits.float(), s2_logits.float(), s1[:, 1:], s2[:, 1:], ignore)
    return loss, {"ce_s1": ce_s1.item(), "ce_s2": ce_s2.item()}


def tokenizer_loss_ddp(ddp: nn.Module, x: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Upstream's tokenizer objective, through the wrapper."""
    (z_pre, z), bsq, _, _ = ddp(x)
    recon_pre = torch.nn.functional.mse_loss(z_pre.float(), x)
    recon = torch.nn.functional.mse_loss(z.float(), x)
    return (recon_pre + recon + bsq) / 2, {"recon_pre": recon_pre.item(), "recon": recon.item()}


# ----------------------------------------------------------------------------- schedule and state


def lr_factor(step: int, *, steps: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class PhaseConfig:
    name: str  # "tokenizer" or "predictor"
    steps: int
    lr: float
    weight_decay: float
    warmup: int
    min_lr_ratio: float
    grad_clip: float


@dataclass
class Phase:
    config: PhaseConfig
    module: nn.Module
    ddp: DDP
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR


def make_phase(config: PhaseConfig, module: nn.Module, runtime: Runtime) -> Phase:
    module.train()
    module.requires_grad_(True)
    ddp = wrap(module, runtime)
    optimizer = make_optimizer(module, config.lr, config.weight_decay)
    schedule = functools.partial(lr_factor, steps=config.steps, warmup=min(config.warmup, config.steps),
                                 min_ratio=config.min_lr_ratio)
    return Phase(config, module, ddp, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule))


def save_state(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` durably: temp file, fsync, rename, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_state(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The saved state of this run, or None if there is none. A state of another run (other
    settings, data, starting model or world size) is ignored, with a warning, and overwritten by
    this run's first save; a file that is not a training state is an error."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ResumeError(f"{path} is not a kronos-stream training state; remove it or use another --work-dir")
    if state.get("fingerprint") != fingerprint:
        log.warning("train_state_of_another_run", state=str(path), saved=state.get("fingerprint"),
                    current=fingerprint, step=state.get("step"), action="starting from step 0")
        return None
    return state


# ----------------------------------------------------------------------------- progress


class Progress:
    """A one-line bar on a terminal (rank 0), structlog lines otherwise."""

    def __init__(self, total: int, mode: str, every: int, enabled: bool) -> None:
        self.total, self.every, self.enabled = total, every, enabled
        self.bar = enabled and (mode == "bar" or (mode == "auto" and sys.stderr.isatty()))
        self.t0 = time.monotonic()
        self.samples = 0

    def update(self, step: int, phase: str, metrics: dict[str, float], samples: int, start_step: int) -> None:
        self.samples += samples
        if not self.enabled:
            return
        elapsed = max(1e-9, time.monotonic() - self.t0)
        rate = self.samples / elapsed
        done = step - start_step
        eta = elapsed / max(1, done) * (self.total - step)
        if self.bar:
            width = 30
            filled = int(width * step / max(1, self.total))
            sys.stderr.write(
                f"\r{phase:9s} [{'#' * filled}{'.' * (width - filled)}] {step}/{self.total} "
                f"loss {metrics['loss']:.4f} {rate:7.1f} samples/s ETA {eta:5.0f}s"
            )
            if step == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif step % self.every == 0 or step == self.total:
            log.info("train_step", phase=phase, step=step, steps=self.total, loss=round(metrics["loss"], 5),
                     lr=metrics.get("lr"), grad_norm=round(metrics.get("grad_norm", math.nan), 4),
                     samples_per_s=round(rate, 2), eta_s=round(eta, 1))


# ----------------------------------------------------------------------------- the loop


@dataclass
class LoopConfig:
    lookback: int
    batch_size: int
    seed: int
    save_every: int
    log_every: int
    progress: str = "auto"
    num_workers: int = 0
    bf16: bool = True
    teacher_forcing: bool = False
    phases: list[PhaseConfig] = field(default_factory=list)


@dataclass
class LoopResult:
    steps: dict[str, int]
    resumed_from: int
    history: list[dict[str, Any]]
    wall_s: float
    samples: int  # windows processed by all ranks in this process's run (not the resumed part)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.wall_s if self.wall_s > 0 else math.nan


def _batches(data: WindowSet, runtime: Runtime, cfg: LoopConfig, per_epoch: int, step: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches of this rank from global phase step ``step`` on, across epochs."""
    epoch, skip = position(step, per_epoch)
    while True:
        sampler = RankSampler(len(data), rank=runtime.rank, world=runtime.world, batch_size=cfg.batch_size,
                              seed=cfg.seed, epoch=epoch, skip=skip * cfg.batch_size)
        loader = DataLoader(
            data, batch_size=cfg.batch_size, sampler=sampler, drop_last=True, num_workers=cfg.num_workers,
            worker_init_fn=functools.partial(_seed_worker, cfg.seed, runtime.rank, epoch) if cfg.num_workers else None,
            persistent_workers=False,
        )
        yield from loader
        epoch, skip = epoch + 1, 0


def _agreed_step(step: int, runtime: Runtime) -> int:
    """Every rank must resume from the same step (the work folder must be shared by all ranks)."""
    if runtime.world == 1:
        return step
    steps = [torch.zeros(1, dtype=torch.int64, device=runtime.device) for _ in range(runtime.world)]
    dist.all_gather(steps, torch.tensor([step], dtype=torch.int64, device=runtime.device))
    seen = sorted({int(s.item()) for s in steps})
    if len(seen) > 1:
        raise ResumeError(f"ranks found different saved steps {seen}: give all ranks the same --work-dir")
    return step


def _seed_worker(seed: int, rank: int, epoch: int, worker: int) -> None:
    torch.manual_seed(worker_seed(seed, rank, epoch, worker))


def _autocast(runtime: Runtime, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    if runtime.device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_loop(
    tokenizer: KronosTokenizer,
    model: Kronos,
    train: WindowSet,
    cfg: LoopConfig,
    runtime: Runtime,
    *,
    work_dir: Path,
    fingerprint: str,
    after_step: Callable[[int], None] | None = None,
) -> LoopResult:
    """Run every phase of ``cfg.phases`` (resuming from ``work_dir``); modules end in eval mode."""
    tokenizer.to(runtime.device)
    model.to(runtime.device)
    per_epoch = steps_per_epoch(len(train), runtime.world, cfg.batch_size)
    total = sum(p.steps for p in cfg.phases)
    state_path = work_dir / STATE_NAME
    state = load_state(state_path, fingerprint)
    done = _agreed_step(int(state["step"]) if state else 0, runtime)
    if state:
        tokenizer.load_state_dict(state["tokenizer"])
        model.load_state_dict(state["model"])
        if runtime.is_main:
            log.info("train_resumed", step=done, steps=total, state=str(state_path))
    progress = Progress(total, cfg.progress, cfg.log_every, runtime.is_main)
    history: list[dict[str, Any]] = []
    t0 = time.monotonic()
    samples = 0
    offset = 0  # global step at which the current phase starts
    tokenizer.requires_grad_(False)
    model.requires_grad_(False)
    devices = [runtime.device.index or 0] if runtime.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # the per-step reseeding stays inside the loop
        for pc in cfg.phases:
            if done >= offset + pc.steps:
                offset += pc.steps
                continue
            module: nn.Module = tokenizer if pc.name == "tokenizer" else model
            phase = make_phase(pc, module, runtime)
            if state and state.get("phase") == pc.name and done > offset:
                phase.optimizer.load_state_dict(state["optimizer"])
                phase.scheduler.load_state_dict(state["scheduler"])
            if pc.name == "predictor":
                tokenizer.eval()
            batches = _batches(train, runtime, cfg, per_epoch, done - offset)
            for step in range(done, offset + pc.steps):
                torch.manual_seed(derive("step", cfg.seed, runtime.rank, step))  # dropout of this rank and step
                x, stamp = next(batches)
                x, stamp = x.to(runtime.device, non_blocking=True), stamp.to(runtime.device, non_blocking=True)
                phase.optimizer.zero_grad(set_to_none=True)
                with _autocast(runtime, cfg.bf16):
                    if pc.name == "predictor":
                        gen = torch.Generator(device=runtime.device).manual_seed(derive("s1", cfg.seed, runtime.rank, step))
                        loss, parts = predictor_loss_ddp(phase.ddp, tokenizer, x, stamp, cfg.lookback,
                                                         teacher_forcing=cfg.teacher_forcing, generator=gen)
                    else:
                        loss, parts = tokenizer_loss_ddp(phase.ddp, x)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{pc.name} step {step + 1}: non-finite loss {loss.item()}; lower --lr")
                loss.backward()
                grad_norm = float(nn.utils.clip_grad_norm_(module.parameters(), pc.grad_clip))
                lr = float(phase.scheduler.get_last_lr()[0])
                phase.optimizer.step()
                phase.scheduler.step()
                metrics = {"loss": loss.item(), "grad_norm": grad_norm, "lr": lr, **parts}
                history.append({"phase": pc.name, "step": step + 1, **{k: round(v, 6) for k, v in metrics.items()}})
                samples += cfg.batch_size * runtime.world
                progress.update(step + 1, pc.name, metrics, cfg.batch_size * runtime.world, done)
                last = step + 1 == offset + pc.steps
                if runtime.is_main and ((step + 1) % cfg.save_every == 0 or last):
                    save_state(state_path, {
                        "format": STATE_FORMAT, "fingerprint": fingerprint, "step": step + 1, "phase": pc.name,
                        "tokenizer": tokenizer.state_dict(), "model": model.state_dict(),
                        "optimizer": phase.optimizer.state_dict(), "scheduler": phase.scheduler.state_dict(),
                        "world_size": runtime.world, "rng": {"scheme": "reseeded per step from (seed, rank, step)",
                                                             "seed": cfg.seed},
                        "saved_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    })
                if after_step is not None:
                    after_step(step + 1)
            module.requires_grad_(False)
            module.eval()
            offset += pc.steps
            done = offset
    if runtime.world > 1:
        dist.barrier()
    tokenizer.eval()
    model.eval()
    resumed = int(state["step"]) if state else 0
    return LoopResult(
        steps={p.name: p.steps for p in cfg.phases}, resumed_from=resumed, history=history,
        wall_s=time.monotonic() - t0, samples=samples,
    )
