"""CUDA graphs for the generated steps: a few batch-size buckets, captured once, replayed every step.

On a GPU a decode step is a few hundred small kernels, and at small batches launching them costs
more than running them. :class:`BucketedSteps` captures the engine's fixed-shape step
(:meth:`KronosEngine.fixed_step`) into a ``torch.cuda.CUDAGraph`` and replays it ``horizon - 1``
times per call; the step index lives in device memory (``LoopBuffers.t``), so one graph serves
every step.

A captured graph reads and writes fixed addresses and fixed shapes, so a call's state is copied
into static buffers of a *canonical* shape:

- **rows**: the call's series are padded to the smallest bucket (``DEFAULT_GRAPH_BUCKETS`` or the
  engine's ``graph_buckets``) that holds them; the padding rows are copies of the first real series
  (all its sample paths) and their results are dropped. More series than the largest bucket run
  in chunks of buckets.
- **cache slots and token buffers**: always ``max_context`` cache slots (a row's attention masks
  the slots past its position, as the fixed step always does) and ``max_context + 1`` token
  columns; with sample paths sharing their series' context (:mod:`kronos_core.shared_prefix`) the
  shared prefix has ``max_context - horizon + 1`` slots (the most a row that fits can hold).

So a graph depends only on the bucket, the sample paths, the sampling knobs, whether seeds are
given and (sample paths only) the horizon, never on context lengths. :meth:`KronosEngine.warm_up`
captures every bucket before the first real call; afterwards a call of any size captures nothing
(``captures`` counts captures, for the daemon's ``kronos_graph_captures_total``). The buckets of
one setting share one set of static buffers (the largest bucket's; a smaller bucket's are views
of its first rows) and one CUDA memory pool, so memory is that of the largest bucket.

Without CUDA graphs (``graphs=False``, the engine's ``decode_loop="fixed"`` with buckets) the
same padded buffers are stepped eagerly: that is how CPU tests check the padding and chunking.

The fixed step computes what the dynamic loop computes (attention reads every cache slot and
masks those past the row's position), so sampled tokens are the same up to float rounding.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from kronos_core.kv_cache import KVCache

DEFAULT_GRAPH_BUCKETS: tuple[int, ...] = (1, 8, 32, 64, 128, 256, 512, 1024)


def validate_buckets(buckets: Iterable[int]) -> tuple[int, ...]:
    """The bucket sizes as a tuple; raises ValueError naming what is wrong with a bad list."""
    sizes = tuple(buckets)
    example = ",".join(map(str, DEFAULT_GRAPH_BUCKETS))
    if not sizes:
        raise ValueError(f"graph buckets: name at least one batch size, e.g. {example}")
    if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
        raise ValueError(f"graph buckets must be positive whole numbers of series, got {list(sizes)}; e.g. {example}")
    if list(sizes) != sorted(set(sizes)):
        raise ValueError(f"graph buckets must be increasing without repeats, got {list(sizes)}; e.g. {example}")
    return sizes


def bucket_chunks(n_series: int, buckets: Sequence[int]) -> list[tuple[int, int, int]]:
    """How ``n_series`` series run: (first series, series, bucket) per chunk. Each chunk takes the
    smallest bucket that holds it; beyond the largest bucket, chunks of the largest bucket."""
    out, start, largest = [], 0, buckets[-1]
    while start < n_series:
        count = min(largest, n_series - start)
        out.append((start, count, next(b for b in buckets if b >= count)))
        start += count
    return out


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

    @property
    def shared(self) -> bool:
        return self.dep_suffix is not None

    def row_tensors(self) -> list[Tensor]:
        """The tensors with one row per sample path (their first dimension)."""
        out = [self.last_logits, self.h_last, self.tok1, self.tok2, self.stamps, self.length_t]
        out += [] if self.seeds is None else [self.seeds]
        if not self.shared:
            out += [self.dep_k, self.dep_v, *(t for c in self.caches for t in (c.k, c.v))]
        return out

    def series_tensors(self) -> list[Tensor]:
        """The tensors with one row per series (the shared context), empty without sharing."""
        return [self.dep_k, self.dep_v, *(t for c in self.caches for t in (c.k, c.v))] if self.shared else []

    def first_rows(self, series: int) -> LoopBuffers:
        """Views of the first ``series`` series' rows (writes reach these buffers)."""
        rows = series * self.paths
        per_row = rows if not self.shared else series

        def cut(c: KVCache, n: int) -> KVCache:
            return KVCache.wrap(c.k[:n], c.v[:n])

        return replace(
            self,
            caches=[cut(c, per_row) for c in self.caches],
            last_logits=self.last_logits[:rows], h_last=self.h_last[:rows],
            dep_k=self.dep_k[:per_row], dep_v=self.dep_v[:per_row],
            tok1=self.tok1[:rows], tok2=self.tok2[:rows], stamps=self.stamps[:rows], length_t=self.length_t[:rows],
            seeds=None if self.seeds is None else self.seeds[:rows],
            suffix=None if self.suffix is None else [cut(c, rows) for c in self.suffix],
            dep_suffix=None if self.dep_suffix is None else cut(self.dep_suffix, rows),
        )


