"""``GET /v1/models`` (the registry's versions, champion and challengers) and ``GET /v1/scores`` (the
live scores per model version, as ``kronos-stream scores --json`` prints them)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from daemon.api.errors import ERROR_RESPONSES, ApiError
from daemon.api.service import ApiService

REGISTRY_CACHE_S = 5.0  # a listing reads every manifest: shared by the requests of a few seconds


class ModelVersion(BaseModel):
    version: str
    role: str = Field(description="`champion`, `previous`, `challenger` or empty")
    created_at: str | None = None
    parent: str | None = None


class ModelsResponse(BaseModel):
    serving: str | None = Field(description="the version this daemon forecasts with")
    registry: str | None = Field(description="the registry's URL (KRONOS_MODEL__REGISTRY); null: fixed folders")
    champion: str | None
    previous: str | None = None
    challengers: list[str] = Field(default_factory=list, description="versions scored beside the champion")
    versions: list[ModelVersion]


class ScoresResponse(BaseModel):
    hours: int
    versions: dict[str, dict[str, Any]] = Field(
        description="model version -> its scores (`VERSION@model`: the model's own bands under guarded ones)"
    )


def challengers_of(pointer: dict[str, Any]) -> list[str]:
    """The pointer's challenger versions: absent = none; items may be names or {"version": name}."""
    out = []
    for item in pointer.get("challengers") or []:
        name = item.get("version") if isinstance(item, dict) else item
        if isinstance(name, str) and name:
            out.append(name)
    return out


def registry_listing(url: str) -> dict[str, Any]:
    """The registry's versions and roles (blocking: fsspec)."""
    from kronos_contract.challengers import read as read_challengers
    from kronos_contract.registry import Registry

    registry = Registry(url)
    pointer = registry.pointer()
    # the registry's challengers.json (kronos_contract/challengers.py); the pointer's own list if it has one
    challengers = challengers_of(pointer) or challengers_of(read_challengers(registry))
    roles: dict[Any, str] = {v: "challenger" for v in challengers}
    roles.update({pointer.get("previous"): "previous", pointer.get("version"): "champion"})
    versions = []
    for version in registry.versions():
        manifest = registry.manifest(version)
        versions.append({
            "version": version, "role": roles.get(version, ""),
            "created_at": manifest.get("created_at"), "parent": manifest.get("parent"),
        })  # fmt: skip
    return {
        "champion": pointer.get("version"),
        "previous": pointer.get("previous"),
        "challengers": challengers,
        "versions": versions,
    }


def catalog_router(service: ApiService) -> APIRouter:
    router = APIRouter(tags=["models"])
    cache: dict[str, tuple[float, dict[str, Any]]] = {}

    async def listing(url: str) -> dict[str, Any]:
        held = cache.get(url)
        if held is not None and time.monotonic() - held[0] < REGISTRY_CACHE_S:
            return held[1]
        from kronos_contract.registry import RegistryError

        try:
            found = await asyncio.to_thread(registry_listing, url)
        except (RegistryError, OSError) as exc:
            raise ApiError(503, f"the model registry cannot be read now: {exc}") from exc
        cache[url] = (time.monotonic(), found)
        return found

    @router.get("/v1/models", operation_id="list_models", summary="Model versions, the champion and the challengers",
                response_model=ModelsResponse, responses=ERROR_RESPONSES)  # fmt: skip
    async def models() -> Any:
        serving = service.serving_version
        url = service.settings.model.registry
        if not url:  # fixed folders: the one version served
            rows = [{"version": serving, "role": "champion"}] if serving else []
            return {"serving": serving, "registry": None, "champion": serving, "versions": rows}
        return {"serving": serving, "registry": url, **await listing(url)}

    @router.get("/v1/scores", operation_id="get_scores", summary="Live scores per model version", response_model=ScoresResponse,
                responses=ERROR_RESPONSES)  # fmt: skip
    async def scores(
        hours: int = Query(default=24, ge=1, le=24 * 366, description="the window, in hours"),  # noqa: B008
        version: str | None = Query(  # noqa: B008
            default=None, max_length=200, description="one model version (and its `@model` bands); default: all"
        ),
    ) -> Any:
        from daemon.scoring.report import report_dict

        scorer = service.scorer
        if scorer is None:
            raise ApiError(503, "online scoring is off on this daemon (KRONOS_SCORING__ENABLED=false)")
        versions = [version, version + "@model"] if version else None
        try:
            sums = await scorer.store.read(versions, hours, time.time())
        except (RedisError, OSError) as exc:  # the score store does not wrap its client's errors
            raise ApiError(503, f"the scores cannot be read from Redis now: {exc}") from exc
        return {"hours": hours, "versions": {v: report_dict(acc) for v, acc in sums.items()}}

    return router
