"""``KRONOS_CHALLENGERS__*``: shadow challengers, promotion on live evidence, automatic rollback.

Kept apart from :mod:`daemon.settings` (which includes this group as ``Settings.challengers``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ChallengerSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(
        default=True,
        description="with a registry: score the registry's challengers in the shadow of the champion on the "
        "same live bars (docs/models/challengers.md)",
    )
    max: int = Field(default=2, ge=0, le=16, description="at most this many challengers are loaded and scored")
    sample_fraction: float = Field(
        default=1.0, gt=0, le=1, allow_inf_nan=False,
        description="share of the symbols challengers forecast (a stable hash of the symbol picks them)",
    )  # fmt: skip
    shadow_topic: str | None = Field(
        default=None,
        description="Kafka topic of the challengers' forecasts (key = symbol); unset: they are not published",
    )
    poll_s: float = Field(
        default=10.0, gt=0, allow_inf_nan=False, description="how often the registry's challengers are read"
    )
    policy: Literal["off", "advisory", "automatic"] = Field(
        default="advisory",
        description="`automatic`: promote and roll back in the registry; `advisory`: record the decisions only; "
        "`off`: no decisions (challengers are still scored)",
    )
    decide_every_s: float = Field(
        default=60.0, gt=0, allow_inf_nan=False, description="how often the deciding replica weighs the evidence"
    )
    min_forecasts: int = Field(
        default=500, ge=3, description="paired realised forecasts (same symbol and bar) before any promotion"
    )
    level: float = Field(
        default=0.01, gt=0, lt=0.5, allow_inf_nan=False,
        description="one-sided Diebold-Mariano (HAC) p-value below which the challenger's lower CRPS counts",
    )  # fmt: skip
    losses_keep: int = Field(
        default=5000, ge=10, le=1_000_000, description="per-forecast losses kept per model version in Redis"
    )
    rollback: bool = Field(
        default=True, description="roll the champion back when its live skill vs the walk falls below the threshold"
    )
    rollback_skill: float = Field(
        default=-0.05, ge=-10, le=1, allow_inf_nan=False,
        description="rollback threshold of the champion's CRPS skill vs the rolling-volatility walk (1 - CRPS / walk)",
    )  # fmt: skip
    rollback_window: int = Field(
        default=300, ge=3, description="the champion's most recent realised forecasts the rollback skill is taken over"
    )
    cooldown_s: float = Field(
        default=3600.0, ge=0, allow_inf_nan=False,
        description="after an automatic promotion or rollback, no other one for this long",
    )  # fmt: skip
    lock_ttl_s: float = Field(
        default=120.0, gt=0, allow_inf_nan=False,
        description="the Redis lock that makes one replica the decider expires this long after its last renewal",
    )  # fmt: skip
    chunk_max: int = Field(
        default=256, ge=1, le=4096,
        description="windows one challenger model call forecasts at most (within the time a gap leaves; larger "
        "calls cost less per window); above KRONOS_BATCH__MAX_BATCH_SIZE a call needs more memory than a round",
    )  # fmt: skip
    chunk_budget_s: float = Field(
        default=0.05, gt=0, le=10, allow_inf_nan=False,
        description="when a bar may arrive at any time (no regular burst schedule learned), a challenger "
        "call is sized from its measured cost to take about this long: the longest a round waits behind it; "
        "with a schedule, calls end this long before the next burst is due",
    )  # fmt: skip
    quiet_s: float = Field(
        default=0.25, gt=0, le=60, allow_inf_nan=False,
        description="no round for this long: a burst of rounds (one bar interval's bars) is over, and "
        "challenger calls may run",
    )  # fmt: skip
    max_defer_s: float = Field(
        default=1.0, gt=0, le=3600, allow_inf_nan=False,
        description="in a stream never quiet and without a regular burst schedule, challenger calls run "
        "between rounds anyway once the oldest waiting bar is this old; the challengers' scoring, waiting "
        "for a gap long enough, takes any gap after this long",
    )  # fmt: skip
    max_backlog: int = Field(
        default=4096, ge=1, le=1_000_000,
        description="bars waiting for the challengers at most; beyond, the oldest are skipped and counted",
    )  # fmt: skip
