"""The daemon's exceptions: one root, a few small subclasses, foreign errors wrapped ``from exc``."""

from __future__ import annotations


class DaemonError(Exception):
    """Root of every error the daemon raises on purpose."""


class ConfigError(DaemonError):
    """A setting is missing or has a bad value; the message names the KRONOS_... variable."""


class BusError(DaemonError):
    """Kafka (or the in-memory bus) failed: connect, fetch, produce or commit."""


class CommitRefused(BusError):
    """The group rebalanced before a commit: the partitions may belong to another member now.
    Nothing is lost (the messages are processed again, with the same forecast ids)."""


class BusUnavailable(BusError):
    """Kafka cannot be reached right now (connection refused or lost, a timeout, no leader): the loop
    waits it out with backoff instead of giving up on the message."""


class StateError(DaemonError):
    """The state store (Redis or in-memory) failed or holds a record it cannot read."""


class CorruptState(StateError):
    """One symbol's stored state cannot be read: that symbol's bars are dead-lettered (kind ``state``)
    until the keys are deleted; the other symbols go on."""

    def __init__(self, message: str, symbol: str) -> None:
        super().__init__(message)
        self.symbol = symbol


class StateUnavailable(StateError):
    """The state store cannot be reached right now (connection refused or lost, a timeout, loading)."""


class OutageTooLong(DaemonError):
    """Kafka or Redis stayed unreachable longer than ``KRONOS_OUTAGE_GIVE_UP_S``: the process ends."""


class ForecasterError(DaemonError):
    """The forecaster could not be built, or answered something that breaks the contract."""


class InvalidBar(DaemonError):
    """An input message is not a valid bar; ``reason`` goes into the dead-letter header and ``kind``
    (empty, json, schema, key) into the ``invalid`` metric label."""

    def __init__(self, reason: str, kind: str = "schema") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
