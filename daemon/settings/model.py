"""``KRONOS_MODEL__*``: where the model comes from, how it runs and samples."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from daemon.settings.base import GraphBuckets, Group, QuantileLevels


class ModelSettings(Group):
    tokenizer_dir: Path | None = Field(
        default=None, description="tokenizer checkpoint folder (`config.json` + `model.safetensors`)"
    )
    predictor_dir: Path | None = Field(default=None, description="predictor checkpoint folder")
    hf_tokenizer: str | None = Field(
        default=None,
        description="Hugging Face id of the tokenizer instead of the folder, e.g. "
        "`NeoQuasar/Kronos-Tokenizer-base` (fetched into the hub cache; `HF_HUB_OFFLINE=1`, `HF_TOKEN` honoured)",
    )
    hf_predictor: str | None = Field(
        default=None, description="Hugging Face id of the predictor, e.g. `NeoQuasar/Kronos-small`"
    )
    hf_revision: str | None = Field(default=None, description="branch, tag or commit of both (default: main)")
    preset: str | None = Field(
        default=None, description="random weights of a published shape (`Kronos-tiny`, ...): benchmarks only"
    )
    factory: str | None = Field(
        default=None, description="`module:callable` taking Settings and returning your own forecaster"
    )
    version: str | None = Field(
        default=None,
        description="model version in forecasts; default: the `version` of `manifest.json` beside the "
        "folders, else a content hash",
    )
    calendar_tz: str = Field(
        default="UTC",
        description="zone the time features (minute, hour, weekday...) are read in; default: the model "
        "manifest's `runtime.calendar_tz`, else UTC",
    )
    exchange_calendar: str | None = Field(
        default=None,
        description="`exchange_calendars` code (`XSHG`, `XNYS`, `XLON`...): horizon timestamps skip nights, "
        "weekends, holidays and breaks; default: the manifest's `runtime.exchange_calendar`, else 24/7",
    )
    calendar_bar_label: Literal["end", "start"] = Field(
        default="end", description="bars are stamped with their end (or start) time"
    )
    device: str = Field(default="auto", description="`auto`, `cpu`, `cuda` or `cuda:N`")
    threads: int | None = Field(
        default=None, ge=1, le=1024, description="torch CPU threads; unset: torch's default"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(default="float32", description="model dtype")
    compile: bool = Field(
        default=False,
        description="`torch.compile` the transformer blocks: pays on CUDA at large batches, slower at batch "
        "1; the first batches compile (tens of seconds)",
    )
    graph_buckets: GraphBuckets = Field(
        default=(1, 8, 32, 64, 128, 256, 512, 1024),
        description="CUDA: batch sizes whose decode-step CUDA graphs are captured at start-up; a call pads "
        "up to the next bucket, above the largest it runs in chunks; ignored on CPU",
    )
    residual_fp32: bool = Field(
        default=False, description="with bfloat16/float16: keep the transformers' residual stream in float32"
    )
    tokenizer_fp32: bool = Field(
        default=False, description="with bfloat16/float16: run the tokenizer in float32, the predictor in dtype"
    )
    max_context: int = Field(
        default=512,
        ge=2,
        le=8192,
        description="bars of context; default: the manifest's `runtime.max_context`, else 512; above the "
        "manifest's value the daemon refuses to start",
    )
    horizon: int = Field(default=12, ge=1, le=4096, description="bars forecast")
    sample_count: int = Field(default=8, ge=1, le=1024, description="sample paths per forecast")
    temperature: float = Field(default=1.0, gt=0, allow_inf_nan=False, description="sampling temperature")
    top_p: float = Field(default=0.9, gt=0, le=1, description="nucleus sampling")
    top_k: int = Field(default=0, ge=0, description="top-k sampling; 0: off")
    base_seed: int = Field(default=0, ge=0, description="base of the per-bar seeds")
    quantile_levels: QuantileLevels = Field(
        default=(0.1, 0.5, 0.9), description="quantile bands published (a comma list or JSON)"
    )
    max_sessions: int = Field(default=256, ge=1, description="incremental: warm symbols kept in memory")
    max_session_bytes: int | None = Field(
        default=None, ge=1, description="incremental: a bound in bytes on the warm sessions' caches"
    )
    registry: str | None = Field(
        default=None,
        description="a model registry (local path or fsspec URL) instead of fixed folders: the daemon serves "
        "its champion and hot-swaps when the pointer moves",
    )
    registry_public_key: Path | None = Field(
        default=None,
        description="Ed25519 public key (PEM) of the registry's signer: versions whose `manifest.sig` is missing "
        "or not this key's signature of the manifest are refused (the current model keeps serving); unset: "
        "signatures are not checked",
    )
    registry_poll_s: float = Field(
        default=10.0, gt=0, allow_inf_nan=False, description="how often the registry's pointer is read"
    )
    registry_hint: bool = Field(
        default=True, description="listen to the registry's Redis channel `{key_prefix}:models` (wakes the reader)"
    )
    registry_retry_s: float = Field(
        default=30.0, gt=0, allow_inf_nan=False, description="a refused version is tried again after this ..."
    )
    registry_retry_max_s: float = Field(
        default=600.0, gt=0, allow_inf_nan=False, description="... doubling up to this"
    )
    cache_dir: Path | None = Field(
        default=None, description="where a fetched version is unpacked (deleted once loaded); default: a temporary folder"
    )

    @model_validator(mode="after")
    def _horizon_fits(self) -> ModelSettings:
        if self.horizon >= self.max_context:
            raise ValueError(
                f"horizon ({self.horizon}) must be below max_context ({self.max_context}); "
                "lower KRONOS_MODEL__HORIZON or raise KRONOS_MODEL__MAX_CONTEXT"
            )
        return self

    @model_validator(mode="after")
    def _one_model_source(self) -> ModelSettings:
        if self.registry and (self.tokenizer_dir or self.predictor_dir or self.preset or self.factory):
            raise ValueError(
                "KRONOS_MODEL__REGISTRY names the model, so leave KRONOS_MODEL__TOKENIZER_DIR, "
                "KRONOS_MODEL__PREDICTOR_DIR, KRONOS_MODEL__PRESET and KRONOS_MODEL__FACTORY unset"
            )
        return self

    @field_validator("calendar_tz")
    @classmethod
    def _zone_known(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {name!r}; use an IANA name such as Asia/Shanghai") from exc
        return name

    @field_validator("exchange_calendar")
    @classmethod
    def _calendar_known(cls, name: str | None) -> str | None:
        if name is None or not name.strip() or name.strip().upper() == "24/7":
            return None
        import exchange_calendars as xc

        names = xc.get_calendar_names(include_aliases=True)
        if name.strip() not in names:
            raise ValueError(
                f"unknown exchange calendar {name!r}; use an exchange_calendars code such as XSHG, XNYS, "
                "XLON, XTKS, or 24/7 (no gaps)"
            )
        return name.strip()

    @field_validator("graph_buckets")
    @classmethod
    def _buckets_valid(cls, buckets: tuple[int, ...]) -> tuple[int, ...]:
        from kronos_core.graphed_decode import validate_buckets

        return validate_buckets(buckets)

    @field_validator("quantile_levels")
    @classmethod
    def _levels_valid(cls, levels: tuple[float, ...]) -> tuple[float, ...]:
        if not levels:
            raise ValueError("name at least one level, e.g. 0.1,0.5,0.9")
        if any(not (0.0 < q < 1.0) or math.isnan(q) for q in levels):
            raise ValueError(f"levels must lie strictly between 0 and 1, got {levels}")
        if list(levels) != sorted(set(levels)):
            raise ValueError(f"levels must be increasing without repeats, got {levels}")
        return levels
