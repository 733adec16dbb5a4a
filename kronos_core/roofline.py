"""The least time a batch of forecasts can take on a machine: a roofline.

A forecast's work is of two kinds. The prompt (the predictor over every context token, the
tokenizer's encoder and decoder) is large matrix products: it can go no faster than the machine's
matrix-multiply peak. A generated step is a few rows (one per sample path) through the whole
predictor: each step must read every weight it uses and every row's cached keys and values, so it
can go no faster than the machine reads memory. The roofline takes, for each generated step, the
larger of its FLOPs over the peak and its bytes over the read rate, adds the prompt's FLOPs over the
peak, and so gives a time no engine can beat with these FLOPs and this traffic on this machine.

Bytes counted per generated step: the weights of :func:`~kronos_core.flops.step_weight_macs` once for
the batch, and the cached keys and values of :func:`~kronos_core.flops.step_attention_keys` per row.
With several sample paths a series' context rows are read once (the engine's shared prefix) and each
path's generated rows on their own. Embedding lookups, norms and the sampling's few values are left
out, so the floor is a lower bound.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kronos_core.config import PredictorConfig, TokenizerConfig
from kronos_core.flops import (
    exact_forecast_flops,
    incremental_forecast_flops,
    step_attention_keys,
    step_context_keys,
    step_weight_macs,
)


@dataclass(frozen=True)
class Floor:
    """The least time of one call of ``batch`` forecasts, and what bounds it."""

    seconds: float
    compute_s: float  # the prompt's FLOPs over the peak
    steps_s: float  # the generated steps, each the larger of FLOPs/peak and bytes/read rate
    steps_memory_bound: int  # steps whose bytes bound them
    steps: int
    step_bytes_max: int  # the largest step's traffic (the working set the read rate is measured on)
    flops: int  # the call's FLOPs

    @property
    def attainable_gflops(self) -> float:
        return self.flops / self.seconds / 1e9

    def to_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "attainable_gflops": self.attainable_gflops}


def generated_step_traffic(
    p: PredictorConfig, context: int, horizon: int, batch: int, sample_count: int = 1, dtype_bytes: int = 4
) -> list[tuple[int, int]]:
    """(FLOPs, bytes read) of each generated step of a call of ``batch`` series of ``context`` tokens."""
    d, rows = p.d_model, batch * sample_count
    out = []
    for t in range(horizon):
        fed = t + 1 < horizon
        keys = step_attention_keys(p, context, t, fed=fed)
        context_keys = step_context_keys(p, context, fed=fed)
        own_keys = keys - context_keys  # rows this path generated (its own suffix)
        flops = 2 * rows * (step_weight_macs(p, fed=fed) + 2 * d * keys)
        kv_rows = batch * context_keys + rows * own_keys  # a series' context read once for its paths
        nbytes = dtype_bytes * (step_weight_macs(p, fed=fed) + 2 * d * kv_rows)
        out.append((flops, nbytes))
    return out


def _steps(traffic: list[tuple[int, int]], peak_flops: float, read_bytes_per_s: float) -> tuple[float, int]:
    seconds, memory_bound = 0.0, 0
    for flops, nbytes in traffic:
        compute, memory = flops / peak_flops, nbytes / read_bytes_per_s
        seconds += max(compute, memory)
        memory_bound += memory > compute
    return seconds, memory_bound


def exact_floor(
    p: PredictorConfig, tok: TokenizerConfig, context: int, horizon: int, batch: int, *,
    peak_flops: float, read_bytes_per_s: float, sample_count: int = 1, dtype_bytes: int = 4,
) -> Floor:
    """Exact mode: ``batch`` windows of ``context`` bars tokenised, prefilled and ``horizon`` steps."""
    f = exact_forecast_flops(p, tok, context, horizon, sample_count)
    traffic = generated_step_traffic(p, context, horizon, batch, sample_count, dtype_bytes)
    steps_s, memory_bound = _steps(traffic, peak_flops, read_bytes_per_s)
    compute_s = batch * (f.total - f.decode) / peak_flops
    return Floor(
        seconds=compute_s + steps_s, compute_s=compute_s, steps_s=steps_s, steps_memory_bound=memory_bound,
        steps=len(traffic), step_bytes_max=max(b for _, b in traffic), flops=batch * f.total,
    )


def incremental_floor(
    p: PredictorConfig, tok: TokenizerConfig, context: int, horizon: int, batch: int, *,
    peak_flops: float, read_bytes_per_s: float, sample_count: int = 1, dtype_bytes: int = 4,
) -> Floor:
    """Incremental mode: one new bar appended to each of ``batch`` warm sessions of ``context``
    tokens, then the horizon. The new bar's pass through the predictor is one more memory-bound
    step (every block's weights for a row per series, over the session's cache)."""
    f = incremental_forecast_flops(p, tok, context, horizon, sample_count)
    d = p.d_model
    append = (batch * (f.prompt_trunk + f.prompt_attention),
              dtype_bytes * (step_weight_macs(p, fed=True) + batch * 2 * d * p.n_layers * context))
    traffic = [append, *generated_step_traffic(p, context, horizon, batch, sample_count, dtype_bytes)]
    steps_s, memory_bound = _steps(traffic, peak_flops, read_bytes_per_s)
    compute_s = batch * (f.tokenizer_encoder + f.tokenizer_decoder) / peak_flops
    return Floor(
        seconds=compute_s + steps_s, compute_s=compute_s, steps_s=steps_s, steps_memory_bound=memory_bound,
        steps=len(traffic), step_bytes_max=max(b for _, b in traffic), flops=batch * f.total,
    )
