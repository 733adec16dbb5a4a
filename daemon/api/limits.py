"""The limits of on-demand forecasts (``POST /v1/forecast``), settings of the ``KRONOS_API__`` group.

:class:`OnDemandLimits` is a mixin of the API's settings group (``daemon.settings``); each limit's
4xx message names its variable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field


class OnDemandLimits(BaseModel):
    max_payload_bytes: int = Field(
        default=1_048_576, ge=1024, le=64 * 1_048_576,
        description="on-demand forecasts: largest request body, in bytes (413 beyond)",
    )  # fmt: skip
    max_history_bars: int = Field(
        default=512, ge=1, le=100_000,
        description="on-demand forecasts: most bars of history in one request (400 beyond); the model reads "
        "at most its max_context - horizon last ones",
    )  # fmt: skip
    max_horizon: int = Field(
        default=64, ge=1, le=4096, description="on-demand forecasts: largest horizon a request may ask (400 beyond)"
    )
    max_samples: int = Field(
        default=64, ge=1, le=1024, description="on-demand forecasts: most sample paths a request may ask (400 beyond)"
    )
    max_quantile_levels: int = Field(
        default=9, ge=1, le=99, description="on-demand forecasts: most quantile levels a request may ask (400 beyond)"
    )
    ondemand_queue: int = Field(
        default=256, ge=1, le=100_000,
        description="on-demand forecasts waiting for the model at most; a request beyond gets 429 with Retry-After",
    )  # fmt: skip
    ondemand_quiet_ms: float = Field(
        default=100.0, ge=0, le=60_000, allow_inf_nan=False,
        description="on-demand forecasts wait until the stream has made no model call for this long (its bars "
        "come in bursts) ...",
    )  # fmt: skip
    ondemand_max_defer_ms: float = Field(
        default=2_000.0, ge=0, le=600_000, allow_inf_nan=False,
        description="... for at most this long; then they go as soon as no stream round waits for the model",
    )  # fmt: skip
    ondemand_batch: int = Field(
        default=16, ge=1, le=1024,
        description="on-demand forecasts in one model call at most: a stream round waits for at most one such "
        "call, so this bounds the delay on-demand forecasts can add to the stream",
    )  # fmt: skip


# The variable each limit is set by (for error messages).
def setting_name(field: str) -> str:
    return f"KRONOS_API__{field.upper()}"


class OnDemandError(Exception):
    """A request that cannot be served: its HTTP status and what to do (``headers``: e.g. Retry-After)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class History:
    """A supplied history: bar times (epoch ns, increasing) and the six features [L, 6]."""

    symbol: str
    ts_ns: list[int]
    values: np.ndarray


@dataclass(frozen=True)
class Ask:
    """What a request asks for: the batch key (requests with the same one share a model call)."""

    horizon: int
    samples: int
    levels: tuple[float, ...]


def check_ask(ask: Ask, limits: OnDemandLimits, max_context: int) -> None:
    """400 for a horizon, sample count or quantile levels beyond the limits (each names its setting)."""
    if not 1 <= ask.horizon <= limits.max_horizon:
        raise OnDemandError(
            400, f"horizon {ask.horizon} is out of range: 1 to {limits.max_horizon} ({setting_name('max_horizon')})"
        )
    if ask.horizon >= max_context:
        raise OnDemandError(400, f"horizon {ask.horizon} must be below the model's max_context ({max_context})")
    if not 1 <= ask.samples <= limits.max_samples:
        raise OnDemandError(
            400, f"samples {ask.samples} is out of range: 1 to {limits.max_samples} ({setting_name('max_samples')})"
        )
    if not 1 <= len(ask.levels) <= limits.max_quantile_levels:
        raise OnDemandError(
            400,
            f"{len(ask.levels)} quantile levels asked; 1 to {limits.max_quantile_levels} are accepted "
            f"({setting_name('max_quantile_levels')})",
        )
    if not all(0.0 < q < 1.0 and math.isfinite(q) for q in ask.levels) or list(ask.levels) != sorted(set(ask.levels)):
        raise OnDemandError(400, f"quantile levels must be distinct, increasing and within (0, 1); got {list(ask.levels)}")


def check_history(history: History, limits: OnDemandLimits) -> None:
    """400 for an empty or too long history, or bars not in strictly increasing time order."""
    n = len(history.ts_ns)
    if n == 0:
        raise OnDemandError(400, "the history holds no bar; send at least one")
    if n > limits.max_history_bars:
        raise OnDemandError(
            400,
            f"the history holds {n} bars; at most {limits.max_history_bars} are accepted "
            f"({setting_name('max_history_bars')}); send the most recent ones",
        )
    steps = np.diff(np.asarray(history.ts_ns, dtype=np.int64))
    if (steps <= 0).any():
        i = int(np.argmax(steps <= 0)) + 1
        raise OnDemandError(400, f"bar {i} is not after bar {i - 1}: the bars must be in strictly increasing time order")


__all__ = ["Ask", "History", "OnDemandError", "OnDemandLimits", "check_ask", "check_history", "setting_name"]
