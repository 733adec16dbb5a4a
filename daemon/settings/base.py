"""What the settings groups share: the variable naming and the list parsing."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict
from pydantic_settings import NoDecode

ENV_PREFIX = "KRONOS_"
NESTED_DELIMITER = "__"


def _parse_levels(value: Any) -> Any:
    """Accept ``0.1,0.5,0.9`` or ``[0.1, 0.5, 0.9]`` from the environment; pass sequences through."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part for part in (p.strip() for p in text.split(",")) if part]
    return value


QuantileLevels = Annotated[tuple[float, ...], NoDecode, BeforeValidator(_parse_levels)]
GraphBuckets = Annotated[tuple[int, ...], NoDecode, BeforeValidator(_parse_levels)]


class Group(BaseModel):
    """A settings group (``KRONOS_GROUP__FIELD``): frozen, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")
