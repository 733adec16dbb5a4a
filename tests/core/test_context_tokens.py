"""Context ids handed between exact forecasters: a forecaster whose tokenizer is another's (a version
fine-tuned with the tokenizer frozen) takes that one's ids of a window instead of encoding it, and
forecasts exactly what it would have after encoding; ids of another tokenizer are ignored."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from kronos_core.engine import GenerationStats, KronosEngine, SamplingParams
from kronos_core.stream_types import SeriesWindow, derive_seed
from kronos_core.streaming import StreamConfig, StreamingForecaster
from tests.support.hotswap import perturb_

COLUMNS = ["open", "high", "low", "close", "volume", "amount"]
MAX_CONTEXT, HORIZON = 64, 8
CONFIG = StreamConfig(mode="exact", sampling=SamplingParams(sample_count=3))


def _perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    return perturb_(copy.deepcopy(module), 0.05, torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def windows(bars) -> list[SeriesWindow]:
    values, ts = bars[COLUMNS].to_numpy(np.float64), bars["timestamps"].to_numpy("datetime64[ns]")
    out = []
    for k, end in enumerate((80, 150, 30, 220)):  # one context shorter than the lookback
        lo = max(0, end + 1 - MAX_CONTEXT)
        out.append(SeriesWindow(f"S{k}", values[lo : end + 1], ts[lo : end + 1], ts[end + 1 : end + 1 + HORIZON],
                                seed=derive_seed(f"S{k}", int(ts[end].astype(np.int64)), "t")))  # fmt: skip
    return out


def _forecaster(model, tokenizer) -> StreamingForecaster:
    engine = KronosEngine(model, tokenizer, device="cpu", max_context=MAX_CONTEXT)
    return StreamingForecaster(engine, CONFIG, model_version="t")


def test_a_forecaster_with_the_same_tokenizer_takes_the_ids_and_forecasts_the_same(
    windows, tiny_model, tiny_tokenizer
) -> None:
    champion = _forecaster(tiny_model, tiny_tokenizer)
    challenger = _forecaster(_perturbed(tiny_model, 1), copy.deepcopy(tiny_tokenizer))  # tokenizer frozen
    assert champion.context_key(HORIZON) == challenger.context_key(HORIZON)
    assert champion.context_key(HORIZON) != champion.context_key(HORIZON + 1)  # another lookback

    made = champion.forecast(windows, HORIZON)
    lookback = champion.lookback(HORIZON)
    for w, f in zip(windows, made, strict=True):
        assert f.context_tokens is not None and len(f.context_tokens.s1) == min(len(w.values), lookback)

    own = challenger.forecast(windows, HORIZON)
    encoded = challenger.last_stats.encode_tokens
    assert encoded == sum(min(len(w.values), lookback) for w in windows)
    handed = [dataclasses.replace(w, context_tokens=f.context_tokens) for w, f in zip(windows, made, strict=True)]
    taken = challenger.forecast(handed, HORIZON)
    assert challenger.last_stats.encode_tokens == 0 and challenger.last_stats.given_tokens == encoded
    for a, b in zip(own, taken, strict=True):
        np.testing.assert_array_equal(a.samples, b.samples)
        np.testing.assert_array_equal(a.context_tokens.s1, b.context_tokens.s1)
    assert not np.array_equal(own[0].samples, made[0].samples)  # another predictor: other forecasts


def test_ids_of_another_tokenizer_are_ignored(windows, tiny_model, tiny_tokenizer) -> None:
    champion = _forecaster(tiny_model, tiny_tokenizer)
    other = _forecaster(tiny_model, _perturbed(tiny_tokenizer, 2))  # the tokenizer fine-tuned too
    assert champion.context_key(HORIZON) != other.context_key(HORIZON)
    made = champion.forecast(windows, HORIZON)
    handed = [dataclasses.replace(w, context_tokens=f.context_tokens) for w, f in zip(windows, made, strict=True)]
    own = other.forecast(windows, HORIZON)
    ignored = other.forecast(handed, HORIZON)
    assert other.last_stats.given_tokens == 0 and other.last_stats.encode_tokens > 0
    for a, b in zip(own, ignored, strict=True):
        np.testing.assert_array_equal(a.samples, b.samples)


def test_a_batch_mixing_given_and_encoded_contexts(windows, tiny_model, tiny_tokenizer) -> None:
    fc = _forecaster(tiny_model, tiny_tokenizer)
    made = fc.forecast(windows, HORIZON)
    mixed = [dataclasses.replace(w, context_tokens=f.context_tokens if k % 2 else None)
             for k, (w, f) in enumerate(zip(windows, made, strict=True))]  # fmt: skip
    again = fc.forecast(mixed, HORIZON)
    assert fc.last_stats.given_tokens > 0 and fc.last_stats.encode_tokens > 0
    for a, b in zip(made, again, strict=True):
        np.testing.assert_array_equal(a.samples, b.samples)


def test_given_ids_of_the_wrong_length_are_refused(tiny_model, tiny_tokenizer) -> None:
    engine = KronosEngine(tiny_model, tiny_tokenizer, device="cpu", max_context=MAX_CONTEXT)
    xs = [np.zeros((10, 6), np.float32), np.zeros((12, 6), np.float32)]
    stamps = [np.zeros((n, 5), np.float32) for n in (10, 12)]
    future = [np.zeros((HORIZON, 5), np.float32)] * 2
    ids = (np.zeros(11, np.int64), np.zeros(11, np.int64))
    with pytest.raises(ValueError, match=r"given_ids\[1\].*12 bars"):
        engine.prefill(xs, stamps, future, HORIZON, GenerationStats(), given_ids=[None, ids])
    with pytest.raises(ValueError, match="one entry"):
        engine.prefill(xs, stamps, future, HORIZON, GenerationStats(), given_ids=[None])
