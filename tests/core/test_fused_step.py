"""Pieces of the fused inference stack against the plain operations they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kronos_core.fused_step as fused_step
from kronos_core.fused_step import causal_attention
from kronos_core.packed_linear import PackedLinear, onednn_linear_available


@pytest.mark.parametrize("rows", [5, 64, 150])
def test_blocked_causal_attention_equals_the_causal_kernel(rows: int) -> None:
    gen = torch.Generator().manual_seed(rows)
    q, k, v = (torch.randn(2, 3, rows, 8, generator=gen) for _ in range(3))
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(causal_attention(q, k, v), want, rtol=1e-5, atol=1e-6)


def test_blocked_causal_attention_reads_no_later_key(monkeypatch) -> None:
    """Changing keys and values after row i leaves rows <= i untouched, block edges included."""
    monkeypatch.setattr(fused_step, "CAUSAL_BLOCK_ROWS", 4)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 13, 4, generator=gen) for _ in range(3))
    base = causal_attention(q, k, v)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 7:] += 1.0
    v2[:, :, 7:] -= 1.0
    assert torch.equal(causal_attention(q, k2, v2)[:, :, :7], base[:, :, :7])


@pytest.mark.parametrize("rows", [3, 200])
def test_fused_residual_add_is_the_plain_sum(monkeypatch, rows: int) -> None:
    import kronos_core.packed_linear as packed_linear

    if not onednn_linear_available():
        pytest.skip("this torch build has no oneDNN linear")
    monkeypatch.setattr(packed_linear, "MIN_PACKED_WEIGHTS", 0)
    gen = torch.Generator().manual_seed(1)
    w, b = torch.randn(24, 16, generator=gen), torch.randn(24, generator=gen)
    x, other = torch.randn(2, rows, 16, generator=gen), torch.randn(2, rows, 24, generator=gen)
    lin = PackedLinear(w, b)
    assert lin.packed
    with torch.no_grad():
        assert torch.equal(lin.plus(x, other), other + lin(x))
        plain = PackedLinear(w, b, pack=False)
        torch.testing.assert_close(plain.plus(x, other), other + F.linear(x, w, b))


def test_int8_products_stay_within_the_quantization_error() -> None:
    gen = torch.Generator().manual_seed(2)
    w, b = torch.randn(32, 64, generator=gen), torch.randn(32, generator=gen)
    x = torch.randn(5, 7, 64, generator=gen)
    lin = PackedLinear(w, b, quantize="int8")
    assert lin.int8 is not None and not lin.packed
    with torch.no_grad():
        got, want = lin(x), F.linear(x, w, b)
    rel = float((got - want).norm() / want.norm())
    assert 0 < rel < 0.05  # int8: moved, but only by the rounding of 8-bit weights and inputs
    with pytest.raises(ValueError, match="int8"):
        PackedLinear(w.bfloat16(), quantize="int8")


def test_int8_engine_is_opt_in_and_close_to_fp32() -> None:
    import numpy as np

    from kronos_core.engine import KronosEngine, SamplingParams
    from kronos_core.presets import build_pair

    tok, model = build_pair("Kronos-tiny", seed=3)
    fp32 = KronosEngine(model, tok, max_context=64)
    int8 = KronosEngine(model, tok, max_context=64, quantize="int8")
    assert fp32.quantize is None and int8.quantize == "int8"
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((30, 6)).astype(np.float32) for _ in range(2)]
    st = np.zeros((36, 5), dtype=np.float32)
    greedy = SamplingParams(top_k=1)
    a = fp32.generate(xs, [st[:30]] * 2, [st[30:]] * 2, 6, greedy)
    b = int8.generate(xs, [st[:30]] * 2, [st[30:]] * 2, 6, greedy)
    assert a.shape == b.shape and np.isfinite(b).all()
    assert np.abs(a - b).mean() < 0.5
    with pytest.raises(ValueError, match="float32"):
        KronosEngine(model, tok, max_context=64, quantize="int8", dtype=torch.bfloat16)


def test_compiling_prepacked_weights_is_refused_with_what_to_do(monkeypatch) -> None:
    import kronos_core.packed_linear as packed_linear
    from kronos_core.engine import KronosEngine
    from kronos_core.presets import build_pair

    if not onednn_linear_available():
        pytest.skip("this torch build has no oneDNN linear")
    monkeypatch.setattr(packed_linear, "MIN_PACKED_WEIGHTS", 0)
    tok, model = build_pair("Kronos-tiny", seed=4)
    with pytest.raises(ValueError, match="packed=False"):
        KronosEngine(model, tok, max_context=64, compile_blocks=True)
