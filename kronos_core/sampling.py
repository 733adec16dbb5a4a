"""Token sampling: temperature, then top-k or nucleus (top-p) filtering, then a multinomial draw.

Upstream precedence is kept: when ``top_k > 0`` only top-k filtering happens and ``top_p``
is ignored; nucleus filtering applies only with ``top_k <= 0`` and ``top_p < 1``.
Greedy decoding is ``top_k=1`` (the draw then has a single candidate unless logits tie).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def top_k_filter(logits: Tensor, top_k: int) -> Tensor:
    """Set every logit below the k-th largest (per row) to -inf; ties with the k-th are kept."""
    k = min(max(top_k, 1), logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # [..., 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``top_p``.

    The most likely token is always kept, and so is the token that crosses the threshold.
    """
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cumulative = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    drop_sorted = cumulative > top_p
    drop_sorted[..., 1:] = drop_sorted[..., :-1].clone()  # shift: keep the crossing token
    drop_sorted[..., 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Apply upstream's filtering rule (top-k wins over top-p); returns a new tensor."""
    if top_k > 0:
        return top_k_filter(logits, top_k)
    if top_p < 1.0:
        return top_p_filter(logits, top_p)
    return logits


def sample_from_logits(
    logits: Tensor,  # [B, V]
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one id per row.  # [B, 1] int64"""
    if not temperature > 0:
        raise ValueError(f"temperature T must be > 0, got {temperature}; use top_k=1 for greedy decoding")
    probs = F.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)
