"""``kronos-stream run --print-config``: the settings the daemon would run with, secrets masked.

One ``KRONOS_...=value`` line per setting (the form they are set in), after the model manifest's
runtime defaults are applied; passwords (``SecretStr`` fields and a password inside a URL) print as
``***``; unset settings print as comments.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, SecretStr

from daemon.settings import ENV_PREFIX, NESTED_DELIMITER, Settings

MASK = "***"
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/]*):(?P<password>[^@/]+)@", re.I)


def mask_url(url: str) -> str:
    """``redis://user:secret@host`` -> ``redis://user:***@host``."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", url)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return mask_url(value)
    return str(value)


def config_lines(settings: Settings) -> list[str]:
    lines = []
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, BaseModel):
            pairs = [(f"{ENV_PREFIX}{name.upper()}{NESTED_DELIMITER}{sub.upper()}", getattr(value, sub))
                     for sub in type(value).model_fields]  # fmt: skip
        else:
            pairs = [(f"{ENV_PREFIX}{name.upper()}", value)]
        for var, v in pairs:
            text = _text(v)
            lines.append(f"# {var} unset" if text is None else f"{var}={text}")
    return lines
