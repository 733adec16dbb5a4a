"""Counter-based random numbers: one uniform per (row seed, step, stream), batch-independent.

``torch.multinomial`` with one generator for a whole batch makes a row's draw depend on which
rows share its batch. Here every draw is a pure function of the row's own seed and a counter
(a SplitMix64 finaliser over 64-bit integers), so a series' sampled forecast is the same whatever
else is batched with it, and a replayed bar reproduces its forecast.
"""

from __future__ import annotations

import torch
from torch import Tensor

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed 64-bit integer
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB
_LOW53 = (1 << 53) - 1


def _wrap(v: int) -> int:
    """A Python int reduced to the signed 64-bit range (two's complement)."""
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: Tensor) -> Tensor:
    """SplitMix64 finaliser on int64 tensors (wrapping arithmetic)."""
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def path_seeds(series_seeds: Tensor, n_paths: int) -> Tensor:
    """Seeds [B * n_paths] for the sample paths of each series (row order: series-major)."""
    paths = torch.arange(n_paths, device=series_seeds.device, dtype=torch.int64)
    return mix64(series_seeds[:, None] * 31 + (paths[None, :] + 1) * _GOLDEN).reshape(-1)


def uniforms(seeds: Tensor, counter: int | Tensor) -> Tensor:
    """One float64 uniform in [0, 1) per seed for draw number ``counter``.  # [N]

    ``counter`` may be a 0-d int64 tensor (a captured CUDA graph reads it from device memory):
    int64 tensor arithmetic wraps like :func:`_wrap`, so both forms give the same bits.
    """
    offset = (counter + 1) * _GOLDEN if isinstance(counter, Tensor) else _wrap((counter + 1) * _GOLDEN)
    bits = mix64(seeds + offset)
    return (_shift_right(bits, 11) & _LOW53).to(torch.float64) / float(1 << 53)


def sample_inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """Draw one index per row of ``probs`` [N, V] with the uniforms ``u`` [N].  # [N, 1]"""
    cdf = probs.to(torch.float64).cumsum(dim=-1)  # [N, V]
    target = (u * cdf[:, -1]).unsqueeze(-1)  # [N, 1]
    idx = torch.searchsorted(cdf, target, right=True)
    return idx.clamp_(max=probs.shape[-1] - 1)
