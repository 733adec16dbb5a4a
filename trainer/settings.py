"""Trainer configuration: environment ``KRONOS_TRAIN__<FIELD>``, command-line flags override.

Examples: ``KRONOS_TRAIN__ARCHIVE=s3://bars/archive``, ``KRONOS_TRAIN__REGISTRY=/models``,
``KRONOS_TRAIN__SYMBOLS=600519,000001`` (a comma list or JSON), ``KRONOS_TRAIN__START=2024-01-01``,
``KRONOS_TRAIN__STEPS=500``, ``KRONOS_TRAIN__GATE_MARGIN=0.01``.

:func:`load_train_settings` turns every bad value into one :class:`TrainConfigError` naming the
variables (or flags) to fix.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

ENV_PREFIX = "KRONOS_TRAIN__"


class TrainConfigError(ValueError):
    """A trainer setting is missing or invalid; the message names the variable or flag."""


def _parse_list(value: Any) -> Any:
    """Accept ``A,B`` or ``["A", "B"]`` from the environment; pass sequences and None through."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if text.startswith("["):
            return json.loads(text)
        return [part for part in (p.strip() for p in text.split(",")) if part]
    return value


StrList = Annotated[tuple[str, ...] | None, NoDecode, BeforeValidator(_parse_list)]


class TrainSettings(BaseSettings):
    """Everything that shapes a training run (recorded in the published manifest)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    # -- where things are
    archive: str = Field(default="archive", description="archive root (local path or fsspec URL)")
    registry: str | None = Field(default=None, description="model registry root (local path or fsspec URL)")
    signing_key: Path | None = Field(default=None, description="Ed25519 private key (PEM, mounted from a Secret) "
                                     "that signs each published version's manifest; unset: versions are unsigned")
    work_dir: Path = Field(default=Path("train-work"), description="resumable training state lives here")
    tokenizer_dir: Path | None = Field(default=None, description="start from this tokenizer folder")
    predictor_dir: Path | None = Field(default=None, description="start from this predictor folder")

    # -- data
    start: dt.datetime | None = Field(default=None, description="first bar time trained on (naive: UTC)")
    end: dt.datetime | None = Field(default=None, description="end of the data range (exclusive); default: "
                                    "when the run first started (kept in the work folder)")
    last_days: float | None = Field(default=None, gt=0, description="train on the last N days before end "
                                    "(a rolling window for the periodic job; instead of start)")
    symbols: StrList = Field(default=None, description="symbols trained on (a comma list or JSON); default: all")
    lookback: int = Field(default=116, ge=2, description="context bars per window (statistics come from these)")
    horizon: int = Field(default=12, ge=1, description="bars after the context a window predicts (the loss)")
    val_fraction: float = Field(default=0.2, gt=0.0, lt=1.0, description="most recent share of the time range held out")
    calendar_tz: str | None = Field(default=None, description="zone of the calendar features (default: the "
                                    "starting model's manifest runtime.calendar_tz, else UTC)")
    eval_windows: int = Field(default=256, ge=1, description="held-out windows the gate scores: the same share "
                              "from every symbol, each spread over its whole held-out span")
    eval_samples: int = Field(default=8, ge=2, description="sample paths per window for CRPS and coverage")

    # -- optimisation
    steps: int = Field(default=200, ge=1, description="predictor optimisation steps")
    batch_size: int = Field(default=16, ge=1, description="windows per step and per process")
    lr: float = Field(default=4e-5, gt=0.0, le=1e-2, description="predictor peak learning rate (upstream 4e-5)")
    weight_decay: float = Field(default=0.1, ge=0.0, description="AdamW weight decay")
    warmup_steps: int = Field(default=20, ge=0, description="linear warm-up steps, then cosine decay")
    min_lr_ratio: float = Field(default=0.1, ge=0.0, le=1.0, description="end of the cosine decay, as a share of lr")
    grad_clip: float = Field(default=3.0, gt=0.0, description="predictor gradient-norm clipping")
    tokenizer_steps: int = Field(default=0, ge=0, description="0: tokenizer frozen; N: fine-tune it first")
    tokenizer_lr: float = Field(default=2e-4, gt=0.0, le=1e-2, description="tokenizer peak learning rate")
    tokenizer_grad_clip: float = Field(default=2.0, gt=0.0, description="tokenizer gradient-norm clipping")
    seed: int = Field(default=0, description="seed of the data order, dropout and draws")
    num_workers: int = Field(default=0, ge=0, description="data-loader worker processes per rank")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="where to train")
    bf16: bool = Field(default=True, description="bf16 autocast on CUDA (ignored on CPU)")
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads per process")

    # -- checkpointing and output
    save_every: int = Field(default=50, ge=1, description="steps between saved training states")
    log_every: int = Field(default=10, ge=1, description="steps between progress lines")
    progress: Literal["auto", "bar", "log"] = Field(default="auto", description="a bar on a terminal, JSON "
                                                    "lines otherwise (auto)")
    gate_margin: float = Field(default=0.0, ge=0.0, lt=1.0, description="required relative CRPS gain over the champion")
    keep_versions: int = Field(default=0, ge=0, description="after publishing, keep this many versions "
                               "(never the champion or the previous one); 0 keeps all")
    promote: bool = Field(default=True, description="move the champion pointer when the gate passes")
    challenger: bool = Field(default=False, description="a candidate that passes the gate becomes a challenger "
                             "(the daemons score it on live bars and promote it on evidence) instead of the "
                             "champion; see docs/models/challengers.md")
    version_prefix: str = Field(default="v", pattern=r"^[A-Za-z0-9_-]*$", description="prefix of published "
                                "version names")
    redis_url: str | None = Field(default=None, description="publish a hint on <key_prefix>:models")
    key_prefix: str = Field(default="kronos", min_length=1, pattern=r"^[^\s{}]+$", description="the daemons' "
                            "KRONOS_REDIS__KEY_PREFIX (the hint's channel)")

    @field_validator("registry", "redis_url", "signing_key", "calendar_tz", "tokenizer_dir", "predictor_dir", "start", "end",
                     mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value  # VAR="" means not set

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)  # naive times in the archive's zone: UTC
        return value

    @field_validator("calendar_tz")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown time zone {value!r} (an IANA name like Asia/Shanghai)") from exc
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainSettings:
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise ValueError(f"start ({self.start}) must be before end ({self.end})")
        if self.start is not None and self.last_days is not None:
            raise ValueError("give start or last_days, not both (last_days counts back from end)")
        if (self.tokenizer_dir is None) != (self.predictor_dir is None):
            raise ValueError("give both tokenizer_dir and predictor_dir, or neither (then the registry champion)")
        if self.tokenizer_dir is None and self.registry is None:
            raise ValueError(
                "nothing to start from: set registry (KRONOS_TRAIN__REGISTRY / --registry) or both "
                "tokenizer_dir and predictor_dir (--tokenizer-dir/--predictor-dir)"
            )
        return self

    @property
    def window(self) -> int:
        return self.lookback + self.horizon


def _variable(loc: tuple[int | str, ...]) -> str:
    field = str(loc[0]) if loc else "?"
    return f"{ENV_PREFIX}{field.upper()} / --{field.replace('_', '-')}"


def load_train_settings(**overrides: Any) -> TrainSettings:
    """Read the environment (``overrides``, e.g. from flags, win; None values are ignored)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return TrainSettings(**given)
    except ValidationError as exc:
        problems = [
            f"{_variable(err['loc'])}: {err['msg']}" if err["loc"] else err["msg"] for err in exc.errors()
        ]
        raise TrainConfigError("invalid trainer settings: " + "; ".join(problems)) from exc
    except SettingsError as exc:
        raise TrainConfigError(f"invalid trainer settings in the environment: {exc}") from exc
