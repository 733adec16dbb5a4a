"""Start-up warnings about model settings that work, but badly."""

from __future__ import annotations

import structlog

from daemon.settings import Settings

log = structlog.get_logger("kronos.app")

# Incremental mode keeps max_context - horizon - refresh_every bars after a refresh; fewer than this
# and the frozen statistics rest on too few bars (one bar: a zero std, so every next bar is a drift
# and refreshes again: incremental mode then runs as a costlier exact mode).
MIN_REFRESHED_CONTEXT = 16


def warn_short_refreshed_context(s: Settings) -> None:
    """At start-up: incremental mode set to refresh so rarely that too few bars stay after a refresh."""
    keep = s.model.max_context - s.model.horizon - s.refresh_every_bars
    if s.mode == "incremental" and keep < MIN_REFRESHED_CONTEXT:
        log.warning(
            "incremental mode keeps too few bars after a refresh; lower KRONOS_REFRESH_EVERY_BARS to at most "
            f"max_context - horizon - {MIN_REFRESHED_CONTEXT} = "
            f"{s.model.max_context - s.model.horizon - MIN_REFRESHED_CONTEXT}",
            bars_kept=max(1, keep), max_context=s.model.max_context, horizon=s.model.horizon,
            refresh_every_bars=s.refresh_every_bars,
        )  # fmt: skip
