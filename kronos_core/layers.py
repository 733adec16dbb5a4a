"""Transformer building blocks shared by the tokenizer and the predictor.

Small pieces, each testable alone: RMSNorm, the SwiGLU feed-forward, rotary helpers
(plain functions plus a module that only owns the ``inv_freq`` buffer of the published
state dict), causal self-attention with optional KV-cache / explicit positions / mask
hooks, the dependency-aware cross-attention and the pre-norm transformer block.

Attention masks follow ``torch.nn.functional.scaled_dot_product_attention``: a boolean
mask is True where a query may attend to a key. Padding masks follow upstream Kronos:
non-zero / True marks a padded position.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 and cast back, then scaled by ``weight``."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``, no biases."""

    def __init__(self, d_model: int, ff_dim: int, dropout_p: float = 0.0) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, ff_dim, bias=False)
        self.w3 = nn.Linear(d_model, ff_dim, bias=False)
        self.w2 = nn.Linear(ff_dim, d_model, bias=False)
        self.ffn_dropout = nn.Dropout(dropout_p)

    def forward(self, x: Tensor) -> Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


# ----------------------------------------------------------------------------- rotary


def rotary_inv_freq(head_dim: int, base: float = 10000.0) -> Tensor:
    """Inverse frequencies ``base ** (-2i / head_dim)`` for ``i < head_dim / 2``.  # [head_dim // 2]"""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))


