"""Settings the model carries: the ``runtime`` block of its ``manifest.json`` gives the defaults.

A published checkpoint's manifest (beside the predictor folder or one level above it, as the registry
and the demo model lay it out) may hold::

    "runtime": {"max_context": 128, "calendar_tz": "Asia/Shanghai", "exchange_calendar": "XSHG"}

- ``max_context``: the longest window the model was trained on. It is the default of
  ``KRONOS_MODEL__MAX_CONTEXT``; a larger value set explicitly is refused at start-up (the model would
  silently run on positions it never saw). A smaller one is allowed.
- ``calendar_tz`` and ``exchange_calendar``: defaults of ``KRONOS_MODEL__CALENDAR_TZ`` and
  ``KRONOS_MODEL__EXCHANGE_CALENDAR`` (the zone its time features were trained in, its market).

A variable that is set always wins, except for the ``max_context`` bound. Without a manifest (an
upstream checkpoint) nothing changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from daemon.errors import ConfigError
from daemon.settings import ModelSettings, Settings

log = structlog.get_logger("kronos.model_runtime")

DEFAULTED = ("max_context", "calendar_tz", "exchange_calendar")


def find_manifest(predictor_dir: Path) -> Path | None:
    for candidate in (predictor_dir / "manifest.json", predictor_dir.parent / "manifest.json"):
        if candidate.is_file():
            return candidate
    return None


def load_manifest(predictor_dir: Path) -> dict[str, Any] | None:
    path = find_manifest(predictor_dir)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; fix or remove the manifest") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a JSON object; fix or remove the manifest")
    return data


def apply_model_runtime(settings: Settings, manifest: dict[str, Any] | None = None) -> Settings:
    """``settings`` with the manifest's runtime defaults for the fields not set explicitly; raises
    ConfigError when KRONOS_MODEL__MAX_CONTEXT exceeds the model's."""
    m = settings.model
    if manifest is None:
        if m.predictor_dir is None or m.factory or m.preset:
            return settings
        manifest = load_manifest(Path(m.predictor_dir))
    runtime = (manifest or {}).get("runtime") or {}
    if not isinstance(runtime, dict) or not runtime:
        return settings
    version = (manifest or {}).get("version", "?")
    updates: dict[str, Any] = {}
    supported = runtime.get("max_context")
    if supported is not None:
        supported = int(supported)
        if "max_context" in m.model_fields_set:
            if m.max_context > supported:
                raise ConfigError(
                    f"KRONOS_MODEL__MAX_CONTEXT={m.max_context} is above what model {version} supports: it was "
                    f"trained on windows of {supported} bars (manifest.json runtime.max_context). Set "
                    f"KRONOS_MODEL__MAX_CONTEXT to {supported} or less, or leave it unset to use {supported}."
                )
        elif m.max_context != supported:
            updates["max_context"] = supported
    for name in ("calendar_tz", "exchange_calendar"):
        if name in runtime and name not in m.model_fields_set and runtime[name] != getattr(m, name):
            updates[name] = runtime[name]
    if not updates:
        return settings
    try:
        model = ModelSettings.model_validate({**m.model_dump(), **updates})
    except ValidationError as exc:
        raise ConfigError(
            f"the runtime settings of model {version}'s manifest.json do not fit the other settings: "
            f"{exc.errors(include_url=False)[0]['msg']}; set the KRONOS_MODEL__ variables explicitly"
        ) from exc
    log.info("model settings from its manifest", version=version, **{k: str(v) for k, v in updates.items()})
    return settings.model_copy(update={"model": model})


# -- official checkpoints by Hugging Face id -------------------------------------------------------

HUB_FILES = ["config.json", "model.safetensors"]


def resolve_hub_checkpoints(settings: Settings) -> Settings:
    """``KRONOS_MODEL__HF_TOKENIZER``/``HF_PREDICTOR`` (e.g. ``NeoQuasar/Kronos-Tokenizer-base`` and
    ``NeoQuasar/Kronos-small``) -> local snapshot folders through ``huggingface_hub``: its cache
    (``HF_HOME``/``HF_HUB_CACHE``) is used and filled, ``HF_HUB_OFFLINE=1`` reads the cache only, and
    ``HF_TOKEN`` is honoured. Only ``config.json`` and ``model.safetensors`` are fetched."""
    m = settings.model
    if not (m.hf_tokenizer or m.hf_predictor):
        return settings
    if not (m.hf_tokenizer and m.hf_predictor):
        raise ConfigError("set both KRONOS_MODEL__HF_TOKENIZER and KRONOS_MODEL__HF_PREDICTOR (or neither)")
    if m.tokenizer_dir or m.predictor_dir:
        raise ConfigError(
            "KRONOS_MODEL__HF_* and KRONOS_MODEL__TOKENIZER_DIR/PREDICTOR_DIR both name a model; keep one"
        )
    dirs = {
        "tokenizer_dir": _snapshot(m.hf_tokenizer, m.hf_revision, "KRONOS_MODEL__HF_TOKENIZER"),
        "predictor_dir": _snapshot(m.hf_predictor, m.hf_revision, "KRONOS_MODEL__HF_PREDICTOR"),
    }
    model = ModelSettings.model_validate({**m.model_dump(exclude_unset=True), **dirs})
    return settings.model_copy(update={"model": model})


def _snapshot(repo_id: str, revision: str | None, variable: str) -> Path:
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise ConfigError(
            f"{variable} needs the huggingface_hub package: pip install huggingface_hub"
        ) from exc
    try:
        path = snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES)
    except LocalEntryNotFoundError as exc:
        raise ConfigError(
            f"{variable}={repo_id}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the hub cannot "
            f"be reached{' (HF_HUB_OFFLINE is set)' if constants.HF_HUB_OFFLINE else ''}. Download it once with "
            "network access, or point HF_HUB_CACHE at a cache that holds it."
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ConfigError(
            f"{variable}={repo_id}: no such model on the Hugging Face hub (or no access)"
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise ConfigError(f"{variable}={repo_id}: fetching from the Hugging Face hub failed: {exc}") from exc
    folder = Path(str(path))
    missing = [name for name in HUB_FILES if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"{variable}={repo_id}: the snapshot in {folder} lacks {missing}")
    log.info("model from the Hugging Face hub", repo=repo_id, revision=revision or "main", folder=str(folder))
    return folder


def prepare_model_settings(settings: Settings) -> Settings:
    """Hub ids resolved to folders, then the manifest's runtime defaults (may block: call off the loop)."""
    return apply_model_runtime(resolve_hub_checkpoints(settings))
