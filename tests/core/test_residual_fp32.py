"""bf16 with a float32 residual stream (``residual_fp32``): the stream really is float32, the norms
are the module's arithmetic, and float32 engines are unchanged by the option."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kronos_core import fused_step
from kronos_core.engine import KronosEngine, SamplingParams
from kronos_core.fused_step import rms_norm
from kronos_core.layers import RMSNorm
from tests.core.test_engine import _inputs, _random_pair

GREEDY = SamplingParams(T=1.0, top_k=1, top_p=1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_is_the_modules_arithmetic(dtype) -> None:
    norm = RMSNorm(16).to(dtype)
    with torch.no_grad():
        norm.weight.add_(torch.randn(16).to(dtype))
    x = torch.randn(3, 5, 16).to(dtype)
    assert torch.equal(rms_norm(norm, x), norm(x))
    out = rms_norm(norm, x.float())  # a float32 stream under bf16 weights: the output in the weights' dtype
    assert out.dtype == dtype


def test_float32_engine_ignores_the_option() -> None:
    tok, model = _random_pair(4)
    xs, x_st, y_st = _inputs(np.random.default_rng(4), [30, 17], 6)
    plain = KronosEngine(model, tok, device="cpu", max_context=64)
    with_opt = KronosEngine(model, tok, device="cpu", max_context=64, residual_fp32=True)
    assert not with_opt.residual_fp32
    np.testing.assert_array_equal(
        with_opt.generate(xs, x_st, y_st, 6, GREEDY, seeds=[1, 2]), plain.generate(xs, x_st, y_st, 6, GREEDY, seeds=[1, 2])
    )


@pytest.mark.parametrize("residual", [False, True])
def test_bf16_residual_stream_dtype(monkeypatch, residual) -> None:
    """Every block's residual input is float32 with the option and bfloat16 without; outputs and
    caches stay bfloat16."""
    seen: list[torch.dtype] = []
    real = fused_step._output_and_ffn

    def spy(blk, x, att):  # type: ignore[no-untyped-def]
        seen.append(x.dtype)
        out = real(blk, x, att)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(fused_step, "_output_and_ffn", spy)
    tok, model = _random_pair(5)
    engine = KronosEngine(model, tok, device="cpu", max_context=64, dtype=torch.bfloat16, residual_fp32=residual)
    xs, x_st, y_st = _inputs(np.random.default_rng(5), [30, 17], 6)
    out = engine.generate(xs, x_st, y_st, 6, GREEDY, seeds=[1, 2])
    assert np.isfinite(out).all()
    assert set(seen) == {torch.float32 if residual else torch.bfloat16}
    assert engine.residual_fp32 is residual


def test_bf16_residual_engine_stays_close_to_float32() -> None:
    """The greedy forecasts of both bf16 variants stay near float32's on a random model (the bench,
    scripts/bench_bf16_residual.py, measures how near)."""
    tok, model = _random_pair(6)
    xs, x_st, y_st = _inputs(np.random.default_rng(6), [40, 33, 25], 6)
    want = KronosEngine(model, tok, device="cpu", max_context=64).generate(xs, x_st, y_st, 6, GREEDY, seeds=[0, 1, 2])
    for residual in (False, True):
        engine = KronosEngine(model, tok, device="cpu", max_context=64, dtype=torch.bfloat16, residual_fp32=residual)
        got = engine.generate(xs, x_st, y_st, 6, GREEDY, seeds=[0, 1, 2])
        assert np.abs(got - want).mean() < 0.05 * np.abs(want).mean()


def test_fp32_tokenizer_under_a_bf16_predictor_gives_float32_context_tokens(tiny_model, tiny_tokenizer, bars) -> None:
    """``tokenizer_fp32``: the context ids are float32's exactly (bf16's tokenizer flips some); the
    predictor runs in bf16; incremental sessions (pool caches in the tokenizer's dtype) work."""
    from kronos_core.engine import GenerationStats
    from kronos_core.stream_types import SeriesWindow
    from kronos_core.streaming import StreamConfig, StreamingForecaster

    values = bars[["open", "high", "low", "close", "volume", "amount"]].to_numpy(np.float64)
    xs = [((values[o : o + 50] - values[o : o + 50].mean(0)) / (values[o : o + 50].std(0) + 1e-5)).astype(np.float32)
          for o in range(0, 400, 40)]
    _, x_st, y_st = _inputs(np.random.default_rng(7), [50] * len(xs), 4)
    ids = {}
    for name, kw in {"fp32": {}, "bf16": {"dtype": torch.bfloat16},
                     "bf16+tok32": {"dtype": torch.bfloat16, "tokenizer_fp32": True}}.items():
        engine = KronosEngine(tiny_model, tiny_tokenizer, device="cpu", max_context=64, **kw)
        with torch.inference_mode():
            state = engine.prefill(xs, x_st, y_st, 4, GenerationStats())
        ids[name] = state.tok1[:, :50].numpy()
        if name == "bf16+tok32":
            assert engine.model.head.proj_s1.weight.dtype == torch.bfloat16
            assert engine.tokenizer_dtype == torch.float32
            fc = StreamingForecaster(engine, StreamConfig(mode="incremental", sampling=GREEDY), model_version="t")
            ts = bars["timestamps"].to_numpy("datetime64[ns]")
            state_in = None
            for i in range(100, 103):
                w = SeriesWindow("S", values[i - 40 : i + 1], ts[i - 40 : i + 1], ts[i + 1 : i + 5], seed=i,
                                 token_state=state_in)
                (f,) = fc.forecast([w], 4)
                state_in = f.token_state
                assert np.isfinite(f.mean).all()
    np.testing.assert_array_equal(ids["bf16+tok32"], ids["fp32"])
