"""Building the forecaster from settings: kronos_core's engine, or a plug-in factory.

Without ``KRONOS_MODEL__FACTORY``, the engine: ``kronos_core.StreamingForecaster`` over the checkpoint
in ``KRONOS_MODEL__TOKENIZER_DIR``/``KRONOS_MODEL__PREDICTOR_DIR`` (imported lazily). Its model version
is ``KRONOS_MODEL__VERSION`` or a content hash of the checkpoint files, so every replica names the same
model alike and forecast ids survive restarts. ``KRONOS_MODEL__FACTORY=package.module:callable`` names
a callable taking :class:`Settings` and returning a
:class:`~kronos_core.stream_types.StreamForecaster` instead (tests and demos use it).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

import structlog

from daemon.errors import ConfigError, ForecasterError
from daemon.model.manifest import find_manifest
from daemon.settings import Settings
from kronos_core.stream_types import StreamForecaster

log = structlog.get_logger("kronos.forecaster")


def checkpoint_version(*directories: Path) -> str:
    """A content hash of the checkpoint files: the same model gets the same version on every replica."""
    h = hashlib.blake2b(digest_size=6)
    for directory in directories:
        for name in ("config.json", "model.safetensors"):
            path = directory / name
            try:
                with path.open("rb") as handle:
                    while chunk := handle.read(1 << 20):
                        h.update(chunk)
            except OSError as exc:
                raise ForecasterError(f"cannot read {path}: {exc}; check KRONOS_MODEL__*_DIR") from exc
    return "ckpt-" + h.hexdigest()


def manifest_version(predictor_dir: Path) -> str | None:
    """The ``version`` of a published checkpoint's ``manifest.json`` (beside or above the model dirs)."""
    candidate = find_manifest(predictor_dir)
    if candidate is None:
        return None
    try:
        version = json.loads(candidate.read_text()).get("version")
    except (OSError, ValueError) as exc:
        raise ForecasterError(f"cannot read {candidate}: {exc}; fix or remove the manifest") from exc
    return str(version) if version else None


def _from_factory(path: str, settings: Settings) -> StreamForecaster:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"KRONOS_MODEL__FACTORY={path!r} must look like 'package.module:callable'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"KRONOS_MODEL__FACTORY={path!r} cannot be imported: {exc}") from exc
    return factory(settings)  # type: ignore[no-any-return]


def build_engine_forecaster(settings: Settings) -> StreamForecaster:
    """kronos_core's StreamingForecaster over a checkpoint (or a random-weight preset, for benchmarks)."""
    m = settings.model
    if not ((m.tokenizer_dir and m.predictor_dir) or m.preset):
        raise ConfigError(
            "no model configured: set KRONOS_MODEL__REGISTRY, or KRONOS_MODEL__TOKENIZER_DIR and "
            "KRONOS_MODEL__PREDICTOR_DIR (or KRONOS_MODEL__PRESET for benchmarks, or KRONOS_MODEL__FACTORY)"
        )
    import torch

    if m.threads:
        torch.set_num_threads(m.threads)
    from kronos_core import Kronos, KronosError, KronosTokenizer, StreamConfig, StreamingForecaster
    from kronos_core.engine import KronosEngine, SamplingParams
    from kronos_core.presets import build_pair

    try:
        if m.tokenizer_dir and m.predictor_dir:
            tokenizer = KronosTokenizer.from_pretrained(m.tokenizer_dir)
            model = Kronos.from_pretrained(m.predictor_dir)
            version = (
                m.version
                or manifest_version(m.predictor_dir)
                or checkpoint_version(m.tokenizer_dir, m.predictor_dir)
            )
        else:
            assert m.preset is not None
            tokenizer, model = build_pair(m.preset, seed=m.base_seed)
            version = m.version or f"preset-{m.preset}-seed{m.base_seed}"
        engine = KronosEngine(
            model,
            tokenizer,
            device=None if m.device == "auto" else m.device,
            max_context=m.max_context,
            dtype=getattr(torch, m.dtype),
            compile_blocks=m.compile,
            graph_buckets=m.graph_buckets,
            residual_fp32=m.residual_fp32,
            tokenizer_fp32=m.tokenizer_fp32,
        )
        config = StreamConfig(
            mode=settings.mode,
            sampling=SamplingParams(
                T=m.temperature, top_k=m.top_k, top_p=m.top_p, sample_count=m.sample_count
            ),
            quantile_levels=m.quantile_levels,
            refresh_every=settings.refresh_every_bars,
            drift_sigma=settings.drift_sigma,
            calendar_tz=m.calendar_tz,
            max_sessions=m.max_sessions,
            max_session_bytes=m.max_session_bytes,
        )
        forecaster = StreamingForecaster(engine, config, model_version=version)
        # CUDA: every batch-size bucket's graph is captured now (here at start-up, or while a new
        # version is built beside the one serving), never inside a forecast call.
        captured = engine.warm_up(m.horizon, config.sampling)
        if captured:
            log.info("cuda graphs captured", graphs=captured, buckets=list(m.graph_buckets), horizon=m.horizon)
        return forecaster
    except (KronosError, OSError, ValueError) as exc:
        raise ForecasterError(f"loading the model failed: {exc}") from exc


def serving_engine(forecaster: object) -> object | None:
    """The engine of the model in service (through a swappable forecaster); None without one."""
    return getattr(getattr(forecaster, "current", forecaster), "engine", None)


def on_cuda(forecaster: object) -> bool:
    """Whether the model in service runs on CUDA."""
    return getattr(getattr(serving_engine(forecaster), "device", None), "type", None) == "cuda"


def graph_captures(forecaster: StreamForecaster) -> tuple[int, int] | None:
    """(CUDA graphs captured in all, of which at warm-up) of an engine forecaster, through a
    swappable one's model in service; None for a forecaster without an engine."""
    engine = serving_engine(forecaster)
    total = getattr(engine, "graph_captures", None)
    if not isinstance(total, int):
        return None
    at_warm_up = getattr(engine, "graph_captures_at_warm_up", None)
    return total, at_warm_up if isinstance(at_warm_up, int) else 0


def check_forecaster(forecaster: StreamForecaster, settings: Settings) -> None:
    """Refuse a forecaster that disagrees with the settings the daemon runs with."""
    for name in ("model_version", "mode", "max_context", "quantile_levels", "forecast"):
        if not hasattr(forecaster, name):
            raise ForecasterError(f"{type(forecaster).__name__} lacks {name!r}: it is not a StreamForecaster")
    if forecaster.mode != settings.mode:
        raise ForecasterError(
            f"the forecaster runs in {forecaster.mode!r} mode but KRONOS_MODE is {settings.mode!r}"
        )
    if forecaster.max_context < settings.model.max_context:
        raise ForecasterError(
            f"the forecaster takes at most {forecaster.max_context} bars but KRONOS_MODEL__MAX_CONTEXT is "
            f"{settings.model.max_context}; lower the setting"
        )


def build_forecaster(settings: Settings) -> StreamForecaster:
    factory = settings.model.factory
    forecaster = _from_factory(factory, settings) if factory else build_engine_forecaster(settings)
    check_forecaster(forecaster, settings)
    return forecaster
