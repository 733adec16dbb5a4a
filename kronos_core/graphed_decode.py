"""CUDA graphs for the generated steps: one captured step per batch shape, replayed every step.

On a GPU a decode step is a few hundred small kernels, and at small batches launching them costs
more than running them. :class:`GraphedSteps` captures the engine's fixed-shape step
(:meth:`KronosEngine.fixed_step`) once per batch shape into a ``torch.cuda.CUDAGraph`` and replays
it ``horizon - 1`` times per call; the step index lives in device memory (``LoopBuffers.t``), so
one graph serves every step. A captured graph reads and writes fixed addresses, so each shape owns
static buffers that a call copies its state into; the few most recent shapes are kept.

The fixed step computes what the dynamic loop computes (attention simply reads every cache slot
and masks those past the row's position), so sampled tokens are the same up to float rounding.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from kronos_core.kv_cache import KVCache


@dataclass
class LoopBuffers:
    """The tensors one generated step reads and updates, one row per sample path."""

    caches: list[KVCache]  # per predictor layer, [N, H, T, D]
    last_logits: Tensor  # [N, V1] s1 logits after the latest token
    h_last: Tensor  # [N, d] latest final-normed row
    dep_k: Tensor  # [N, Hd, T, Dd] dependency-layer keys
    dep_v: Tensor  # [N, Hd, T, Dd]
    tok1: Tensor  # [N, L_max + H] s1 ids
    tok2: Tensor  # [N, L_max + H]
    stamps: Tensor  # [N, L_max + H, 5]
    length_t: Tensor  # [N] context tokens per row
    seeds: Tensor | None  # [N] counter-RNG seeds per path, or None (torch's global RNG)
    t: Tensor  # 0-d int64: the step index

    def shape_key(self) -> tuple[Any, ...]:
        return (
            tuple(self.caches[0].k.shape), len(self.caches), self.caches[0].k.dtype,
            tuple(self.dep_k.shape), tuple(self.tok1.shape), self.seeds is not None,
        )

    def empty_like(self) -> LoopBuffers:
        caches = []
        for c in self.caches:
            cache = KVCache.__new__(KVCache)
            cache.k, cache.v = torch.empty_like(c.k), torch.empty_like(c.v)
            caches.append(cache)
        e = torch.empty_like
        return LoopBuffers(
            caches=caches, last_logits=e(self.last_logits), h_last=e(self.h_last), dep_k=e(self.dep_k),
            dep_v=e(self.dep_v), tok1=e(self.tok1), tok2=e(self.tok2), stamps=e(self.stamps),
            length_t=e(self.length_t), seeds=None if self.seeds is None else e(self.seeds), t=e(self.t),
        )

    def copy_from(self, src: LoopBuffers) -> None:
        for mine, theirs in zip(self.caches, src.caches, strict=True):
            mine.k.copy_(theirs.k)
            mine.v.copy_(theirs.v)
        for f in fields(self):
            if f.name != "caches" and getattr(self, f.name) is not None:
                getattr(self, f.name).copy_(getattr(src, f.name))


StepFn = Callable[..., None]  # (buffers, params, generator, *, feed: bool) -> None


@dataclass
class _Captured:
    buffers: LoopBuffers
    graph: torch.cuda.CUDAGraph


class GraphedSteps:
    """Captures ``step_fn(buffers, params, None, feed=True)`` per batch shape and replays it."""

    def __init__(self, step_fn: StepFn, *, max_shapes: int = 2) -> None:
        if max_shapes < 1:
            raise ValueError(f"max_shapes must be >= 1, got {max_shapes}")
        self._step_fn = step_fn
        self._max_shapes = max_shapes
        self._captured: OrderedDict[tuple[Any, ...], _Captured] = OrderedDict()
        self._lock = threading.Lock()  # a captured shape's buffers serve one call at a time
        self.captures = 0  # how many graphs were captured (a new shape or sampling setting each)

    def run(self, loop: LoopBuffers, params: Any, horizon: int) -> tuple[Tensor, Tensor]:
        """Generate ``horizon`` tokens from ``loop``'s state; returns (tok1, tok2) [N, L_max + H]."""
        key = (*loop.shape_key(), params)
        with self._lock:
            entry = self._captured.get(key)
            if entry is None:
                entry = self._capture(loop, params)
                self._captured[key] = entry
                while len(self._captured) > self._max_shapes:
                    self._captured.popitem(last=False)
            else:
                self._captured.move_to_end(key)
            buf = entry.buffers
            buf.copy_from(loop)
            for t in range(horizon - 1):
                buf.t.fill_(t)
                entry.graph.replay()
            buf.t.fill_(horizon - 1)
            self._step_fn(buf, params, None, feed=False)  # the last step samples only
            return buf.tok1.clone(), buf.tok2.clone()

    def _capture(self, loop: LoopBuffers, params: Any) -> _Captured:
        buf = loop.empty_like()
        buf.copy_from(loop)
        buf.t.fill_(0)
        # Warm up on a side stream first (lazy library handles and workspaces), as torch requires.
        side = torch.cuda.Stream(device=buf.t.device)
        side.wait_stream(torch.cuda.current_stream(buf.t.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._step_fn(buf, params, None, feed=True)
        torch.cuda.current_stream(buf.t.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step_fn(buf, params, None, feed=True)
        self.captures += 1
        return _Captured(buf, graph)