def rotary_cos_sin(inv_freq: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
    """Cos/sin tables for integer ``positions`` of shape [S] or [B, S].

    Returns tensors of shape [..., S, head_dim] (the half-size frequency table repeated
    twice, the "rotate half" layout).
    """
    angles = positions.to(inv_freq.dtype).unsqueeze(-1) * inv_freq  # [..., S, D/2]
    angles = torch.cat((angles, angles), dim=-1)  # [..., S, D]
    return angles.cos(), angles.sin()


def rotate_half(x: Tensor) -> Tensor:
    """Map the channel halves ``(a, b)`` to ``(-b, a)``."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` [B, H, S, D] by tables of shape [S, D] or [B, S, D]."""
    if cos.dim() == 2:
        cos, sin = cos[None, None], sin[None, None]  # [1, 1, S, D]
    else:
        cos, sin = cos[:, None], sin[:, None]  # [B, 1, S, D]
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """Owns the ``inv_freq`` buffer (part of the published state dict) and makes cos/sin tables.

    The tables are computed from the *stored* ``inv_freq``, so a checkpoint's values are used.
    """

    inv_freq: Tensor

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.register_buffer("inv_freq", rotary_inv_freq(head_dim))

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        return rotary_cos_sin(self.inv_freq, positions)


# ----------------------------------------------------------------------------- attention


class KVCacheLike(Protocol):
    """What self-attention needs from a per-layer KV cache (the engine provides one).

    ``update`` stores the new, already rotated keys and values at ``positions`` and returns
    every key and value the new queries may look at.
    """

    def update(self, positions: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """positions: [S] or [B, S]; k, v: [B, H, S, D]; returns keys/values [B, H, S_kv, D]."""
        ...


def causal_mask(q_len: int, kv_len: int, device: torch.device | None = None) -> Tensor:
    """Bottom-right aligned causal mask [q_len, kv_len]: query i sees keys ``<= kv_len - q_len + i``."""
    offset = kv_len - q_len
    rows = torch.arange(q_len, device=device).unsqueeze(1)
    cols = torch.arange(kv_len, device=device).unsqueeze(0)
    return cols <= rows + offset


def padding_to_attn_mask(padding_mask: Tensor, q_len: int, causal: bool) -> Tensor:
    """Turn a key padding mask [B, S] (True/non-zero = padded) into an SDPA mask [B, 1, S_q, S].

    Each query may always attend to its own position, so a padded row never ends up with
    an all-masked softmax (which would produce NaN).
    """
    kv_len = padding_mask.shape[-1]
    keep = (padding_mask == 0)[:, None, None, :]  # [B, 1, 1, S]
    if causal:
        keep = keep & causal_mask(q_len, kv_len, padding_mask.device)
    if q_len == kv_len:
        keep = keep | torch.eye(q_len, dtype=torch.bool, device=padding_mask.device)
    return keep


def _split_heads(x: Tensor, n_heads: int) -> Tensor:
    b, s, d = x.shape
    return x.view(b, s, n_heads, d // n_heads).transpose(1, 2)  # [B, H, S, D]


def _merge_heads(x: Tensor) -> Tensor:
    b, h, s, d = x.shape
    return x.transpose(1, 2).contiguous().view(b, s, h * d)  # [B, S, H*D]


class SelfAttention(nn.Module):
    """Causal multi-head self-attention with rotary positions (upstream ``MultiHeadAttentionWithRoPE``).

    Defaults reproduce upstream exactly: positions ``0..S-1`` and a causal mask. Hooks for
    incremental decoding, all optional:

    - ``positions`` [S] or [B, S]: absolute positions of the rows of ``x`` for the rotary
      embedding (e.g. ``torch.arange(start, start + S)``).
    - ``kv_cache``: an object with ``update(positions, k, v) -> (k_all, v_all)``; the rotated
      keys/values of ``x`` are stored and attention runs over everything it returns.
    - ``attn_mask``: boolean SDPA mask (True = may attend), broadcastable to
      [B, H, S, S_kv]; replaces the built-in causal mask.
    - ``padding_mask`` [B, S_kv]: upstream-style key padding (True = padded), combined with
      the causal mask.

    Without ``attn_mask`` and with a cache, a single query row attends to every returned key
    and longer queries get a bottom-right aligned causal mask.
    """

    def __init__(self, d_model: int, n_heads: int, attn_dropout_p: float = 0.0, resid_dropout_p: float = 0.0):
        super().__init__()
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.rotary = RotaryEmbedding(self.head_dim)
        self.attn_dropout_p = attn_dropout_p
        self.resid_dropout = nn.Dropout(resid_dropout_p)

    def forward(
        self,
        x: Tensor,  # [B, S, d_model]
        *,
        positions: Tensor | None = None,
        kv_cache: KVCacheLike | None = None,
        attn_mask: Tensor | None = None,
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        seq_len = x.shape[1]
        q = _split_heads(self.q_proj(x), self.n_heads)  # [B, H, S, D]
        k = _split_heads(self.k_proj(x), self.n_heads)  # [B, H, S, D]
        v = _split_heads(self.v_proj(x), self.n_heads)  # [B, H, S, D]

        if positions is None:
            positions = torch.arange(seq_len, device=x.device)
        cos, sin = self.rotary(positions)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(positions, k, v)  # [B, H, S_kv, D]

        is_causal = False
        if attn_mask is None:
            if padding_mask is not None:
                attn_mask = padding_to_attn_mask(padding_mask, seq_len, causal=True)
            elif kv_cache is None or k.shape[2] == seq_len:
                is_causal = True
            elif seq_len > 1:
                attn_mask = causal_mask(seq_len, k.shape[2], x.device)

        out = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attn_mask,
            dropout_p=self.attn_dropout_p if self.training else 0.0,
            is_causal=is_causal,
        )  # [B, H, S, D]
        return self.resid_dropout(self.out_proj(_merge_heads(out)))


class CrossAttention(nn.Module):
    """Rotary cross-attention of the dependency-aware layer (upstream ``MultiHeadCrossAttentionWithRoPE``).

    Upstream semantics, reproduced on purpose:

    - Rotary positions come from the *query* length only: queries and keys are both rotated
      with positions ``0..S_q-1``. With ``S_q == S_kv`` every row keeps its own position; with a
      one-row query (the generation step) every key gets position 0, i.e. no rotation at all
      (cos 0 = 1, sin 0 = 0, so skipping the rotation is bit-identical). Other length pairs
      are rejected, as upstream's broadcasting fails on them.
    - The causal flag is the module's ``training`` flag. In eval mode nothing is masked, so
      even a full-length query row ``t`` sees keys after ``t``. In training mode the mask is
      top-left aligned (query ``i`` sees keys ``<= i``), so a one-row query would only see key 0.

    ``is_causal`` overrides the training-flag rule when given.
    """

    def __init__(self, d_model: int, n_heads: int, attn_dropout_p: float = 0.0, resid_dropout_p: float = 0.0):
        super().__init__()
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.rotary = RotaryEmbedding(self.head_dim)
        self.attn_dropout_p = attn_dropout_p
        self.resid_dropout = nn.Dropout(resid_dropout_p)

    def project_kv(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Key/value projections, split into heads and not rotated.  # [B, H, S_kv, D] each"""
        return _split_heads(self.k_proj(key), self.n_heads), _split_heads(self.v_proj(value), self.n_heads)

    def attend(
        self,
        query: Tensor,  # [B, S_q, d_model]
        k: Tensor,  # [B, H, S_kv, D], from project_kv
        v: Tensor,  # [B, H, S_kv, D], from project_kv
        *,
        padding_mask: Tensor | None = None,
        is_causal: bool | None = None,
    ) -> Tensor:
        """Attention of ``query`` over pre-projected keys/values (lets an engine cache ``project_kv``)."""
        q_len, kv_len = query.shape[1], k.shape[2]
        if q_len not in (1, kv_len):
            raise ValueError(
                f"cross-attention needs a one-row query or one row per key, got {q_len} rows for {kv_len} keys"
            )
        q = _split_heads(self.q_proj(query), self.n_heads)  # [B, H, S_q, D]
        cos, sin = self.rotary(torch.arange(q_len, device=query.device))  # [S_q, D]
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)  # one-row query: cos/sin broadcast over all keys (position 0)

        causal = self.training if is_causal is None else is_causal
        attn_mask: Tensor | None = None
        if causal:
            attn_mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril()
        if padding_mask is not None:
            keep = (padding_mask == 0)[:, None, None, :]  # [B, 1, 1, S_kv]
            attn_mask = keep if attn_mask is None else keep & attn_mask
        out = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attn_mask,
            dropout_p=self.attn_dropout_p if self.training else 0.0,
        )  # [B, H, S_q, D]
        return self.resid_dropout(self.out_proj(_merge_heads(out)))

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        padding_mask: Tensor | None = None,
        *,
        is_causal: bool | None = None,
    ) -> Tensor:
        k, v = self.project_kv(key, value)
        return self.attend(query, k, v, padding_mask=padding_mask, is_causal=is_causal)


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))`` then ``x + ffn(norm2(x))``."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        ff_dim: int,
        ffn_dropout_p: float = 0.0,
        attn_dropout_p: float = 0.0,
        resid_dropout_p: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = RMSNorm(d_model)
        self.self_attn = SelfAttention(d_model, n_heads, attn_dropout_p, resid_dropout_p)
        self.norm2 = RMSNorm(d_model)
        self.ffn = FeedForward(d_model, ff_dim, ffn_dropout_p)

    def forward(
        self,
        x: Tensor,  # [B, S, d_model]
        *,
        positions: Tensor | None = None,
        kv_cache: KVCacheLike | None = None,
        attn_mask: Tensor | None = None,
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        x = x + self.self_attn(
            self.norm1(x), positions=positions, kv_cache=kv_cache, attn_mask=attn_mask, padding_mask=padding_mask
        )
        return x + self.ffn(self.norm2(x))
