"""Temperature, top-k and nucleus filtering with upstream's precedence; generator-driven draws."""

from __future__ import annotations

import math

import pytest
import torch

from kronos_core.sampling import filter_logits, sample_from_logits, top_k_filter, top_p_filter

INF = math.inf


def test_top_k_keeps_k_best_and_ties() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0, 0.0]])
    assert top_k_filter(logits, 2).tolist() == [[-INF, 3.0, -INF, 3.0, -INF]]
    assert top_k_filter(logits, 3).tolist() == [[-INF, 3.0, 2.0, 3.0, -INF]]


def test_top_p_keeps_the_token_that_crosses_the_threshold() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = top_p_filter(probs.log(), 0.7)
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]
    out = top_p_filter(probs.log(), 0.3)  # the most likely token is always kept
    assert torch.isfinite(out).tolist() == [[True, False, False, False]]


def test_top_k_wins_over_top_p_and_input_is_not_modified() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    original = logits.clone()
    out = filter_logits(logits, top_k=3, top_p=0.1)
    assert torch.isfinite(out).sum().item() == 3
    assert torch.equal(logits, original)
    assert torch.equal(filter_logits(logits, 0, 1.0), logits)


def test_greedy_and_generator_reproducibility() -> None:
    logits = torch.randn(64, 32)
    greedy = sample_from_logits(logits, top_k=1)
    assert torch.equal(greedy[:, 0], logits.argmax(-1))
    a = sample_from_logits(logits, 1.0, 0, 0.9, torch.Generator().manual_seed(7))
    b = sample_from_logits(logits, 1.0, 0, 0.9, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.shape == (64, 1)


def test_temperature_must_be_positive() -> None:
    with pytest.raises(ValueError, match="temperature T must be > 0"):
        sample_from_logits(torch.zeros(1, 4), temperature=0.0)
