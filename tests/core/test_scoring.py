"""kronos_core.scoring against hand-computed values and brute-force definitions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kronos_core.scoring import (
    ScoreAccumulator,
    crps_from_samples,
    interval_coverage,
    level_key,
    pinball_loss,
    score_paths,
)


def test_crps_of_known_sample_sets() -> None:
    # {0, 1} against 0: E|X-y| = 0.5, E|X-X'| = (0+1+1+0)/4 = 0.5, CRPS = 0.5 - 0.25 = 0.25.
    assert crps_from_samples(np.array([0.0, 1.0]), 0.0) == pytest.approx(0.25)
    # {1, 2, 4} against 3: E|X-y| = (2+1+1)/3 = 4/3; pair gaps 1,3,2 twice each over 9 -> 12/9;
    # CRPS = 4/3 - 6/9 = 2/3.
    assert crps_from_samples(np.array([1.0, 2.0, 4.0]), 3.0) == pytest.approx(2 / 3)
    # One sample: the absolute error.
    assert crps_from_samples(np.array([2.5]), 1.0) == pytest.approx(1.5)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 9), st.integers(1, 4)),
              elements=st.floats(-1e3, 1e3)), st.floats(-1e3, 1e3))
def test_crps_equals_the_pairwise_definition(samples: np.ndarray, y: float) -> None:
    observed = np.full(samples.shape[1], y)
    brute = np.mean(np.abs(samples - observed), axis=0) - 0.5 * np.mean(
        np.abs(samples[:, None, :] - samples[None, :, :]), axis=(0, 1)
    )
    np.testing.assert_allclose(crps_from_samples(samples, observed), brute, rtol=1e-9, atol=1e-9)


def test_pinball_and_coverage_by_hand() -> None:
    # y = 10; p10 = 8 (under by 2: 0.1 * 2), p90 = 11 (over by 1: 0.1 * 1), p50 = 10 (0).
    loss = pinball_loss(np.array([8.0, 10.0, 11.0]), np.array(10.0), (0.1, 0.5, 0.9))
    np.testing.assert_allclose(loss, [0.2, 0.0, 0.1])
    assert interval_coverage(np.array([1.0, 1.0]), np.array([2.0, 2.0]), np.array([1.5, 3.0])).tolist() == [
        True,
        False,
    ]
    assert level_key(0.1) == "p10" and level_key(0.025) == "p2.5"


def test_score_paths_by_hand() -> None:
    # One forecast, two paths, two steps; last close 10.
    paths = np.array([[[10.0, 12.0], [12.0, 14.0]]])  # mean path [11, 13]
    realised = np.array([[11.0, 10.0]])
    report = score_paths(paths, realised, np.array([10.0]), levels=(0.1, 0.9))
    assert report.mae_per_step == [pytest.approx(0.0), pytest.approx(3.0)]
    assert report.persistence_mae_per_step == [pytest.approx(1.0), pytest.approx(0.0)]
    assert report.mae == pytest.approx(1.5) and report.persistence_mae == pytest.approx(0.5)
    assert report.skill_mae == pytest.approx(1 - 1.5 / 0.5)
    # CRPS step 1: {10, 12} vs 11: 1 - 0.5 * 1 = 0.5; step 2: {12, 14} vs 10: 3 - 0.5 = 2.5.
    assert report.crps_per_step == [pytest.approx(0.5), pytest.approx(2.5)]
    # numpy's linear quantiles of {10, 12}: p10 10.2, p90 11.8 -> 11 inside; {12, 14}: 10 outside.
    assert report.coverage_per_step == [1.0, 0.0]
    assert report.nominal_coverage == pytest.approx(0.8)
    assert report.all_finite and report.count == 1


def test_accumulator_merges_round_trips_and_skips_unknown_steps() -> None:
    rng = np.random.default_rng(0)
    paths = rng.normal(10, 1, size=(6, 4, 3))
    realised = rng.normal(10, 1, size=(6, 3))
    realised[5, 2] = np.nan  # not yet realised: that step is skipped
    last = rng.normal(10, 1, size=6)

    whole = ScoreAccumulator(horizon=3).add(realised, last, paths=paths)
    parts = ScoreAccumulator(horizon=3).add(realised[:2], last[:2], paths=paths[:2])
    rest = ScoreAccumulator(horizon=3)
    for i in range(2, 6):
        rest.add(realised[i], last[i], paths=paths[i])
    merged = ScoreAccumulator.from_dict(json.loads(json.dumps(parts.merge(rest).to_dict())))
    a, b = whole.report().to_dict(), merged.report().to_dict()
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], float):
            assert b[key] == pytest.approx(a[key])
    assert whole.n.tolist() == [6, 6, 5]


def test_nonfinite_forecasts_are_flagged_not_scored() -> None:
    acc = ScoreAccumulator(horizon=2)
    acc.add(np.array([1.0, 1.0]), 1.0, paths=np.array([[np.nan, 1.0], [1.0, 1.0]]))
    report = acc.report()
    assert not report.all_finite and report.count == 0 and report.mae is None


def test_point_forecasts_without_paths_have_no_crps() -> None:
    acc = ScoreAccumulator(horizon=1, levels=(0.1, 0.9))
    acc.add(np.array([2.0]), 1.0, mean=np.array([2.0]), quantiles=np.array([[1.5], [2.5]]))
    report = acc.report()
    assert report.mae == 0.0 and report.crps is None and report.coverage == 1.0
    with pytest.raises(ValueError, match="paths or a mean"):
        acc.add(np.array([2.0]), 1.0)
