"""Training data: lookback-only normalisation (no leak), walk-forward split, samplers and seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kronos_core.training import BarSeries, sample_windows
from tests.trainer.train_helpers import HORIZON, LOOKBACK, archive_frame, tiny_models, tiny_series
from trainer.data import (
    RankSampler,
    TrainingDataError,
    WindowSet,
    series_from_frame,
    walk_forward,
    worker_seed,
)


def _with_future_changed(series, start: int):
    """A copy of the series where every bar from row ``start`` on is very different."""
    s = series[0]
    feats = s.features.copy()
    feats[start:] *= 3.0
    feats[start:, 4:] += 1e6
    return [type(s)(s.symbol, feats, s.stamps, s.times), *series[1:]]


def test_no_future_bar_shapes_an_input() -> None:
    series = tiny_series()
    w = LOOKBACK + HORIZON
    window = WindowSet(series, [(0, 10)], LOOKBACK, HORIZON)
    x, _ = window[0]
    # bars after the context (inside the window's horizon and after the window) change
    changed = WindowSet(_with_future_changed(series, 10 + LOOKBACK), [(0, 10)], LOOKBACK, HORIZON)
    x2, _ = changed[0]
    assert torch.equal(x[:LOOKBACK], x2[:LOOKBACK])  # the context the model reads is untouched
    assert not torch.equal(x[LOOKBACK:], x2[LOOKBACK:])  # (the change is real)
    # nor the tokens of the context: the tokenizer is causal and its input rows are equal
    tokenizer, _ = tiny_models()
    with torch.no_grad():
        ids = tokenizer.encode(torch.stack([x, x2]), half=True)
    assert all(torch.equal(t[0, :LOOKBACK], t[1, :LOOKBACK]) for t in ids)
    # a horizon bar changes only its own row: no statistic depends on it
    later = WindowSet(_with_future_changed(series, 10 + w - 1), [(0, 10)], LOOKBACK, HORIZON)
    x3, _ = later[0]
    assert torch.equal(x[: w - 1], x3[: w - 1])


def test_upstream_style_windows_do_leak() -> None:
    """The fault this module exists for: kronos_core.training.sample_windows (upstream's recipe,
    still used by the demo model) scales a window by statistics that include its last bars."""
    s = tiny_series()[0]
    bars = BarSeries(s.features[: LOOKBACK + HORIZON], s.stamps[: LOOKBACK + HORIZON])
    x, _ = sample_windows(bars, LOOKBACK + HORIZON, 1, torch.Generator().manual_seed(0))
    feats = bars.features.copy()
    feats[LOOKBACK:] *= 3.0
    x2, _ = sample_windows(BarSeries(feats, bars.stamps), LOOKBACK + HORIZON, 1, torch.Generator().manual_seed(0))
    assert not torch.equal(x[0, :LOOKBACK], x2[0, :LOOKBACK])


def test_walk_forward_split_trains_on_the_past_and_validates_on_the_tail() -> None:
    series = tiny_series()
    split = walk_forward(series, LOOKBACK, HORIZON, 0.25)
    cut = np.datetime64(split.cut.replace(tzinfo=None))
    for i in range(len(split.train)):
        s, start = split.train.rows(i)
        assert s.times[start + LOOKBACK + HORIZON - 1] < cut  # every training bar is before the cut
    firsts = []
    for i in range(len(split.val)):
        s, start = split.val.rows(i)
        assert s.times[start + LOOKBACK] >= cut  # every validation target is at or after the cut
        firsts.append(s.times[start + LOOKBACK])
    assert len(split.train) > len(split.val) > 0
    assert split.summary["symbols"]["AAA"]["rows"] == 400


def test_too_short_or_empty_data_stops_with_a_clear_error() -> None:
    series = series_from_frame(archive_frame(rows=60))
    with pytest.raises(TrainingDataError, match="no training window"):
        walk_forward(series, 50, 8, 0.2)
    with pytest.raises(TrainingDataError, match="no validation window"):
        walk_forward(series, 20, 8, 0.01)
    with pytest.raises(TrainingDataError, match="no bars"):
        walk_forward(series_from_frame(archive_frame().iloc[:0]), 20, 8, 0.2)


def test_rank_sampler_partitions_and_resumes() -> None:
    per_rank = [list(RankSampler(103, rank=r, world=2, batch_size=4, seed=7, epoch=3)) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 48  # 103 // 8 steps x 4 windows
    assert not set(per_rank[0]) & set(per_rank[1])  # no two ranks see the same window
    other_epoch = list(RankSampler(103, rank=0, world=2, batch_size=4, seed=7, epoch=4))
    assert other_epoch != per_rank[0]
    resumed = list(RankSampler(103, rank=0, world=2, batch_size=4, seed=7, epoch=3, skip=8))
    assert resumed == per_rank[0][8:]
    seeds = {worker_seed(0, r, e, w) for r in range(2) for e in range(2) for w in range(2)}
    assert len(seeds) == 8
