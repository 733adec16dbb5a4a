"""FLOP counting against a hand count for a tiny configuration."""

from __future__ import annotations

import pytest

from kronos_core.config import PredictorConfig, TokenizerConfig
from kronos_core.flops import exact_forecast_flops, incremental_forecast_flops

# d 8, one block, ff 16, vocabularies of 4; tokenizer d 4, ff 8, one encoder block, two decoder blocks.
PRED = PredictorConfig(s1_bits=2, s2_bits=2, n_layers=1, d_model=8, n_heads=2, ff_dim=16)
TOK = TokenizerConfig(
    d_in=6, d_model=4, n_heads=2, ff_dim=8, n_enc_layers=2, n_dec_layers=3, s1_bits=2, s2_bits=2, group_size=4
)


def test_exact_forecast_matches_hand_count() -> None:
    f = exact_forecast_flops(PRED, TOK, context=3, horizon=2)
    # Predictor row: fusion 16*8 = 128, block 4*8*8 + 3*8*16 = 640, dependency k/v 2*8*8 = 128 -> 896 MACs.
    assert f.prompt_trunk == 2 * 3 * 896
    # Causal pairs of 3 rows: 1 + 2 + 3 = 6, each 2 * 8 MACs (scores and values), one block.
    assert f.prompt_attention == 2 * 6 * 16
    # Step 0: s1 head 32, dep q 64, dep attention over 3 rows 48, dep out 64, s2 head 32 = 240;
    #   feed: fusion 128 + block 640 + attention over 4 keys 64 + dep k/v 128 = 960.
    # Step 1: 32 + 64 + attention over 4 rows 64 + 64 + 32 = 256 (the last token is not fed).
    assert f.decode == 2 * (240 + 960 + 256)
    # Encoder row: embed 6*4 = 24, block 4*16 + 3*4*8 = 160, quantizer 4*4 = 16 -> 200; attention 6 pairs * 8.
    assert f.tokenizer_encoder == 2 * (3 * 200 + 6 * 8)
    # Decoder prefix row: post-quant 16 + first block 160 + last block's k/v 32 = 208, attention 6 pairs * 8
    # in the first block; horizon row: 16 + 2 * 160 + head 24 = 360, attention in both blocks over
    # 3 + 1 and 3 + 2 keys = 9 pairs * 8 * 2.
    assert f.tokenizer_decoder == 2 * (3 * 208 + 48 + 2 * 360 + 2 * 9 * 8)
    assert f.total == 5376 + 192 + 2912 + 1296 + 3072 == 12848
    assert f.to_dict()["total"] == f.total


def test_sample_paths_repeat_only_the_horizon() -> None:
    one = exact_forecast_flops(PRED, TOK, context=3, horizon=2)
    two = exact_forecast_flops(PRED, TOK, context=3, horizon=2, sample_count=2)
    assert (two.prompt_trunk, two.prompt_attention, two.tokenizer_encoder) == (
        one.prompt_trunk, one.prompt_attention, one.tokenizer_encoder
    )
    assert two.decode == 2 * one.decode
    assert two.tokenizer_decoder == 2 * (672 + 2 * 864)


def test_incremental_forecast_matches_hand_count() -> None:
    f = incremental_forecast_flops(PRED, TOK, context=3, horizon=2)
    assert f.prompt_trunk == 2 * 896  # one new token
    assert f.prompt_attention == 2 * 3 * 16  # over the session's 3 keys
    assert f.decode == exact_forecast_flops(PRED, TOK, context=3, horizon=2).decode
    assert f.tokenizer_encoder == 2 * (200 + 3 * 8)
    assert f.tokenizer_decoder == 2 * (208 + 3 * 8 + 864)


def test_rejects_empty_sizes() -> None:
    with pytest.raises(ValueError, match="horizon"):
        exact_forecast_flops(PRED, TOK, context=3, horizon=0)
