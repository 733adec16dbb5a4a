"""Floating-point operations of one forecast, counted from the model configs.

A pure function of the shapes: what a forecast needs with KV caches (the algorithm of
:class:`~kronos_core.engine.KronosEngine`), not what a particular kernel happens to execute. Only
matrix products count (two FLOPs per multiply-add): every linear layer and the attention scores and
weighted values. Norms, rotary, softmax, sampling and the quantizer are elementwise and left out
(under 1% of the total for the published shapes).

The parts:

- ``prompt_trunk``: the predictor's token-pair fusion, its transformer blocks and the dependency
  layer's key/value projections, over every prompt token;
- ``prompt_attention``: causal attention in the prompt (query ``i`` reads keys ``0..i``), all blocks;
- ``decode``: the generated steps: the s1 head, the dependency layer (query, attention over the
  rows so far, output) and the s2 head at every step, and each fed token through the blocks with its
  attention over the cache (the last step's token is not fed);
- ``tokenizer_encoder``: the tokenizer's input embedding, encoder blocks with their causal attention,
  and quantizer projection over the prompt's bars;
- ``tokenizer_decoder``: the decoded window: the prompt rows once per series (the decoder's keys and
  values: every block but the last, and the last one's key/value projections), then every path's
  horizon rows through all blocks and the output head.

Incremental mode appends one bar to a warm session instead of processing the prompt: one token
through the predictor, encoder and decoder prefix, each attending over the session's cached rows,
then the same horizon.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kronos_core.config import PredictorConfig, TokenizerConfig


@dataclass(frozen=True)
class ForecastFlops:
    """FLOPs of one forecast (one series, all its sample paths), by part."""

    prompt_trunk: int
    prompt_attention: int
    decode: int
    tokenizer_encoder: int
    tokenizer_decoder: int

    @property
    def total(self) -> int:
        return self.prompt_trunk + self.prompt_attention + self.decode + self.tokenizer_encoder + self.tokenizer_decoder

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def _block_macs(d: int, f: int) -> int:
    """Multiply-adds of one pre-norm block's projections for one row: q, k, v, out (d x d, with
    biases not counted) and the SwiGLU's w1, w3 (f x d) and w2 (d x f)."""
    return 4 * d * d + 3 * d * f


def _pairs(cached: int, new: int) -> int:
    """(query, key) pairs when ``new`` rows are appended causally after ``cached`` rows."""
    return new * cached + new * (new + 1) // 2


def _check(context: int, horizon: int, sample_count: int) -> None:
    for name, value in (("context", context), ("horizon", horizon), ("sample_count", sample_count)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def step_weight_macs(p: PredictorConfig, *, fed: bool) -> int:
    """Multiply-adds of one generated step's projections for one row (each weight used once): the s1
    head of the last row, the dependency layer's query and output, the s2 head and, when the sampled
    pair is fed, the token-pair fusion, every block and the dependency keys/values."""
    d = p.d_model
    macs = d * p.s1_vocab_size + d * d + d * d + d * p.s2_vocab_size
    if fed:
        macs += 2 * d * d + p.n_layers * _block_macs(d, p.ff_dim) + 2 * d * d
    return macs


def step_attention_keys(p: PredictorConfig, context: int, t: int, *, fed: bool) -> int:
    """Cached rows one path's generated step ``t`` attends over, summed over the layers that attend:
    the dependency layer over the ``context + t`` rows so far and, when fed, every block over
    ``context + t + 1`` keys (each key costs ``2 * d_model`` multiply-adds: score and value)."""
    return (context + t) + (p.n_layers * (context + t + 1) if fed else 0)


def step_context_keys(p: PredictorConfig, context: int, *, fed: bool) -> int:
    """Of :func:`step_attention_keys`, the rows of the ``context`` prompt tokens (the same for every path of
    a series; the rest are the rows the path generated): once per layer that attends."""
    return context * (1 + (p.n_layers if fed else 0))


def _decode_macs(p: PredictorConfig, context: int, horizon: int) -> int:
    """One path's generated steps after ``context`` prompt tokens."""
    macs = 0
    for t in range(horizon):
        fed = t + 1 < horizon  # the last step's pair is not fed
        macs += step_weight_macs(p, fed=fed) + 2 * p.d_model * step_attention_keys(p, context, t, fed=fed)
    return macs


def _predictor_row_macs(p: PredictorConfig) -> int:
    d = p.d_model
    return 2 * d * d + p.n_layers * _block_macs(d, p.ff_dim) + 2 * d * d


def _encoder_macs(t: TokenizerConfig, cached: int, new: int) -> int:
    d, blocks = t.d_model, t.n_enc_layers - 1
    row = t.d_in * d + blocks * _block_macs(d, t.ff_dim) + d * t.codebook_dim
    return new * row + blocks * 2 * d * _pairs(cached, new)


def _decoder_prefix_macs(t: TokenizerConfig, cached: int, new: int) -> int:
    """Decoder keys/values of ``new`` prompt rows after ``cached`` ones (their outputs are not needed)."""
    d, blocks = t.d_model, t.n_dec_layers - 1
    full = max(blocks - 1, 0)  # the last block needs only its key/value projections
    row = t.codebook_dim * d + full * _block_macs(d, t.ff_dim) + (2 * d * d if blocks else 0)
    return new * row + full * 2 * d * _pairs(cached, new)


def _decoder_horizon_macs(t: TokenizerConfig, context: int, horizon: int) -> int:
    d, blocks = t.d_model, t.n_dec_layers - 1
    row = t.codebook_dim * d + blocks * _block_macs(d, t.ff_dim) + d * t.d_in
    return horizon * row + blocks * 2 * d * _pairs(context, horizon)


def exact_forecast_flops(
    predictor: PredictorConfig, tokenizer: TokenizerConfig, context: int, horizon: int, sample_count: int = 1
) -> ForecastFlops:
    """One exact forecast: ``context`` bars tokenised and prefilled, ``horizon`` steps per path.

    The window must not slide (``context + horizon - 1 <= max_context``), which is how the daemon's
    exact mode and the benchmark call it.
    """
    _check(context, horizon, sample_count)
    d = predictor.d_model
    return ForecastFlops(
        prompt_trunk=2 * context * _predictor_row_macs(predictor),
        prompt_attention=2 * predictor.n_layers * 2 * d * _pairs(0, context),
        decode=2 * sample_count * _decode_macs(predictor, context, horizon),
        tokenizer_encoder=2 * _encoder_macs(tokenizer, 0, context),
        tokenizer_decoder=2 * (
            _decoder_prefix_macs(tokenizer, 0, context) + sample_count * _decoder_horizon_macs(tokenizer, context, horizon)
        ),
    )


def incremental_forecast_flops(
    predictor: PredictorConfig, tokenizer: TokenizerConfig, context: int, horizon: int, sample_count: int = 1
) -> ForecastFlops:
    """One incremental forecast: a warm session of ``context`` tokens (the new bar included) gets its
    new bar through the encoder, the predictor and the decoder prefix, then ``horizon`` steps per path."""
    _check(context, horizon, sample_count)
    d = predictor.d_model
    return ForecastFlops(
        prompt_trunk=2 * _predictor_row_macs(predictor),
        prompt_attention=2 * predictor.n_layers * 2 * d * context,
        decode=2 * sample_count * _decode_macs(predictor, context, horizon),
        tokenizer_encoder=2 * _encoder_macs(tokenizer, context - 1, 1),
        tokenizer_decoder=2 * (
            _decoder_prefix_macs(tokenizer, context - 1, 1)
            + sample_count * _decoder_horizon_macs(tokenizer, context, horizon)
        ),
    )
