"""Attention for sample paths that share a context: the context's keys and values kept once.

With ``sample_count`` S paths per series, every path attends to the same context rows and to its
own generated rows. Repeating the context's cache S times makes every generated step read the
context S times over (that read is what bounds a step: 7 GB per step for 1024 rows of
Kronos-small). :class:`SharedPrefixKV` keeps one layer's context keys and values once per series
(the *prefix*, ``[B, H, P, D]``) and the generated rows per path (the *suffix*,
``[B*S, H, G, D]``); :meth:`SharedPrefixKV.attend` scores each path's queries against its series'
prefix in one product per series, against its own suffix, and takes one softmax over both parts.
That is the attention over the concatenated keys, up to float rounding.

Rows are series-major: path p of series b is row ``b * S + p``.
"""

from __future__ import annotations

import torch
from torch import Tensor


class SharedPrefixKV:
    """One attention layer's keys and values for ``paths`` sample paths per series."""

    def __init__(self, prefix_k: Tensor, prefix_v: Tensor, paths: int, suffix_len: int) -> None:
        """``prefix_k``/``prefix_v`` [B, H, P, D]: the context rows (kept, not copied)."""
        b, h, _, d = prefix_k.shape
        self.prefix_k, self.prefix_v, self.paths = prefix_k, prefix_v, paths
        self.suffix_k = prefix_k.new_zeros(b * paths, h, suffix_len, d)  # [B*S, H, G, D]
        self.suffix_v = torch.zeros_like(self.suffix_k)

    def write(self, slot: Tensor, k: Tensor, v: Tensor) -> None:
        """Store every row's new key and value [B*S, H, 1, D] in suffix slot ``slot`` (a 1-element
        int64 tensor, the same slot for every row: the step index)."""
        self.suffix_k.index_copy_(2, slot, k)
        self.suffix_v.index_copy_(2, slot, v)

    def attend(self, q: Tensor, prefix_mask: Tensor, suffix_mask: Tensor) -> Tensor:
        """Attention of queries q [B*S, H, Q, D] over prefix and suffix.  # [B*S, H, Q, D]

        ``prefix_mask`` [B, 1, 1, P] and ``suffix_mask`` [B*S or 1, 1, Q, G]: True = may attend.
        """
        return shared_prefix_attention(
            q, self.prefix_k, self.prefix_v, prefix_mask, self.suffix_k, self.suffix_v, suffix_mask, self.paths
        )


def shared_prefix_attention(
    q: Tensor,  # [B*S, H, Q, D]
    prefix_k: Tensor,  # [B, H, P, D]
    prefix_v: Tensor,
    prefix_mask: Tensor,  # [B, 1, 1, P]
    suffix_k: Tensor,  # [B*S, H, G, D]
    suffix_v: Tensor,
    suffix_mask: Tensor,  # [B*S or 1, 1, Q, G]
    paths: int,
) -> Tensor:
    """Softmax attention over the keys ``prefix ++ suffix`` with the prefix shared by ``paths`` rows."""
    n, h, nq, d = q.shape
    b, p = prefix_k.shape[0], prefix_k.shape[2]
    scale = d**-0.5
    # Every path's queries of one series against that series' prefix: one product per series.
    q_series = q.view(b, paths, h, nq, d).transpose(1, 2).reshape(b, h, paths * nq, d)
    s_prefix = torch.matmul(q_series, prefix_k.transpose(-1, -2)) * scale  # [B, H, S*Q, P]
    s_prefix = s_prefix.masked_fill(~prefix_mask, float("-inf"))
    s_prefix = s_prefix.view(b, h, paths, nq, p).transpose(1, 2).reshape(n, h, nq, p)
    s_suffix = torch.matmul(q, suffix_k.transpose(-1, -2)) * scale  # [B*S, H, Q, G]
    s_suffix = s_suffix.masked_fill(~suffix_mask, float("-inf"))
    weights = torch.softmax(torch.cat([s_prefix, s_suffix], dim=-1), dim=-1)
    w_prefix, w_suffix = weights.split([p, suffix_k.shape[2]], dim=-1)
    w_prefix = w_prefix.reshape(b, paths, h, nq, p).transpose(1, 2).reshape(b, h, paths * nq, p)
    out_prefix = torch.matmul(w_prefix, prefix_v)  # [B, H, S*Q, D]
    out_prefix = out_prefix.view(b, h, paths, nq, d).transpose(1, 2).reshape(n, h, nq, d)
    return out_prefix + torch.matmul(w_suffix, suffix_v)
