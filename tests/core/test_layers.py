"""Building blocks and the hooks the KV-cached engine relies on (positions, caches, masks)."""

from __future__ import annotations

import torch
from torch import Tensor

from kronos_core import build_model
from kronos_core.layers import (
    CrossAttention,
    RMSNorm,
    SelfAttention,
    apply_rotary,
    causal_mask,
    rotary_cos_sin,
    rotary_inv_freq,
)


class ConcatCache:
    """The simplest per-layer cache: keep every key/value written so far, in order."""

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def update(self, positions: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


def _seeded_attention(seed: int = 0) -> SelfAttention:
    torch.manual_seed(seed)
    return SelfAttention(32, 4).eval()


def test_rmsnorm_matches_definition() -> None:
    norm = RMSNorm(8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 8)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)


def test_rotary_position_zero_is_exactly_the_identity() -> None:
    x = torch.randn(2, 4, 1, 8)
    cos, sin = rotary_cos_sin(rotary_inv_freq(8), torch.zeros(1, dtype=torch.long))
    assert torch.equal(apply_rotary(x, cos, sin), x)


def test_rotary_scores_depend_only_on_relative_position() -> None:
    inv_freq = rotary_inv_freq(8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(pq: int, pk: int) -> Tensor:
        cq, sq = rotary_cos_sin(inv_freq, torch.tensor([pq]))
        ck, sk = rotary_cos_sin(inv_freq, torch.tensor([pk]))
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum()

    torch.testing.assert_close(score(5, 2), score(13, 10))


def test_explicit_causal_mask_equals_default() -> None:
    attn, x = _seeded_attention(), torch.randn(2, 7, 32)
    torch.testing.assert_close(attn(x, attn_mask=causal_mask(7, 7)), attn(x))


def test_cache_and_positions_reproduce_the_full_pass() -> None:
    attn, x = _seeded_attention(), torch.randn(2, 9, 32)
    full = attn(x)
    cache = ConcatCache()
    prefix = attn(x[:, :5], kv_cache=cache, positions=torch.arange(5))  # prefill
    steps = [attn(x[:, t : t + 1], kv_cache=cache, positions=torch.tensor([t])) for t in range(5, 9)]
    torch.testing.assert_close(torch.cat([prefix, *steps], dim=1), full, rtol=1e-5, atol=1e-6)


def test_chunked_cache_uses_bottom_right_causal_mask() -> None:
    attn, x = _seeded_attention(), torch.randn(1, 8, 32)
    cache = ConcatCache()
    first = attn(x[:, :3], kv_cache=cache)
    rest = attn(x[:, 3:], kv_cache=cache, positions=torch.arange(3, 8))
    torch.testing.assert_close(torch.cat([first, rest], dim=1), attn(x), rtol=1e-5, atol=1e-6)


def test_left_padding_with_per_row_positions() -> None:
    attn, x = _seeded_attention(), torch.randn(1, 6, 32)
    pad = 3
    padded = torch.cat([torch.zeros(1, pad, 32), x], dim=1)  # [1, 9, 32]
    padding_mask = torch.tensor([[1] * pad + [0] * 6])
    positions = (torch.arange(9) - pad).clamp(min=0)[None]  # [1, 9]
    out = attn(padded, positions=positions, padding_mask=padding_mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, pad:], attn(x), rtol=1e-5, atol=1e-6)


def test_predictor_decode_s1_with_caches_matches_recompute(tiny_model, golden) -> None:
    model, s1, s2, stamp = tiny_model, golden["tok_encode_s1"], golden["tok_encode_s2"], golden["stamp"]
    with torch.no_grad():
        full_logits, full_ctx = model.decode_s1(s1, s2, stamp)
        caches = [ConcatCache() for _ in range(model.n_layers)]
        logits, ctx = model.decode_s1(s1[:, :12], s2[:, :12], stamp[:, :12], kv_caches=caches)
        outs = [(logits, ctx)]
        for t in range(12, 20):
            sl = slice(t, t + 1)
            outs.append(model.decode_s1(s1[:, sl], s2[:, sl], stamp[:, sl], kv_caches=caches,
                                        positions=torch.tensor([t])))
    torch.testing.assert_close(torch.cat([o[0] for o in outs], 1), full_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat([o[1] for o in outs], 1), full_ctx, rtol=1e-4, atol=1e-5)


def test_cross_attention_one_row_query_in_training_mode_sees_only_key_zero() -> None:
    torch.manual_seed(0)
    attn = CrossAttention(32, 4).train()  # upstream: causal flag = training flag, top-left aligned
    query, keys = torch.randn(2, 1, 32), torch.randn(2, 5, 32)
    out = attn(query, keys, keys)
    # attending to key 0 alone returns its value row
    expected = attn.out_proj(attn.v_proj(keys[:, :1]))
    torch.testing.assert_close(out, expected)
    attn.eval()
    assert not torch.allclose(attn(query, keys, keys), expected)


def test_cross_attention_attend_with_cached_projections_equals_forward() -> None:
    torch.manual_seed(0)
    attn = CrossAttention(32, 4).eval()
    query, keys = torch.randn(2, 1, 32), torch.randn(2, 6, 32)
    k, v = attn.project_kv(keys, keys)
    torch.testing.assert_close(attn.attend(query, k, v), attn(query, keys, keys))


def test_dropout_free_model_is_deterministic_in_train_mode() -> None:
    model = build_model("Kronos-tiny", seed=0, kind="predictor").train()
    ids = torch.randint(0, 32, (2, 6))
    a = model(ids, ids, use_teacher_forcing=True, s1_targets=ids)
    b = model(ids, ids, use_teacher_forcing=True, s1_targets=ids)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
