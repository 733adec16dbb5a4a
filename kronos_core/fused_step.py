"""Transformer stacks re-laid for inference: fewer, larger, prepacked matrix products.

The engine runs the predictor's prefill and decode steps, and the tokenizer's encoder and decoder,
through this instead of the block modules:

- the query/key/value projections of a block are one ``[3d, d]`` product and the two SwiGLU input
  projections one ``[2f, d]`` product;
- on CPU the weights are prepacked for oneDNN (:mod:`kronos_core.packed_linear`);
- the rotary tables are computed once per call for all blocks.

The arithmetic is the block modules' (same dot products, same residual order) up to float rounding
of the matrix-product kernel; the test suite holds it to the module path with a tight tolerance.
Inference only: no dropout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kronos_core.kv_cache import KVCache
from kronos_core.layers import RMSNorm, SelfAttention, TransformerBlock, rotary_cos_sin, rotary_inv_freq
from kronos_core.packed_linear import PackedLinear, Quantize


def masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Softmax attention of a few query rows over cached keys; ``mask`` True = may attend.  # [N, H, S, D]

    Plain products rather than the fused SDPA kernel, except in half precision on CUDA. Measured
    for Kronos-small decode steps (batch 1024, 430 cached keys): on CPU the SDPA kernel is ~1.3x
    slower than two batched products; on an H100 in bfloat16 it reads the cache at ~2.9 TB/s
    against ~2 TB/s for the products (generation 175 -> 135 ms per batch), while in float32 it
    was slower than the products (428 -> 627 ms).
    """
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)  # [N, H, S, T]
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


