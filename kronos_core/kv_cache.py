"""Preallocated per-layer key/value caches for incremental decoding.

A :class:`KVCache` holds the rotated keys and values of one attention layer for a batch of
rows, ``[B, H, T, D]``. Rows may sit at different positions (series of different lengths, right
padded): a write takes positions ``[S]`` (the same for every row) or ``[B, S]`` (one per row).

Reads return either the filled prefix (when every row was written from position 0 with the
same positions, i.e. a prefill: the attention can then use its fast causal path) or the whole
buffer, in which case the caller masks keys by position (``key_mask``). Returning the whole
buffer keeps shapes fixed from step to step, which is what CUDA graphs need.
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Keys and values of one attention layer. ``update`` is what :class:`SelfAttention` calls."""

    def __init__(
        self, batch: int, n_heads: int, max_len: int, head_dim: int, *, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.k = torch.zeros(batch, n_heads, max_len, head_dim, device=device, dtype=dtype)  # [B, H, T, D]
        self.v = torch.zeros_like(self.k)  # [B, H, T, D]

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(self, positions: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v [B, H, S, D] at ``positions``; return the keys/values queries may look at."""
        if positions.dim() == 1:
            # Same positions for every row. A prefill from 0 returns just the filled prefix.
            end = positions.shape[0]
            if end > 0 and bool(positions[0] == 0) and bool(positions[-1] == end - 1):
                # 0..end-1 (positions are increasing): a strided copy, cheaper than an indexed one
                self.k[:, :, :end].copy_(k)
                self.v[:, :, :end].copy_(v)
                return self.k[:, :, :end], self.v[:, :, :end]
            self.k.index_copy_(2, positions, k)
            self.v.index_copy_(2, positions, v)
            return self.k, self.v
        rows = torch.arange(k.shape[0], device=k.device).unsqueeze(1)  # [B, 1]
        self.k.transpose(1, 2)[rows, positions] = k.transpose(1, 2)  # [B, S, H, D] scattered
        self.v.transpose(1, 2)[rows, positions] = v.transpose(1, 2)
        return self.k, self.v

    @classmethod
    def wrap(cls, k: Tensor, v: Tensor) -> KVCache:
        """A cache over existing tensors [B, H, T, D] (views stay views: writes reach the original)."""
        out = cls.__new__(cls)
        out.k, out.v = k, v
        return out

    def repeat_rows(self, repeats: int) -> KVCache:
        """A new cache with every row repeated ``repeats`` times (row r -> rows r*repeats ...)."""
        return KVCache.wrap(self.k.repeat_interleave(repeats, dim=0), self.v.repeat_interleave(repeats, dim=0))

    def select_rows(self, rows: Tensor) -> KVCache:
        return KVCache.wrap(self.k.index_select(0, rows), self.v.index_select(0, rows))


def make_caches(
    n_layers: int, batch: int, n_heads: int, max_len: int, head_dim: int, *, device: torch.device, dtype: torch.dtype
) -> list[KVCache]:
    return [KVCache(batch, n_heads, max_len, head_dim, device=device, dtype=dtype) for _ in range(n_layers)]


def key_mask(positions: Tensor, max_len: int) -> Tensor:
    """SDPA mask [B, 1, S, T]: query at ``positions[b, i]`` may see keys at positions ``<=`` it."""
    keys = torch.arange(max_len, device=positions.device)  # [T]
    return (keys[None, None, :] <= positions[:, :, None]).unsqueeze(1)
