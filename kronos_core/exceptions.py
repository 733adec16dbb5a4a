"""Exceptions raised by kronos_core.

Every error meant for a caller derives from :class:`KronosError`. Bad caller input also
derives from :class:`ValueError` (and a missing checkpoint from :class:`FileNotFoundError`),
so ``except ValueError`` keeps working for code written against the upstream API.
"""

from __future__ import annotations


class KronosError(Exception):
    """Root of all kronos_core errors."""


class InputError(KronosError, ValueError):
    """The caller passed data kronos_core cannot use; the message says what to change."""


class ConfigError(KronosError, ValueError):
    """A model configuration (``config.json`` or a preset) is invalid."""


class CheckpointError(KronosError, ValueError):
    """A checkpoint does not match the model its config describes."""


class CheckpointNotFoundError(KronosError, FileNotFoundError):
    """A checkpoint directory or one of its files does not exist."""
