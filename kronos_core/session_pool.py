"""Warm incremental sessions kept in pooled slot tensors, so a batch runs over views, not copies.

Every cache of a warm session is one row ("slot") of a pooled tensor: the tokenizer encoder's and
decoder's keys/values and the predictor's keys/values per layer, the dependency layer's
keys/values, the last context row and its s1 logits. A forecast call first :meth:`SessionPool.place`
s the series of its batch into one contiguous run of slots; the engine then reads and writes the
batch through views of that run (:meth:`SessionPool.views`), so no call concatenates or gathers
the sessions' caches. Placing moves rows only for series that sit outside the chosen run (the
batch's composition changed since they were placed); moves, evictions and growth are counted.

Capacity grows by doubling up to ``max_slots``. A series of another batch that sits in the chosen
run swaps slots with a member coming in, so it keeps its session; one is evicted (its caches are
rebuilt from the token cache when it comes back) only when a full pool must take a series new to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from kronos_core.engine import KronosEngine
from kronos_core.kv_cache import KVCache


@dataclass
class PoolCounters:
    """What placing did so far: rows moved inside the pool, sessions evicted, capacity growths."""

    moved: int = 0
    evicted: int = 0
    grown: int = 0


@dataclass
class PoolViews:
    """The caches of slots ``start .. start + rows - 1`` as views of the pool (writes reach it)."""

    enc: list[KVCache]  # per encoder layer, [B, H, T, D]
    pred: list[KVCache]  # per predictor layer, [B, H, T, D]
    dec: list[KVCache]  # per decoder layer, [B, H, T, D]
    dep_k: Tensor  # [B, Hd, T, Dd]
    dep_v: Tensor  # [B, Hd, T, Dd]
    logits: Tensor  # [B, V1] float32, s1 logits after the last context token
    h_last: Tensor  # [B, d] last context row


def _grown(t: Tensor, rows: int) -> Tensor:
    out = t.new_zeros(rows, *t.shape[1:])
    out[: t.shape[0]] = t
    return out


class SessionPool:
    """Slots of warm sessions, one per series id; see the module docstring."""

    def __init__(self, engine: KronosEngine, *, max_slots: int) -> None:
        if max_slots < 1:
            raise ValueError(f"the session pool needs room for at least one series, got max_slots={max_slots}")
        self.engine = engine
        self.length = engine.max_context
        self.max_slots = max_slots
        self.capacity = 0
        self.counters = PoolCounters()
        self._slot_of: dict[str, int] = {}
        self._owner: list[str | None] = []
        self.fingerprints: dict[str, str] = {}  # the token cache each warm session was built from
        m = engine.model
        cross = m.dep_layer.cross_attn
        self._dep_shape = (cross.n_heads, self.length, cross.head_dim)
        self._logit_dim, self._model_dim = m.head.proj_s1.weight.shape
        self._alloc(0)

    # ------------------------------------------------------------------ storage

    def _alloc(self, rows: int) -> None:
        eng, t = self.engine, self.length
        self.enc = eng.encoder_caches(rows, t)
        self.pred = eng.predictor_caches(rows, t)
        self.dec = eng.decoder_caches(rows, t)
        self.dep_k = torch.zeros(rows, *self._dep_shape, device=eng.device, dtype=eng.dtype)
        self.dep_v = torch.zeros_like(self.dep_k)
        self.logits = torch.zeros(rows, self._logit_dim, device=eng.device, dtype=torch.float32)
        self.h_last = torch.zeros(rows, self._model_dim, device=eng.device, dtype=eng.dtype)

    def _tensors(self) -> list[Tensor]:
        caches = [*self.enc, *self.pred, *self.dec]
        return [c.k for c in caches] + [c.v for c in caches] + [self.dep_k, self.dep_v, self.logits, self.h_last]

    @property
    def slot_bytes(self) -> int:
        """Bytes one series' warm caches take (one row of every pool tensor; no allocation)."""
        return sum(t.shape[1:].numel() * t.element_size() for t in self._tensors())

    def _grow(self, rows: int) -> None:
        for c in [*self.enc, *self.pred, *self.dec]:
            c.k, c.v = _grown(c.k, rows), _grown(c.v, rows)
        self.dep_k, self.dep_v = _grown(self.dep_k, rows), _grown(self.dep_v, rows)
        self.logits, self.h_last = _grown(self.logits, rows), _grown(self.h_last, rows)
        self._owner.extend([None] * (rows - self.capacity))
        self.capacity = rows
        self.counters.grown += 1

    def _move(self, src: list[int], dst: list[int]) -> None:
        s = torch.tensor(src, device=self.engine.device)
        d = torch.tensor(dst, device=self.engine.device)
        for t in self._tensors():
            t.index_copy_(0, d, t.index_select(0, s))
        self.counters.moved += len(src)

    # ------------------------------------------------------------------ slots

    def __contains__(self, series_id: str) -> bool:
        return series_id in self._slot_of

    def __len__(self) -> int:
        return len(self._slot_of)

    def slot(self, series_id: str) -> int:
        return self._slot_of[series_id]

    def drop(self, series_ids: Sequence[str]) -> None:
        for sid in series_ids:
            slot = self._slot_of.pop(sid, None)
            self.fingerprints.pop(sid, None)
            if slot is not None:
                self._owner[slot] = None

    def place(self, series_ids: Sequence[str]) -> int:
        """Put the given (distinct) series in one contiguous run of slots; return its first slot.

        Series already in the pool keep their caches (moved if they sit outside the run); new ones
        get free slots (caches undefined until written). A series of another batch that sits in the
        run swaps places with a member coming in (or takes a free slot), so it keeps its session;
        one is evicted only when a full pool must make room for a series new to it.
        """
        n = len(series_ids)
        if n > self.max_slots:
            raise ValueError(f"a batch of {n} series does not fit a pool of {self.max_slots} slots; split it")
        if len(set(series_ids)) != n:
            raise ValueError("a batch must not name a series twice")
        members = set(series_ids)
        slots = [self._slot_of.get(s) for s in series_ids]
        known = [s for s in slots if s is not None]
        if len(known) == n and max(known) - min(known) + 1 == n:
            return min(known)
        if self.capacity < n or (self.capacity < self.max_slots and len(self._slot_of) + n - len(known) > self.capacity):
            self._grow(min(self.max_slots, max(2 * self.capacity, n, len(self._slot_of) + n - len(known), 8)))
        kind = np.array([0 if o is None else (1 if o in members else 2) for o in self._owner])  # free/member/other
        others = np.convolve(kind == 2, np.ones(n, dtype=int), mode="valid")  # per run start
        inside = np.convolve(kind == 1, np.ones(n, dtype=int), mode="valid")
        start = int(np.lexsort((len(known) - inside, others))[0])  # fewest series in the way, then fewest moves
        run = range(start, start + n)
        coming = [(sid, s) for sid, s in zip(series_ids, slots, strict=True) if s is not None and s not in run]
        in_the_way = [slot for slot in run if self._owner[slot] is not None and self._owner[slot] not in members]
        # where the series in the way go: the slots the incoming members leave, then free ones
        homes = [s for _, s in coming] + [
            slot for slot in range(self.capacity) if self._owner[slot] is None and slot not in run
        ]
        for slot in in_the_way[len(homes) :]:  # no room left: only when new series fill a full pool
            self.drop([self._owner[slot]])  # type: ignore[list-item]
            self.counters.evicted += 1
        leaving = list(zip(in_the_way[: len(homes)], homes, strict=False))
        targets = [slot for slot in run if self._owner[slot] is None] + [slot for slot, _ in leaving]
        entering = list(zip((s for _, s in coming), targets, strict=False))
        if leaving or entering:  # one gather, then one scatter: swaps are safe
            self._move([src for src, _ in leaving + entering], [dst for _, dst in leaving + entering])
        owners = {src: self._owner[src] for src, _ in leaving + entering}
        for src, _ in leaving + entering:
            self._owner[src] = None
        for src, dst in leaving + entering:
            sid = owners[src]
            assert sid is not None
            self._owner[dst], self._slot_of[sid] = sid, dst
        free = [slot for slot in run if self._owner[slot] is None]
        fresh = [sid for sid, s in zip(series_ids, slots, strict=True) if s is None]
        for sid, d in zip(fresh, free, strict=True):
            self._owner[d], self._slot_of[sid] = sid, d
        return start

    def views(self, start: int, rows: int) -> PoolViews:
        end = start + rows

        def cut(caches: list[KVCache]) -> list[KVCache]:
            return [KVCache.wrap(c.k[start:end], c.v[start:end]) for c in caches]

        return PoolViews(
            enc=cut(self.enc), pred=cut(self.pred), dec=cut(self.dec),
            dep_k=self.dep_k[start:end], dep_v=self.dep_v[start:end],
            logits=self.logits[start:end], h_last=self.h_last[start:end],
        )
