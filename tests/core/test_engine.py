"""The KV-cached engine against the recompute path: same tokens, same logits, same forecasts."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from kronos_core import Kronos, KronosPredictor, KronosTokenizer, PredictorConfig, TokenizerConfig
from kronos_core.counter_rng import path_seeds, sample_inverse_cdf, uniforms
from kronos_core.engine import GenerationStats, KronosEngine, SamplingParams
from kronos_core.reference_generate import generate_tokens_recompute

GREEDY = SamplingParams(T=1.0, top_k=1, top_p=1.0)


def _random_pair(seed: int, d_model: int = 32, n_layers: int = 2, heads: int = 4) -> tuple[KronosTokenizer, Kronos]:
    torch.manual_seed(seed)
    tok = KronosTokenizer(
        TokenizerConfig(d_in=6, d_model=d_model, n_heads=heads, ff_dim=2 * d_model, n_enc_layers=2,
                        n_dec_layers=3, s1_bits=4, s2_bits=4, group_size=4)
    )
    model = Kronos(
        PredictorConfig(s1_bits=4, s2_bits=4, n_layers=n_layers, d_model=d_model, n_heads=heads,
                        ff_dim=2 * d_model, learn_te=bool(seed % 2))
    )
    with torch.no_grad():  # non-trivial norms and biases, like the golden fixtures
        for p in list(tok.parameters()) + list(model.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    return tok.eval(), model.eval()


def _inputs(rng: np.random.Generator, lengths: list[int], horizon: int):
    xs = [np.clip(rng.standard_normal((n, 6)), -5, 5).astype(np.float32) for n in lengths]
    stamps = []
    for n in lengths:
        minutes = (np.arange(n + horizon) + int(rng.integers(0, 1000))) * 5
        stamps.append(
            np.stack([minutes % 60, (minutes // 60) % 24, (minutes // 1440) % 7, 1 + (minutes // 1440) % 28,
                      np.full_like(minutes, 3)], axis=1).astype(np.float32)
        )
    return xs, [s[:n] for s, n in zip(stamps, lengths, strict=True)], [s[n:] for s, n in zip(stamps, lengths, strict=True)]


@pytest.mark.parametrize(
    ("seed", "lengths", "horizon", "max_context"),
    [
        (0, [20], 6, 64),  # fits: pure KV-cache path
        (1, [30, 11, 25], 7, 64),  # variable lengths, fits
        (2, [28], 10, 32),  # slides during generation
        (3, [40, 12], 5, 32),  # one row longer than max_context, one that fits
    ],
)
@pytest.mark.parametrize("decode_loop", ["dynamic", "fixed"])
def test_fast_tokens_equal_recompute_tokens(seed, lengths, horizon, max_context, decode_loop) -> None:
    tok, model = _random_pair(seed)
    engine = KronosEngine(model, tok, device="cpu", max_context=max_context, decode_loop=decode_loop)
    xs, x_st, y_st = _inputs(np.random.default_rng(seed), lengths, horizon)
    stats = GenerationStats()
    with torch.inference_mode():
        state = engine.prefill(xs, x_st, y_st, horizon, stats)
        _, fast = engine.run_horizon_tokens(state, horizon, GREEDY, stats=stats)  # [2, B, 1, H]
    for b, n in enumerate(lengths):
        x = torch.as_tensor(xs[b])[None]
        s1, s2 = tok.encode(x, half=True)
        stamps = torch.as_tensor(np.concatenate([x_st[b], y_st[b]]))[None]
        seq1, seq2 = generate_tokens_recompute(model, s1, s2, stamps, horizon, max_context, top_k=1, top_p=1.0)
        np.testing.assert_array_equal(fast[0, b, 0], seq1[0, n:].numpy())
        np.testing.assert_array_equal(fast[1, b, 0], seq2[0, n:].numpy())
    if any(n + horizon > max_context for n in lengths):
        assert stats.recompute_tokens > 0
    else:
        assert stats.recompute_tokens == 0


def test_cached_step_logits_match_full_pass() -> None:
    tok, model = _random_pair(5)
    engine = KronosEngine(model, tok, device="cpu", max_context=64)
    rng = np.random.default_rng(5)
    n, extra = 17, 6
    s1 = torch.as_tensor(rng.integers(0, 16, (2, n + extra)))
    s2 = torch.as_tensor(rng.integers(0, 16, (2, n + extra)))
    stamp = torch.as_tensor(_inputs(rng, [n + extra, n + extra], 0)[1][0])[None].repeat(2, 1, 1)
    with torch.inference_mode():
        full_logits, full_ctx = model.decode_s1(s1, s2, stamp)
        caches = engine.predictor_caches(2, 64)
        model.decode_s1(s1[:, :n], s2[:, :n], stamp[:, :n], positions=torch.arange(n), kv_caches=caches)
        for t in range(n, n + extra):
            pos = torch.full((2, 1), t)
            logits, h, _, _ = engine.step(s1[:, t : t + 1], s2[:, t : t + 1], stamp[:, t : t + 1], pos, caches)
            torch.testing.assert_close(logits, full_logits[:, t], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(h[:, 0], full_ctx[:, t], rtol=1e-4, atol=1e-5)


def test_one_step_s2_logits_match_decode_s2() -> None:
    tok, model = _random_pair(6)
    engine = KronosEngine(model, tok, device="cpu", max_context=64)
    rng = np.random.default_rng(6)
    s1 = torch.as_tensor(rng.integers(0, 16, (3, 12)))
    s2 = torch.as_tensor(rng.integers(0, 16, (3, 12)))
    nxt = torch.as_tensor(rng.integers(0, 16, (3, 1)))
    with torch.inference_mode():
        _, ctx = model.decode_s1(s1, s2, None)
        expected = model.decode_s2(ctx, nxt)[:, -1]
        k, v = model.dep_layer.cross_attn.project_kv(ctx, ctx)
        got = engine.s2_logits(nxt, ctx[:, -1], k, v, torch.full((3,), 12))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_variable_length_batch_equals_single_series_sampled() -> None:
    tok, model = _random_pair(7)
    engine = KronosEngine(model, tok, device="cpu", max_context=48)
    lengths, horizon = [40, 9, 30, 52], 8
    xs, x_st, y_st = _inputs(np.random.default_rng(7), lengths, horizon)
    params = SamplingParams(T=1.0, top_k=0, top_p=0.9, sample_count=3)
    seeds = [101, 102, 103, 104]
    batch = engine.generate(xs, x_st, y_st, horizon, params, seeds=seeds)
    for b in range(len(lengths)):
        single = engine.generate([xs[b]], [x_st[b]], [y_st[b]], horizon, params, seeds=[seeds[b]])
        np.testing.assert_allclose(batch[b], single[0], rtol=1e-4, atol=1e-5)
    # reordering the batch changes nothing for a series (draws are per series, not per batch)
    order = [2, 0, 3, 1]
    shuffled = engine.generate([xs[i] for i in order], [x_st[i] for i in order], [y_st[i] for i in order],
                               horizon, params, seeds=[seeds[i] for i in order])
    for pos, b in enumerate(order):
        np.testing.assert_allclose(shuffled[pos], batch[b], rtol=1e-4, atol=1e-5)


def test_seeded_sampling_is_reproducible_and_seed_dependent() -> None:
    tok, model = _random_pair(8)
    engine = KronosEngine(model, tok, device="cpu", max_context=64)
    xs, x_st, y_st = _inputs(np.random.default_rng(8), [24], 10)
    params = SamplingParams(T=1.0, top_p=0.95, sample_count=4)
    a = engine.generate(xs, x_st, y_st, 10, params, seeds=[5])
    b = engine.generate(xs, x_st, y_st, 10, params, seeds=[5])
    c = engine.generate(xs, x_st, y_st, 10, params, seeds=[6])
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a[0, 0], a[0, 1]), "paths of one series must differ"


def test_quantiles_are_ordered_and_bracket_the_median(bars, tiny_model, tiny_tokenizer) -> None:
    predictor = KronosPredictor(tiny_model, tiny_tokenizer, device="cpu", max_context=64)
    window = bars.iloc[200:250]
    future = bars["timestamps"].iloc[250:258]
    bands, mean = predictor.predict_quantiles(
        window[["open", "high", "low", "close", "volume", "amount"]], window["timestamps"], future, 8,
        quantile_levels=(0.1, 0.5, 0.9), sample_count=16, seed=3,
    )
    assert list(bands) == [0.1, 0.5, 0.9]
    lo, mid, hi = (bands[q].to_numpy() for q in (0.1, 0.5, 0.9))
    assert (lo <= mid).all() and (mid <= hi).all()
    assert (hi - lo).max() > 0, "16 sampled paths should not all coincide"
    assert list(mean.index) == list(future)
    samples = predictor.predict_samples(
        window[["open", "high", "low", "close", "volume", "amount"]], window["timestamps"], future, 8,
        sample_count=16, seed=3,
    )
    assert samples.shape == (16, 8, 6)
    np.testing.assert_allclose(np.quantile(samples, 0.5, axis=0), mid, rtol=1e-6)


def test_fast_predict_matches_recompute_predict_when_greedy(bars, tiny_model, tiny_tokenizer) -> None:
    fast = KronosPredictor(tiny_model, tiny_tokenizer, device="cpu", max_context=64)
    slow = KronosPredictor(tiny_model, tiny_tokenizer, device="cpu", max_context=64, engine="recompute")
    window = bars.iloc[1000:1060]
    future = bars["timestamps"].iloc[1060:1072]
    args = (window[["open", "high", "low", "close", "volume", "amount"]], window["timestamps"], future, 12)
    pd.testing.assert_frame_equal(
        fast.predict(*args, top_k=1, verbose=False), slow.predict(*args, top_k=1, verbose=False), rtol=1e-5
    )


def test_counter_rng_is_uniform_and_batch_independent() -> None:
    seeds = path_seeds(torch.arange(2000, dtype=torch.long), 3)
    u = uniforms(seeds, 7)
    assert u.shape == (6000,) and float(u.min()) >= 0.0 and float(u.max()) < 1.0
    counts = torch.histc(u.float(), bins=10, min=0, max=1)
    assert float(counts.min()) > 500 and float(counts.max()) < 700  # ~600 per bin
    np.testing.assert_array_equal(uniforms(seeds[10:20], 7).numpy(), u[10:20].numpy())
    probs = torch.tensor([[0.0, 0.25, 0.75, 0.0]])
    assert sample_inverse_cdf(probs, torch.tensor([0.0])).item() == 1
    assert sample_inverse_cdf(probs, torch.tensor([0.3])).item() == 2
    assert sample_inverse_cdf(probs, torch.tensor([0.999999])).item() == 2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_on_cuda_stays_close_to_fp32() -> None:
    tok, model = _random_pair(9)
    xs, x_st, y_st = _inputs(np.random.default_rng(9), [40, 33], 10)
    fp32 = KronosEngine(model, tok, device="cuda", max_context=64)
    bf16 = KronosEngine(model, tok, device="cuda", max_context=64, dtype=torch.bfloat16)
    a = fp32.generate(xs, x_st, y_st, 10, GREEDY)
    b = bf16.generate(xs, x_st, y_st, 10, GREEDY)
    assert np.isfinite(b).all()
    assert np.abs(a - b).mean() < 0.5


def test_prepacked_weights_give_the_same_tokens(monkeypatch) -> None:
    """The oneDNN-prepacked path (used for large models on CPU) against the plain products."""
    import kronos_core.packed_linear as packed_linear

    if not packed_linear.onednn_linear_available():
        pytest.skip("this torch build has no oneDNN linear")
    monkeypatch.setattr(packed_linear, "MIN_PACKED_WEIGHTS", 0)  # pack even the tiny test model
    tok, model = _random_pair(11)
    packed = KronosEngine(model, tok, device="cpu", max_context=48)
    plain = KronosEngine(model, tok, device="cpu", max_context=48, packed=False)
    assert packed.packed and not plain.packed
    xs, x_st, y_st = _inputs(np.random.default_rng(11), [30, 44, 12], 8)  # one row slides
    with torch.inference_mode():
        outs = []
        for eng in (packed, plain):
            state = eng.prefill(xs, x_st, y_st, 8, GenerationStats())
            outs.append(eng.run_horizon_tokens(state, 8, GREEDY, stats=GenerationStats()))
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-4, atol=1e-5)


def _sampled_tokens(engine: KronosEngine, xs, x_st, y_st, horizon: int, params: SamplingParams, **kw) -> np.ndarray:
    stats = GenerationStats()
    with torch.inference_mode():
        state = engine.prefill(xs, x_st, y_st, horizon, stats)
        _, tokens = engine.run_horizon_tokens(state, horizon, params, stats=stats, **kw)
    assert stats.step_tokens == sum(len(x) > 0 for x in xs) * params.sample_count * (horizon - 1)
    return tokens


@pytest.mark.parametrize("params", [SamplingParams(top_p=0.9, sample_count=3), SamplingParams(T=0.7, top_k=5)])
def test_fixed_shape_step_samples_what_the_dynamic_loop_samples(params) -> None:
    """The step a CUDA graph captures (every cache slot read, masked) draws the same tokens."""
    tok, model = _random_pair(8)
    xs, x_st, y_st = _inputs(np.random.default_rng(8), [30, 9, 21], 8)
    runs = {}
    for loop in ("dynamic", "fixed"):
        engine = KronosEngine(model, tok, device="cpu", max_context=64, decode_loop=loop)
        runs[loop] = _sampled_tokens(engine, xs, x_st, y_st, 8, params, seeds=[4, 5, 6])
        gen = torch.Generator().manual_seed(3)
        runs[loop + "-generator"] = _sampled_tokens(engine, xs, x_st, y_st, 8, params, generator=gen)
    np.testing.assert_array_equal(runs["fixed"], runs["dynamic"])
    np.testing.assert_array_equal(runs["fixed-generator"], runs["dynamic-generator"])
    assert not np.array_equal(runs["fixed"], runs["fixed-generator"])


def test_fixed_shape_step_leaves_the_prefilled_state_reusable() -> None:
    tok, model = _random_pair(9)
    engine = KronosEngine(model, tok, device="cpu", max_context=64, decode_loop="fixed")
    xs, x_st, y_st = _inputs(np.random.default_rng(9), [25, 14], 6)
    params = SamplingParams(top_p=0.8, sample_count=2)
    with torch.inference_mode():
        state = engine.prefill(xs, x_st, y_st, 6, GenerationStats())
        first = engine.run_horizon_tokens(state, 6, params, seeds=[1, 2], stats=GenerationStats())[1]
        again = engine.run_horizon_tokens(state, 6, params, seeds=[1, 2], stats=GenerationStats())[1]
    np.testing.assert_array_equal(first, again)


def test_uniforms_take_a_device_counter() -> None:
    seeds = path_seeds(torch.arange(5, dtype=torch.long) * 977 - 3, 2)
    for counter in (0, 1, 7, 12345, 2**40 + 3):
        expected = uniforms(seeds, counter)
        assert torch.equal(uniforms(seeds, torch.tensor(counter, dtype=torch.long)), expected)


@pytest.mark.parametrize(
    ("loop", "device", "message"), [("graphed", "cpu", "needs a CUDA device"), ("eager", "cpu", "decode_loop must")]
)
def test_decode_loop_is_checked(loop, device, message) -> None:
    tok, model = _random_pair(1)
    with pytest.raises(ValueError, match=message):
        KronosEngine(model, tok, device=device, decode_loop=loop)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replay_samples_what_the_eager_step_samples() -> None:
    tok, model = _random_pair(10)
    xs, x_st, y_st = _inputs(np.random.default_rng(10), [30, 9, 21], 8)
    params = SamplingParams(top_p=0.9, sample_count=2)
    fixed = KronosEngine(model, tok, device="cuda", max_context=64, decode_loop="fixed")
    graphed = KronosEngine(model, tok, device="cuda", max_context=64, decode_loop="graphed")
    want = _sampled_tokens(fixed, xs, x_st, y_st, 8, params, seeds=[1, 2, 3])
    for _ in range(2):  # the second call replays the captured graph with new inputs copied in
        np.testing.assert_array_equal(_sampled_tokens(graphed, xs, x_st, y_st, 8, params, seeds=[1, 2, 3]), want)
    assert graphed._graphs is not None and graphed._graphs.captures == 1


@pytest.mark.slow
@pytest.mark.skipif(
    not any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++")), reason="torch.compile on CPU needs a C++ compiler"
)
def test_compiled_blocks_sample_what_the_eager_blocks_sample() -> None:
    """torch.compile of the block products (meant for CUDA) computes the same function; checked on
    CPU so CI covers it (the first calls compile, which takes a while)."""
    tok, model = _random_pair(11)
    xs, x_st, y_st = _inputs(np.random.default_rng(11), [26, 14], 6)
    params = SamplingParams(top_p=0.9, sample_count=2)
    eager = KronosEngine(model, tok, device="cpu", max_context=64, packed=False, decode_loop="fixed")
    compiled = KronosEngine(model, tok, device="cpu", max_context=64, packed=False, decode_loop="fixed",
                            compile_blocks=True)
    want = _sampled_tokens(eager, xs, x_st, y_st, 6, params, seeds=[1, 2])
    np.testing.assert_array_equal(_sampled_tokens(compiled, xs, x_st, y_st, 6, params, seeds=[1, 2]), want)
    assert compiled.compiled and not eager.compiled


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_graphed_cuda_engine_matches_recompute_greedy() -> None:
    tok, model = _random_pair(12)
    lengths, horizon = [30, 11, 25], 7
    engine = KronosEngine(model, tok, device="cuda", max_context=64, compile_blocks=True)  # moves both to CUDA
    xs, x_st, y_st = _inputs(np.random.default_rng(12), lengths, horizon)
    fast = _sampled_tokens(engine, xs, x_st, y_st, horizon, GREEDY, seeds=[0, 1, 2])
    for b, n in enumerate(lengths):
        x = torch.as_tensor(xs[b], device="cuda")[None]
        s1, s2 = tok.encode(x, half=True)
        stamps = torch.as_tensor(np.concatenate([x_st[b], y_st[b]]), device="cuda")[None]
        seq1, seq2 = generate_tokens_recompute(model, s1, s2, stamps, horizon, 64, top_k=1, top_p=1.0)
        np.testing.assert_array_equal(fast[0, b, 0], seq1[0, n:].cpu().numpy())
        np.testing.assert_array_equal(fast[1, b, 0], seq2[0, n:].cpu().numpy())


def test_low_precision_engine_rotates_positions_past_256_exactly() -> None:
    """bfloat16 holds integers exactly only up to 256: the engine computes rotary angles in float32."""
    from kronos_core.fused_step import _rotary_tables
    from kronos_core.layers import rotary_cos_sin, rotary_inv_freq

    tok, model = _random_pair(13)
    engine = KronosEngine(model, tok, device="cpu", max_context=512, dtype=torch.bfloat16)
    blk = engine._fused.blocks[0]
    assert blk.inv_freq.dtype == torch.float32
    positions = torch.tensor([5, 257, 301, 430])
    cos, sin_signed = _rotary_tables(blk.inv_freq, positions, torch.bfloat16)
    want_cos, want_sin = rotary_cos_sin(rotary_inv_freq(blk.inv_freq.shape[0] * 2), positions)
    assert cos.dtype == torch.bfloat16
    assert cos.shape == (4, 1, 1, want_cos.shape[-1])  # [S, 1, 1, D]: broadcast over the q/k pair and heads
    assert torch.equal(cos[:, 0, 0], want_cos.to(torch.bfloat16))
    half = want_sin.shape[-1] // 2
    assert torch.equal(sin_signed[:, 0, 0, half:], want_sin[:, half:].to(torch.bfloat16))


def test_shared_prefix_attention_equals_attention_over_the_concatenated_keys() -> None:
    from kronos_core.fused_step import masked_attention
    from kronos_core.shared_prefix import shared_prefix_attention

    gen = torch.Generator().manual_seed(0)
    series, paths, heads, n_q, dim, prefix, suffix = 3, 4, 2, 5, 8, 11, 6
    n = series * paths
    q = torch.randn(n, heads, n_q, dim, generator=gen)
    pk, pv = torch.randn(series, heads, prefix, dim, generator=gen), torch.randn(series, heads, prefix, dim, generator=gen)
    sk, sv = torch.randn(n, heads, suffix, dim, generator=gen), torch.randn(n, heads, suffix, dim, generator=gen)
    prefix_len = torch.tensor([11, 4, 7])
    prefix_mask = (torch.arange(prefix) < prefix_len[:, None])[:, None, None, :]  # [B, 1, 1, P]
    suffix_mask = torch.ones(n_q, suffix, dtype=torch.bool).tril(1)[None, None]  # [1, 1, Q, G]
    got = shared_prefix_attention(q, pk, pv, prefix_mask, sk, sv, suffix_mask, paths)

    k_all = torch.cat([pk.repeat_interleave(paths, 0), sk], dim=2)
    v_all = torch.cat([pv.repeat_interleave(paths, 0), sv], dim=2)
    mask = torch.cat(
        [prefix_mask.repeat_interleave(paths, 0).expand(n, 1, n_q, prefix), suffix_mask.expand(n, 1, n_q, suffix)], dim=-1
    )
    torch.testing.assert_close(got, masked_attention(q, k_all, v_all, mask), rtol=1e-5, atol=1e-6)


def test_sample_paths_share_the_context_cache_by_default_on_cpu() -> None:
    tok, model = _random_pair(14)
    xs, x_st, y_st = _inputs(np.random.default_rng(14), [22, 35], 5)
    engine = KronosEngine(model, tok, device="cpu", max_context=64)
    stats = GenerationStats()
    engine.generate(xs, x_st, y_st, 5, SamplingParams(sample_count=4), seeds=[1, 2], stats=stats)
    engine.generate(xs, x_st, y_st, 5, SamplingParams(sample_count=1), seeds=[1, 2], stats=stats)
    xs, x_st, y_st = _inputs(np.random.default_rng(14), [22, 35], 40)
    engine.generate(xs, x_st, y_st, 40, SamplingParams(sample_count=4), seeds=[1, 2], stats=stats)  # slides
    assert stats.decode_loops == ["fixed+shared", "dynamic", "dynamic"]


def test_decoding_paths_against_one_copy_of_the_context_equals_per_path_copies() -> None:
    tok, model = _random_pair(15)
    engine = KronosEngine(model, tok, device="cpu", max_context=40)
    rng = np.random.default_rng(15)
    paths, horizon, lengths = 3, 6, torch.tensor([30, 12, 38])  # 38 + 6 > 40: that window is cut
    length_t = lengths.repeat_interleave(paths)
    tok1, tok2 = (torch.as_tensor(rng.integers(0, 16, (len(length_t), 44))) for _ in range(2))
    for toks in (tok1, tok2):
        for b, n in enumerate(lengths.tolist()):  # the paths of a series share their context tokens
            toks[b * paths + 1 : (b + 1) * paths, :n] = toks[b * paths, :n]
    with torch.inference_mode():
        shared = engine._decode_horizon(tok1, tok2, length_t, horizon, paths, GenerationStats(), None)
        copies = engine._decode_horizon(tok1, tok2, length_t, horizon, paths, GenerationStats(), None,
                                        share_prefix=False)
    torch.testing.assert_close(shared, copies, rtol=1e-5, atol=1e-5)
