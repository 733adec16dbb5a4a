"""The roofline's traffic and floor against a hand count for a tiny configuration."""

from __future__ import annotations

import pytest

from kronos_core.config import PredictorConfig, TokenizerConfig
from kronos_core.flops import exact_forecast_flops, incremental_forecast_flops
from kronos_core.roofline import exact_floor, generated_step_traffic, incremental_floor

# d 8, one block, ff 16, vocabularies of 4 (as tests/core/test_flops.py).
PRED = PredictorConfig(s1_bits=2, s2_bits=2, n_layers=1, d_model=8, n_heads=2, ff_dim=16)
TOK = TokenizerConfig(
    d_in=6, d_model=4, n_heads=2, ff_dim=8, n_enc_layers=2, n_dec_layers=3, s1_bits=2, s2_bits=2, group_size=4
)


def test_step_traffic_matches_hand_count() -> None:
    # Step 0 (fed): weights s1 head 32 + dep q 64 + dep out 64 + s2 head 32 + fusion 128 + block 640
    # + dep k/v 128 = 1088; keys: dependency over 3 rows + the block over 4 = 7, each 2 * 8 values.
    # Step 1 (not fed): weights 192; the dependency layer over 4 rows.
    assert generated_step_traffic(PRED, context=3, horizon=2, batch=1) == [
        (2 * (1088 + 16 * 7), 4 * (1088 + 16 * 7)),
        (2 * (192 + 16 * 4), 4 * (192 + 16 * 4)),
    ]
    # The FLOPs are the decode part of the forecast's count.
    steps = generated_step_traffic(PRED, context=3, horizon=2, batch=1)
    assert sum(f for f, _ in steps) == exact_forecast_flops(PRED, TOK, 3, 2).decode


def test_batch_reads_weights_once_and_paths_share_the_context() -> None:
    one = generated_step_traffic(PRED, context=3, horizon=2, batch=1)
    three = generated_step_traffic(PRED, context=3, horizon=2, batch=3)
    assert [f for f, _ in three] == [3 * f for f, _ in one]
    assert three[0][1] == 4 * (1088 + 3 * 16 * 7)  # weights once, keys and values per row
    # Two paths of one series: the context's 3 + 3 rows once, each path's own generated row (step 0).
    paths = generated_step_traffic(PRED, context=3, horizon=2, batch=1, sample_count=2)
    assert paths[0] == (2 * 2 * (1088 + 16 * 7), 4 * (1088 + 16 * (6 + 2 * 1)))


def test_floor_takes_the_slower_bound_per_step() -> None:
    f = exact_forecast_flops(PRED, TOK, 3, 2)
    fast_memory = exact_floor(PRED, TOK, 3, 2, 2, peak_flops=1e3, read_bytes_per_s=1e12)
    assert fast_memory.steps_memory_bound == 0
    assert fast_memory.seconds == pytest.approx(2 * f.total / 1e3)
    slow_memory = exact_floor(PRED, TOK, 3, 2, 2, peak_flops=1e12, read_bytes_per_s=1.0)
    steps = generated_step_traffic(PRED, 3, 2, 2)
    assert slow_memory.steps_memory_bound == 2
    assert slow_memory.steps_s == pytest.approx(sum(b for _, b in steps))
    assert slow_memory.compute_s == pytest.approx(2 * (f.total - f.decode) / 1e12)
    assert slow_memory.step_bytes_max == max(b for _, b in steps)
    assert slow_memory.attainable_gflops == pytest.approx(2 * f.total / slow_memory.seconds / 1e9)


def test_incremental_floor_adds_the_new_bar_as_a_step() -> None:
    f = incremental_forecast_flops(PRED, TOK, 4, 2)
    floor = incremental_floor(PRED, TOK, 4, 2, 1, peak_flops=1e12, read_bytes_per_s=1.0)
    assert floor.steps == 3 and floor.flops == f.total
    # the new bar: every weight of a fed step once, and the block's keys and values over 4 rows
    assert floor.steps_s == pytest.approx(4 * (1088 + 16 * 4) + sum(b for _, b in generated_step_traffic(PRED, 4, 2, 1)))