StepFn = Callable[..., None]  # (buffers, params, generator, *, feed: bool) -> None


def _alloc(template: LoopBuffers, series: int, *, cache_len: int, prefix_len: int, tok_len: int) -> LoopBuffers:
    """Zeroed buffers shaped like ``template`` for ``series`` series of canonical length (every row
    one context token long, so a step over them before any real call is well defined)."""
    rows = series * template.paths

    def like(t: Tensor, n: int, *dims: int) -> Tensor:
        return t.new_zeros(n, *dims) if dims else t.new_zeros(n, *t.shape[1:])

    def cache(c: KVCache, n: int, length: int) -> KVCache:
        h, _, d = c.k.shape[1:]
        return KVCache.wrap(like(c.k, n, h, length, d), like(c.v, n, h, length, d))

    per_row, length = (series, prefix_len) if template.shared else (rows, cache_len)
    hd, dd = template.dep_k.shape[1], template.dep_k.shape[3]
    return LoopBuffers(
        caches=[cache(c, per_row, length) for c in template.caches],
        last_logits=like(template.last_logits, rows), h_last=like(template.h_last, rows),
        dep_k=like(template.dep_k, per_row, hd, length, dd), dep_v=like(template.dep_v, per_row, hd, length, dd),
        tok1=like(template.tok1, rows, tok_len), tok2=like(template.tok2, rows, tok_len),
        stamps=like(template.stamps, rows, tok_len, template.stamps.shape[2]),
        length_t=torch.ones_like(template.length_t[:1]).expand(rows).contiguous(),
        seeds=None if template.seeds is None else like(template.seeds, rows),
        t=torch.zeros_like(template.t),
        suffix=None if template.suffix is None else [cache(c, rows, c.max_len) for c in template.suffix],
        dep_suffix=None if template.dep_suffix is None else cache(template.dep_suffix, rows, template.dep_suffix.max_len),
        paths=template.paths,
    )


def _load(buf: LoopBuffers, loop: LoopBuffers, first: int, count: int) -> None:
    """Copy series ``first .. first + count - 1`` of ``loop`` into the first rows of ``buf`` (a
    bucket's views) and fill the rest of the bucket with copies of its first series."""
    paths, rows = loop.paths, count * loop.paths
    r0 = first * paths

    def put(dst: Tensor, src: Tensor) -> None:  # src may be shorter than dst along dims 1..
        dst[(slice(None), *(slice(0, n) for n in src.shape[1:]))].copy_(src)

    for mine, theirs in zip(buf.row_tensors(), loop.row_tensors(), strict=True):
        put(mine[:rows], theirs[r0 : r0 + rows])
    for mine, theirs in zip(buf.series_tensors(), loop.series_tensors(), strict=True):
        put(mine[:count], theirs[first : first + count])
    bucket = buf.length_t.shape[0] // paths
    if count < bucket:  # padding: copies of the first series, results dropped
        pad = bucket - count
        for t in buf.row_tensors():
            t[rows:].view(pad, paths, *t.shape[1:]).copy_(t[:paths].unsqueeze(0).expand(pad, paths, *t.shape[1:]))
        for t in buf.series_tensors():
            t[count:].copy_(t[:1].expand(pad, *t.shape[1:]))


@dataclass
class _Family:
    """Static buffers of one setting (paths, sampling, seeds, horizon when shared) and its graphs."""

    buffers: LoopBuffers  # sized for the largest bucket
    graphs: dict[int, torch.cuda.CUDAGraph]  # by bucket
    pool: Any = None  # the CUDA memory pool the family's graphs share


