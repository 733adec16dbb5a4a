"""The predictor's transformer re-laid for decode steps: fewer, larger matrix products.

A decode step feeds a handful of rows per series, so each linear layer is a skinny matrix
product whose cost is reading the weights. Here the query/key/value projections of a block
are one ``[3d, d]`` product and the two SwiGLU input projections one ``[2f, d]`` product, and the
rotary tables are computed once per step for all blocks. The arithmetic per output element is
the same as the block-by-block modules (same dot products, same order of the residual adds);
the test suite holds it to the module path with a tight tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kronos_core.kv_cache import KVCache
from kronos_core.layers import RMSNorm, SelfAttention, TransformerBlock, apply_rotary, rotary_cos_sin
from kronos_core.model import Kronos


@dataclass(frozen=True)
class _FusedBlock:
    norm1: RMSNorm
    norm2: RMSNorm
    qkv_w: Tensor  # [3d, d]
    qkv_b: Tensor  # [3d]
    out_w: Tensor  # [d, d]
    out_b: Tensor  # [d]
    w13: Tensor  # [2f, d]
    w2: Tensor  # [d, f]
    inv_freq: Tensor  # [head_dim / 2]


class FusedDecoder:
    """Decode-step forward of a :class:`Kronos` transformer (no dropout: inference only)."""

    def __init__(self, model: Kronos) -> None:
        self.model = model
        self.blocks: list[_FusedBlock] = []
        for block in model.transformer:
            assert isinstance(block, TransformerBlock)
            attn = block.self_attn
            assert isinstance(attn, SelfAttention)
            self.blocks.append(
                _FusedBlock(
                    norm1=block.norm1,
                    norm2=block.norm2,
                    qkv_w=torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).detach(),
                    qkv_b=torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]).detach(),
                    out_w=attn.out_proj.weight.detach(),
                    out_b=attn.out_proj.bias.detach(),
                    w13=torch.cat([block.ffn.w1.weight, block.ffn.w3.weight]).detach(),
                    w2=block.ffn.w2.weight.detach(),
                    inv_freq=attn.rotary.inv_freq,
                )
            )
        self.n_heads, self.head_dim = model.n_heads, model.head_dim
        first = self.blocks[0].inv_freq
        self._shared_rotary = all(torch.equal(b.inv_freq, first) for b in self.blocks)

    def forward(
        self, x: Tensor, positions: Tensor, caches: list[KVCache], attn_mask: Tensor, kv_len: int
    ) -> Tensor:
        """x [N, S, d] at ``positions`` [N, S] -> final-normed rows [N, S, d]; caches are updated.

        Attention reads the first ``kv_len`` cache slots (``attn_mask`` [N, 1, S, kv_len]).
        """
        n, s, d = x.shape
        tables = rotary_cos_sin(self.blocks[0].inv_freq, positions) if self._shared_rotary else None
        for blk, cache in zip(self.blocks, caches, strict=True):
            cos, sin = tables if tables is not None else rotary_cos_sin(blk.inv_freq, positions)
            qkv = F.linear(blk.norm1(x), blk.qkv_w, blk.qkv_b)  # [N, S, 3d]
            q, k, v = qkv.view(n, s, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [N, H, S, D] each
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            k_all, v_all = cache.update(positions, k, v)
            k_all, v_all = k_all[:, :, :kv_len], v_all[:, :, :kv_len]
            att = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=attn_mask)  # [N, H, S, D]
            x = x + F.linear(att.transpose(1, 2).reshape(n, s, d), blk.out_w, blk.out_b)
            gate, up = F.linear(blk.norm2(x), blk.w13).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, blk.w2)
        return self.model.norm(x)
