"""The plain generation algorithm: recompute the whole window at every step, as upstream does.

This is the reference the fast KV-cached engine is tested against. Per generated step
``i`` (``L = context_len + i`` tokens known so far):

1. window = the last ``min(L, max_context)`` tokens and their calendar stamps
   (rows ``max(0, L - max_context) .. L - 1`` of the context + generated sequence);
2. ``decode_s1`` over the window; the last row's s1 logits give the next s1;
3. ``decode_s2(context_of_whole_window, next_s1)`` with a one-row query; its last row gives s2;
4. append (s1, s2).

Finally the tokenizer decodes the last ``min(context_len + pred_len, max_context)`` tokens
of the whole sequence in one causal pass and the last ``pred_len`` rows are the forecast.
The context itself is tokenized in full (the tokenizer has no window), and positions always
restart at 0 at the window start, so once the window slides every step sees shifted
positions: that is why the window is recomputed rather than cached.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from kronos_core.model import Kronos
from kronos_core.sampling import sample_from_logits
from kronos_core.tokenizer import KronosTokenizer

logger = logging.getLogger(__name__)


def window_bounds(seq_len: int, max_context: int) -> tuple[int, int]:
    """``(start, end)`` of the rows the model sees when ``seq_len`` tokens are known."""
    return max(0, seq_len - max_context), seq_len


def expand_samples(t: Tensor, sample_count: int) -> Tensor:
    """Repeat each series ``sample_count`` times, samples of one series adjacent.  # [B*S, ...]"""
    return t.repeat_interleave(sample_count, dim=0)


@torch.no_grad()
def generate_tokens_recompute(
    model: Kronos,
    s1: Tensor,  # [N, T] context s1 ids
    s2: Tensor,  # [N, T] context s2 ids
    stamps: Tensor,  # [N, T + pred_len, 5] stamps of context and horizon
    pred_len: int,
    max_context: int,
    T: float = 1.0,
    top_k: int = 0,
    top_p: float = 0.9,
    generator: torch.Generator | None = None,
    verbose: bool = False,
) -> tuple[Tensor, Tensor]:
    """Generate ``pred_len`` token pairs, recomputing the window each step.

    Returns the whole sequences ``(s1, s2)`` [N, T + pred_len] (context then generated).
    """
    context_len = s1.shape[1]
    assert stamps.shape[1] == context_len + pred_len, "stamps must cover context and horizon"
    seq_s1 = torch.cat([s1, s1.new_zeros(s1.shape[0], pred_len)], dim=1)  # [N, T + P]
    seq_s2 = torch.cat([s2, s2.new_zeros(s2.shape[0], pred_len)], dim=1)  # [N, T + P]
    for step in range(pred_len):
        known = context_len + step
        start, end = window_bounds(known, max_context)
        s1_logits, context = model.decode_s1(seq_s1[:, start:end], seq_s2[:, start:end], stamps[:, start:end])
        next_s1 = sample_from_logits(s1_logits[:, -1], T, top_k, top_p, generator)  # [N, 1]
        s2_logits = model.decode_s2(context, next_s1)[:, -1]  # [N, V2]
        next_s2 = sample_from_logits(s2_logits, T, top_k, top_p, generator)  # [N, 1]
        seq_s1[:, known] = next_s1[:, 0]
        seq_s2[:, known] = next_s2[:, 0]
        if verbose:
            logger.info("generated step %d/%d (window %d..%d)", step + 1, pred_len, start, end)
    return seq_s1, seq_s2


@torch.no_grad()
def decode_forecast(
    tokenizer: KronosTokenizer, s1: Tensor, s2: Tensor, pred_len: int, max_context: int
) -> Tensor:
    """Decode the last ``max_context`` tokens of the sequences, keep the last ``pred_len`` rows.  # [N, P, d_in]"""
    start, end = window_bounds(s1.shape[1], max_context)
    bars = tokenizer.decode([s1[:, start:end], s2[:, start:end]], half=True)
    return bars[:, -pred_len:]


@torch.no_grad()
def generate_recompute(
    tokenizer: KronosTokenizer,
    model: Kronos,
    x: Tensor,  # [B, T, d_in] normalised context
    x_stamp: Tensor,  # [B, T, 5]
    y_stamp: Tensor,  # [B, pred_len, 5]
    pred_len: int,
    max_context: int = 512,
    clip: float = 5.0,
    T: float = 1.0,
    top_k: int = 0,
    top_p: float = 0.9,
    sample_count: int = 1,
    generator: torch.Generator | None = None,
    verbose: bool = False,
) -> Tensor:
    """Upstream ``auto_regressive_inference`` without the averaging: every sample path.

    Returns normalised forecasts [B, sample_count, pred_len, d_in]; upstream's answer is
    their mean over dim 1.
    """
    batch = x.shape[0]
    x = expand_samples(torch.clip(x, -clip, clip), sample_count)  # [B*S, T, d_in]
    stamps = expand_samples(torch.cat([x_stamp, y_stamp], dim=1), sample_count)  # [B*S, T+P, 5]
    s1, s2 = tokenizer.encode(x, half=True)
    seq_s1, seq_s2 = generate_tokens_recompute(
        model, s1, s2, stamps, pred_len, max_context, T, top_k, top_p, generator, verbose
    )
    bars = decode_forecast(tokenizer, seq_s1, seq_s2, pred_len, max_context)  # [B*S, P, d_in]
    return bars.reshape(batch, sample_count, pred_len, bars.shape[-1])
