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
    # Sample paths sharing their series' context (kronos_core.shared_prefix): then ``caches`` and
    # ``dep_k``/``dep_v`` hold the context once per series [B, ...] and these the generated rows.
    suffix: list[KVCache] | None = None  # per predictor layer, [N, H, horizon, D]
    dep_suffix: KVCache | None = None  # [N, Hd, horizon, Dd]
    paths: int = 1  # sample paths per series

    def _caches(self) -> list[KVCache]:
        return [*self.caches, *(self.suffix or []), *([self.dep_suffix] if self.dep_suffix is not None else [])]

    def _tensors(self) -> list[Tensor | None]:
        return [getattr(self, f.name) for f in fields(self) if f.name not in _NOT_TENSORS]

    def shape_key(self) -> tuple[Any, ...]:
        caches = tuple((tuple(c.k.shape), c.k.dtype) for c in self._caches())
        tensors = tuple(None if t is None else (tuple(t.shape), t.dtype) for t in self._tensors())
        return caches, tensors, self.paths

    def empty_like(self) -> LoopBuffers:
        def e(c: KVCache) -> KVCache:
            return KVCache.wrap(torch.empty_like(c.k), torch.empty_like(c.v))

        tensors = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_TENSORS}
        return LoopBuffers(
            caches=[e(c) for c in self.caches],
            **{name: None if t is None else torch.empty_like(t) for name, t in tensors.items()},  # type: ignore[arg-type]
            suffix=None if self.suffix is None else [e(c) for c in self.suffix],
            dep_suffix=None if self.dep_suffix is None else e(self.dep_suffix),
            paths=self.paths,
        )

    def copy_from(self, src: LoopBuffers) -> None:
        for mine, theirs in zip(self._caches(), src._caches(), strict=True):
            mine.k.copy_(theirs.k)
            mine.v.copy_(theirs.v)
        for mine_t, theirs_t in zip(self._tensors(), src._tensors(), strict=True):
            if mine_t is not None and theirs_t is not None:
                mine_t.copy_(theirs_t)


_NOT_TENSORS = frozenset({"caches", "suffix", "dep_suffix", "paths"})


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
