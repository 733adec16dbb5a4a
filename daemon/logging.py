"""structlog set up once per process: one JSON object per line on stderr (``console`` for people).

Standard-library loggers (aiokafka, redis) go through the same renderer, so a log collector sees one
format. Every record has ``timestamp`` (UTC ISO-8601), ``level``, ``logger`` and ``event``; a logged
exception is an ``exception`` list of ``{exc_type, exc_value, frames: [{filename, lineno, name}]}``
(structlog's ``dict_tracebacks``), not a text blob, and without the frames' local variables (they may hold
credentials: an API key, a request's headers, a password).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_configured = False
_DICT_TRACEBACKS = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Configure structlog and the stdlib root logger; later calls only change the level."""
    global _configured
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    logging.getLogger().setLevel(numeric)
    if _configured:
        return
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                # JSON: the exception as structured data (type, value, frames); console: as text
                _DICT_TRACEBACKS if fmt == "json" else structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    logging.getLogger("aiokafka").setLevel(max(numeric, logging.WARNING))
    _configured = True