# Query rows per call of the blocked causal prompt attention (see causal_attention).
CAUSAL_BLOCK_ROWS = 64


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal softmax attention of a prompt: query ``i`` reads keys ``0..i``.  # [N, H, S, D]

    On CPU a prompt longer than ``CAUSAL_BLOCK_ROWS`` runs in blocks of that many query rows, each
    over the keys up to its last row with the causal mask of that band (the fused SDPA kernel per
    block), so the keys after a block are never read. Measured on the 2-core Xeon for Kronos-small's
    attention (8 series, 8 heads, 400 rows): 11.5 ms per layer against 15 ms for the kernel's own
    ``is_causal`` path. Elsewhere the kernel's causal path.
    """
    s = q.shape[2]
    if q.is_cuda or s <= CAUSAL_BLOCK_ROWS:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    out = q.new_empty(q.shape[0], q.shape[1], s, v.shape[-1])
    band = torch.ones(s, s, dtype=torch.bool, device=q.device).tril_()  # [S, S]
    for start in range(0, s, CAUSAL_BLOCK_ROWS):
        end = min(s, start + CAUSAL_BLOCK_ROWS)
        out[:, :, start:end] = F.scaled_dot_product_attention(
            q[:, :, start:end], k[:, :, :end], v[:, :, :end], attn_mask=band[start:end, :end]
        )
    return out


@dataclass(frozen=True)
class _FusedBlock:
    norm1: RMSNorm
    norm2: RMSNorm
    qkv: PackedLinear  # [3d, d] + bias
    out: PackedLinear  # [d, d] + bias
    w13: PackedLinear  # [2f, d]
    w2: PackedLinear  # [d, f]
    inv_freq: Tensor  # [head_dim / 2]


class FusedBlocks:
    """Inference forward of a stack of :class:`TransformerBlock` (the predictor's transformer with
    its final norm, or the tokenizer's encoder or decoder)."""

    def __init__(
        self,
        blocks: torch.nn.ModuleList,
        final_norm: RMSNorm | None = None,
        *,
        pack: bool = True,
        residual_fp32: bool = False,
        quantize: Quantize | None = None,
    ) -> None:
        """``quantize="int8"``: the blocks' products in int8 (see :class:`PackedLinear`; opt-in).

        ``residual_fp32``: keep the residual stream (the hidden state between blocks and the adds
        of the attention and feed-forward outputs) in float32 while the products, attention and
        caches run in the weights' dtype; the output is cast back to the input's dtype after the
        final norm. Without it (or with float32 weights) every tensor is in the weights' dtype."""
        if len(blocks) == 0:
            raise ValueError("FusedBlocks needs at least one transformer block")
        self.final_norm = final_norm
        self.blocks: list[_FusedBlock] = []
        with torch.no_grad():
            for block in blocks:
                assert isinstance(block, TransformerBlock)
                attn = block.self_attn
                assert isinstance(attn, SelfAttention)
                self.blocks.append(
                    _FusedBlock(
                        norm1=block.norm1,
                        norm2=block.norm2,
                        qkv=PackedLinear(
                            torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
                            torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]),
                            pack=pack, quantize=quantize,
                        ),
                        out=PackedLinear(attn.out_proj.weight, attn.out_proj.bias, pack=pack, quantize=quantize),
                        w13=PackedLinear(
                            torch.cat([block.ffn.w1.weight, block.ffn.w3.weight]), pack=pack, quantize=quantize
                        ),
                        w2=PackedLinear(block.ffn.w2.weight, pack=pack, quantize=quantize),
                        inv_freq=_float32_inv_freq(attn.rotary.inv_freq),
                    )
                )
        self.packed = any(b.qkv.packed or b.w13.packed for b in self.blocks)
        first_attn = blocks[0].self_attn
        assert isinstance(first_attn, SelfAttention)
        self.n_heads, self.head_dim = first_attn.n_heads, first_attn.head_dim
        first = self.blocks[0].inv_freq
        self._shared_rotary = all(torch.equal(b.inv_freq, first) for b in self.blocks)
        self._attention_inputs = _attention_inputs
        self._output_and_ffn = _output_and_ffn
        self.compiled = False
        self.dtype = self.blocks[0].norm1.weight.dtype  # the products' dtype
        self.residual_fp32 = residual_fp32 and self.dtype != torch.float32

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        caches: list[KVCache] | None,
        attn_mask: Tensor | None = None,
        kv_len: int | None = None,
        *,
        kv_only: bool = False,
    ) -> Tensor | None:
        """x [N, S, d] at ``positions`` ([S] or [N, S]) -> output rows [N, S, d]; caches are updated.

        Without ``attn_mask`` this is a prefill: ``positions`` must be ``0..S-1`` and attention is
        causal (``caches=None``: a one-off pass that keeps nothing). With it ([N, 1, S, kv_len]),
        attention reads the first ``kv_len`` cache slots. ``kv_only``: only fill the caches (the last
        block then stops after its keys and values, and nothing is returned).
        """
        s = x.shape[1]

        def attend(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            k_all, v_all = (k, v) if caches is None else caches[i].update(positions, k, v)
            if attn_mask is None:
                assert k_all.shape[2] == s, "a prefill must start at position 0 of an empty cache"
                return causal_attention(q, k_all, v_all)  # [N, H, S, D]
            end = kv_len or k_all.shape[2]
            return masked_attention(q, k_all[:, :, :end], v_all[:, :, :end], attn_mask)

        def store_last(k: Tensor, v: Tensor) -> None:
            assert caches is not None, "kv_only needs caches to fill"
            caches[-1].update(positions, k, v)

        return self.run(x, positions, attend, store_last if kv_only else None)

    def run(
        self,
        x: Tensor,
        positions: Tensor,
        attend: Callable[[int, Tensor, Tensor, Tensor], Tensor],
        store_last: Callable[[Tensor, Tensor], None] | None = None,
    ) -> Tensor | None:
        """The blocks over x [N, S, d] at ``positions``, with attention left to the caller:
        ``attend(block_index, q, k, v)`` ([N, H, S, D] each, rotated) stores what it keeps and returns
        the attention output. With ``store_last`` the last block only hands its keys and values
        to it, and nothing is returned."""
        out_dtype, dtype = x.dtype, self.dtype
        if self.residual_fp32:
            x = x.float()
        tables = _rotary_tables(self.blocks[0].inv_freq, positions, dtype) if self._shared_rotary else None
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            cos, sin_signed = tables if tables is not None else _rotary_tables(blk.inv_freq, positions, dtype)
            q, k, v = self._attention_inputs(blk, x, cos, sin_signed)  # [N, H, S, D] each
            if store_last is not None and i == last:
                store_last(k, v)
                return None
            x = self._output_and_ffn(blk, x, attend(i, q, k, v))
        if self.final_norm is not None:
            return rms_norm(self.final_norm, x).to(out_dtype)
        return x.to(out_dtype)

    def compile(self) -> None:
        """Compile the per-block products and their elementwise neighbours with ``torch.compile``
        (fuses norm, bias, rotary, SwiGLU and residual passes into few kernels; attention and the
        caches stay eager). Shapes are dynamic: one compilation serves prefill and decode sizes."""
        self._attention_inputs = torch.compile(_attention_inputs, dynamic=True)
        self._output_and_ffn = torch.compile(_output_and_ffn, dynamic=True)
        self.compiled = True


def _attention_inputs(blk: _FusedBlock, x: Tensor, cos: Tensor, sin_signed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rotated queries and keys, and values, of rows x [N, S, d].  # [N, H, S, D] each (strided views)

    Queries and keys are rotated together, in the product's own row layout (one pass over both)."""
    n, s, _ = x.shape
    head_dim = blk.inv_freq.shape[0] * 2
    qkv = blk.qkv(rms_norm(blk.norm1, x)).view(n, s, 3, -1, head_dim)  # [N, S, 3, H, D]
    qk = _rotate(qkv[:, :, :2], cos, sin_signed).permute(2, 0, 3, 1, 4)  # [2, N, H, S, D]
    return qk[0], qk[1], qkv[:, :, 2].transpose(1, 2)


def _output_and_ffn(blk: _FusedBlock, x: Tensor, att: Tensor) -> Tensor:
    """The attention output projection and the SwiGLU feed-forward, each with its residual.  # [N, S, d]"""
    n, s, d = x.shape
    x = blk.out.plus(att.transpose(1, 2).reshape(n, s, d), x)  # x + out(att); a float32 x stays float32
    gate, up = blk.w13(rms_norm(blk.norm2, x)).chunk(2, dim=-1)
    hidden = F.silu(gate)
    return blk.w2.plus(hidden.mul_(up), x)


def rms_norm(norm: RMSNorm, x: Tensor) -> Tensor:
    """:class:`RMSNorm` with its output in the weight's dtype, also for a float32 residual ``x``
    under low-precision weights (the same arithmetic as ``norm(x)`` when ``x`` has that dtype; the
    temporaries are updated in place and no-op casts skipped: fewer operator calls per decode step)."""
    x32 = x if x.dtype == torch.float32 else x.float()
    normed = x32 * x32.pow(2).mean(dim=-1, keepdim=True).add_(norm.eps).rsqrt_()
    if normed.dtype != norm.weight.dtype:
        normed = normed.to(norm.weight.dtype)
    return normed.mul_(norm.weight)


def _float32_inv_freq(inv_freq: Tensor) -> Tensor:
    """The rotary frequencies in float32, also for a low-precision copy of a model.

    In bfloat16 the angles ``position * inv_freq`` would be computed in bfloat16, where integers
    above 256 are not exact (position 430 becomes 432), so every key past that position would be
    rotated to a wrong angle. When the stored frequencies are the standard ones rounded, the exact
    float32 values are used; otherwise the stored values, widened.
    """
    if inv_freq.dtype == torch.float32:
        return inv_freq
    exact = rotary_inv_freq(inv_freq.shape[0] * 2).to(inv_freq.device)
    return exact if torch.equal(exact.to(inv_freq.dtype), inv_freq) else inv_freq.float()


def _rotary_tables(inv_freq: Tensor, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and a sign-folded sin in ``dtype`` (angles in float32), shaped to broadcast over rows in
    the product layout [N, S, 2, H, D] (queries and keys of every head at once)."""
    cos, sin = rotary_cos_sin(inv_freq, positions)  # [S, D] or [N, S, D]
    cos, sin = cos.to(dtype), sin.to(dtype)
    half = sin.shape[-1] // 2
    sin_signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    return cos[..., None, None, :], sin_signed[..., None, None, :]  # [(N,) S, 1, 1, D]


def _rotate(x: Tensor, cos: Tensor, sin_signed: Tensor) -> Tensor:
    """:func:`kronos_core.layers.apply_rotary` with the sign folded into the table (bit-identical:
    ``-(b * s) == b * (-s)``), one pass fewer over ``x``. The swapped halves ``(b, a)`` are ``x``
    rolled by half the channels (one operator instead of a split and a concatenation)."""
    out = x * cos
    return out.add_(x.roll(x.shape[-1] // 2, dims=-1).mul_(sin_signed))