class BucketedSteps:
    """Runs a horizon's generated steps over static buffers padded to batch-size buckets, replaying
    a CUDA graph per bucket (``graphs=True``) or stepping eagerly (``graphs=False``)."""

    def __init__(
        self,
        step_fn: StepFn,
        buckets: Sequence[int] = DEFAULT_GRAPH_BUCKETS,
        *,
        max_context: int,
        graphs: bool = True,
        max_families: int = 2,
    ) -> None:
        if max_families < 1:
            raise ValueError(f"max_families must be >= 1, got {max_families}")
        self._step_fn = step_fn
        self.buckets = validate_buckets(buckets)
        self.max_context = max_context
        self.graphs = graphs
        self._max_families = max_families
        self._families: OrderedDict[tuple[Any, ...], _Family] = OrderedDict()
        self._lock = threading.Lock()  # the static buffers serve one call at a time
        self.captures = 0  # CUDA graphs captured so far (one per bucket and setting)

    def family_key(self, loop: LoopBuffers, params: Any, horizon: int) -> tuple[Any, ...]:
        """What a graph depends on besides the bucket. The horizon only matters to shared paths
        (their suffix caches hold the horizon's rows)."""
        return (loop.paths, loop.shared, horizon if loop.shared else None, loop.seeds is None, params)

    def captured(self, loop: LoopBuffers, params: Any, horizon: int) -> list[int]:
        """Buckets with a captured graph for this call's setting."""
        fam = self._families.get(self.family_key(loop, params, horizon))
        return sorted(fam.graphs) if fam is not None else []

    def run(self, loop: LoopBuffers, params: Any, horizon: int) -> tuple[Tensor, Tensor]:
        """Generate ``horizon`` tokens from ``loop``'s state; returns (tok1, tok2) shaped like ``loop.tok1``."""
        n_series, width = loop.length_t.shape[0] // loop.paths, loop.tok1.shape[1]
        key = self.family_key(loop, params, horizon)
        out1: list[Tensor] = []
        out2: list[Tensor] = []
        with self._lock:
            fam = self._family(key, loop, horizon)
            for first, count, bucket in bucket_chunks(n_series, self.buckets):
                buf = fam.buffers.first_rows(bucket)
                _load(buf, loop, first, count)
                graph = fam.graphs.get(bucket) if self.graphs else None
                if self.graphs and graph is None:
                    graph = fam.graphs[bucket] = self._capture(buf, params, fam)
                    _load(buf, loop, first, count)  # the capture's warm-up steps wrote into buf
                for t in range(horizon - 1):
                    buf.t.fill_(t)
                    if graph is not None:
                        graph.replay()
                    else:
                        self._step_fn(buf, params, None, feed=True)
                buf.t.fill_(horizon - 1)
                self._step_fn(buf, params, None, feed=False)  # the last step samples only
                rows = count * loop.paths
                out1.append(buf.tok1[:rows, :width].clone())
                out2.append(buf.tok2[:rows, :width].clone())
        if len(out1) == 1:
            return out1[0], out2[0]
        return torch.cat(out1), torch.cat(out2)

    def _family(self, key: tuple[Any, ...], loop: LoopBuffers, horizon: int) -> _Family:
        fam = self._families.get(key)
        if fam is not None:
            self._families.move_to_end(key)
            return fam
        buffers = _alloc(
            loop, self.buckets[-1], cache_len=self.max_context,
            prefix_len=self.max_context - horizon + 1, tok_len=self.max_context + 1,
        )
        pool = torch.cuda.graph_pool_handle() if self.graphs else None
        fam = self._families[key] = _Family(buffers, {}, pool)
        while len(self._families) > self._max_families:
            self._families.popitem(last=False)
        return fam

    def _capture(self, buf: LoopBuffers, params: Any, fam: _Family) -> torch.cuda.CUDAGraph:
        buf.t.fill_(0)
        # Warm up on a side stream first (lazy library handles and workspaces), as torch requires.
        side = torch.cuda.Stream(device=buf.t.device)
        side.wait_stream(torch.cuda.current_stream(buf.t.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._step_fn(buf, params, None, feed=True)
        torch.cuda.current_stream(buf.t.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # The buckets' graphs share a memory pool: they never run at the same time and keep
        # nothing in it between replays (every result is written into the static buffers).
        # Thread-local capture: a new model version is warmed up in a worker thread while the
        # serving model keeps running kernels in another (daemon hot swap).
        with torch.cuda.graph(graph, pool=fam.pool, capture_error_mode="thread_local"):
            self._step_fn(buf, params, None, feed=True)
        self.captures += 1
        return graph

