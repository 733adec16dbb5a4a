"""Loading and vetting one registry version before it may serve.

:func:`load_version` (:func:`prepare_version`, then :func:`build_version`) fetches a version with
every sha256 verified, checks its configs against the settings (six features, s1/s2 bits, the
manifest's ``runtime.max_context`` not below ours), builds it, and runs a smoke forecast on real cached
windows (finite numbers of the right shapes). On CUDA it waits (:class:`LoadDeferred`) while the device
has no room for both models. With ``KRONOS_MODEL__REGISTRY_PUBLIC_KEY`` a version must carry that
key's Ed25519 signature of its manifest (``manifest.sig``, :mod:`kronos_contract.signing`); an
unsigned or wrongly signed one is refused (``result="signature"``). A version that fails any step
raises :class:`LoadRefused`, whose ``result`` labels ``kronos_model_swaps_total``.

All of it is blocking: the follower (:mod:`daemon.model.follower`) runs it off the event loop.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daemon.errors import ConfigError, DaemonError, ForecasterError
from daemon.io.messages import horizon_ns, infer_interval_ns
from daemon.settings import Settings
from daemon.state.base import SymbolState
from kronos_core.stream_types import FEATURES, SeriesForecast, SeriesWindow, StreamForecaster

SMOKE_SERIES = 4  # cached windows the smoke forecast runs on
SMOKE_PREFIX = "__smoke__:"  # series ids of smoke forecasts (their warm sessions are dropped after)


class LoadRefused(DaemonError):
    """A version that must not serve; ``result`` is the ``kronos_model_swaps_total`` label."""

    def __init__(self, result: str, reason: str) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason


class LoadDeferred(DaemonError):
    """Not now (e.g. no room on the GPU for a second model); tried again later, not a refusal."""


@dataclass
class LoadedModel:
    forecaster: StreamForecaster
    load_s: float
    warmup_s: float


def smoke_windows(
    states: Mapping[str, SymbolState], horizon: int, default_interval_ns: int
) -> list[SeriesWindow]:
    """Up to ``SMOKE_SERIES`` windows of the bars the daemon holds (a random walk when it holds none)."""
    windows: list[SeriesWindow] = []
    for symbol, state in list(states.items()):
        if len(windows) >= SMOKE_SERIES:
            break
        if len(state) < 2:
            continue
        ts = list(state.timestamps)
        interval = infer_interval_ns(ts, default_interval_ns)
        future = horizon_ns(ts[-1], interval, horizon)
        windows.append(
            SeriesWindow(
                SMOKE_PREFIX + symbol,
                np.asarray(list(state.rows), dtype=np.float64),
                np.asarray(ts, dtype="datetime64[ns]"),
                np.asarray(future, dtype="datetime64[ns]"),
                seed=0,
            )
        )
    if not windows:
        n = max(2 * horizon, 16)
        rng = np.random.default_rng(0)
        close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
        values = np.stack([close, close * 1.001, close * 0.999, close, np.full(n, 1e3), close * 1e3], axis=1)
        ts = [1_700_000_000_000_000_000 + i * default_interval_ns for i in range(n)]
        future = horizon_ns(ts[-1], default_interval_ns, horizon)
        windows.append(
            SeriesWindow(
                SMOKE_PREFIX + "synthetic",
                values,
                np.asarray(ts, dtype="datetime64[ns]"),
                np.asarray(future, dtype="datetime64[ns]"),
                seed=0,
            )
        )
    return windows


def check_smoke(
    results: Sequence[SeriesForecast], windows: Sequence[SeriesWindow], horizon: int, levels: int
) -> None:
    """Finite numbers of the right shapes, one forecast per window, in order; else LoadRefused."""
    if len(results) != len(windows):
        raise LoadRefused(
            "smoke_failed", f"smoke forecast: {len(results)} answers for {len(windows)} windows"
        )
    width = len(FEATURES)
    for r, w in zip(results, windows, strict=True):
        shapes = {"mean": (r.mean, (horizon, width)), "quantiles": (r.quantiles, (levels, horizon, width))}
        for name, (array, shape) in shapes.items():
            if np.shape(array) != shape:
                raise LoadRefused(
                    "smoke_failed",
                    f"smoke forecast of {w.series_id}: {name} has shape {np.shape(array)}, not {shape}",
                )
        if np.ndim(r.samples) != 3 or np.shape(r.samples)[1:] != (horizon, width):
            raise LoadRefused(
                "smoke_failed", f"smoke forecast of {w.series_id}: samples shape {np.shape(r.samples)}"
            )
        for name, array in (("mean", r.mean), ("samples", r.samples), ("quantiles", r.quantiles)):
            if not np.isfinite(np.asarray(array, dtype=np.float64)).all():
                raise LoadRefused("smoke_failed", f"smoke forecast of {w.series_id}: {name} holds NaN or inf")


def check_configs(tokenizer_dir: Path, predictor_dir: Path) -> None:
    """The checkpoint takes the daemon's six features and its two halves agree on the token bits."""
    try:
        tok = json.loads((tokenizer_dir / "config.json").read_text())
        pred = json.loads((predictor_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise LoadRefused("incompatible", f"cannot read the model's config.json: {exc}") from exc
    if tok.get("d_in") != len(FEATURES):
        raise LoadRefused(
            "incompatible",
            f"the tokenizer takes {tok.get('d_in')} features, the daemon sends {len(FEATURES)}",
        )
    for bits in ("s1_bits", "s2_bits"):
        if tok.get(bits) != pred.get(bits):
            raise LoadRefused(
                "incompatible", f"tokenizer {bits}={tok.get(bits)} but predictor {bits}={pred.get(bits)}"
            )


def runtime_overrides(manifest: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """The manifest's runtime settings applied to ours: its ``calendar_tz`` unless
    KRONOS_MODEL__CALENDAR_TZ is set; a KRONOS_MODEL__MAX_CONTEXT above its ``max_context`` is refused
    (a swapped-in version cannot change the daemon's context length: the bar rings are sized by it)."""
    runtime = manifest.get("runtime") or {}
    if not isinstance(runtime, Mapping):
        raise LoadRefused("incompatible", f"manifest runtime is {type(runtime).__name__}, not an object")
    overrides: dict[str, Any] = {}
    supported = runtime.get("max_context")
    if supported is not None and settings.model.max_context > int(supported):
        raise LoadRefused(
            "incompatible",
            f"KRONOS_MODEL__MAX_CONTEXT is {settings.model.max_context} but the model supports at most "
            f"{supported} bars (manifest runtime.max_context); lower the setting or publish another model",
        )
    tz = runtime.get("calendar_tz")
    if tz and "calendar_tz" not in settings.model.model_fields_set:
        overrides["calendar_tz"] = str(tz)  # the zone the model was trained in, unless set explicitly
    return overrides


def cuda_room(device: str, weight_bytes: int) -> tuple[bool, int]:
    """Whether a CUDA device has room for another copy of the weights and their working memory."""
    import torch

    if (
        device == "cpu"
        or not torch.cuda.is_available()
        or not (device == "auto" or device.startswith("cuda"))
    ):
        return True, -1
    index = torch.device("cuda" if device == "auto" else device).index or 0
    free, _total = torch.cuda.mem_get_info(index)
    return free >= 2 * weight_bytes, free


def check_weights_finite(forecaster: StreamForecaster) -> None:
    """Every weight of an engine forecaster is finite. (A predictor of NaN weights still gives finite
    forecasts: sampling from NaN logits picks token 0, which the tokenizer decodes to real numbers.)"""
    engine = getattr(forecaster, "engine", None)
    for part in ("model", "tokenizer"):
        module = getattr(engine, part, None)
        if module is None:
            continue
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
                raise LoadRefused("smoke_failed", f"the {part}'s {name} holds NaN or inf values")


@dataclass
class Prepared:
    """A fetched, verified and checked version, not built yet."""

    version: str
    dest: Path  # the fetched files (deleted once built)
    settings: Settings  # the daemon's settings pointing at them, with the manifest's runtime settings
    fetch_s: float


def prepare_version(
    registry: Any, version: str, settings: Settings, cache_root: Path, public_key: Any | None = None
) -> Prepared:
    """Fetch with every sha256 verified (and with ``public_key`` the manifest's signature), check configs,
    runtime settings and (on CUDA) room. Blocking, and no CUDA work: any worker thread."""
    from kronos_contract.signing import SignatureError

    t0 = time.perf_counter()
    dest = cache_root / version
    shutil.rmtree(dest, ignore_errors=True)
    try:
        try:
            # (a registry without signatures in use is called as before: test doubles take two arguments)
            extra = () if public_key is None else (public_key,)
            local = registry.fetch(version, dest, *extra)
        except SignatureError as exc:
            raise LoadRefused("signature", f"{exc} (KRONOS_MODEL__REGISTRY_PUBLIC_KEY)") from exc
        except Exception as exc:  # RegistryError (checksum, missing file) or the storage's own errors
            text = str(exc)
            result = "checksum" if ("sha256" in text or "checksum" in text) else "fetch_failed"
            raise LoadRefused(result, f"fetching {version} failed: {type(exc).__name__}: {exc}") from exc
        manifest = dict(local.manifest)
        if manifest.get("version", version) != version:
            raise LoadRefused(
                "incompatible", f"{version}'s manifest names version {manifest.get('version')!r}"
            )
        tokenizer_dir, predictor_dir = Path(local.tokenizer_dir), Path(local.predictor_dir)
        check_configs(tokenizer_dir, predictor_dir)
        overrides = runtime_overrides(manifest, settings)
        m = settings.model
        weights = sum(
            p.stat().st_size
            for p in (tokenizer_dir / "model.safetensors", predictor_dir / "model.safetensors")
        )
        room, free = cuda_room(m.device, weights)
        if not room:
            raise LoadDeferred(
                f"{version}: {free} bytes free on {m.device}, not room for a second model of {weights} bytes; "
                "waiting for memory (the current model keeps serving)"
            )
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    model = m.model_copy(
        update={
            "tokenizer_dir": tokenizer_dir,
            "predictor_dir": predictor_dir,
            "version": version,
            **overrides,
        }
    )
    return Prepared(version, dest, settings.model_copy(update={"model": model}), time.perf_counter() - t0)


def build_version(prepared: Prepared, settings: Settings, states: Mapping[str, SymbolState]) -> LoadedModel:
    """Build a prepared version and smoke-test it on ``states``' bars. Blocking; on CUDA it must run on
    the thread that runs the model calls (see :func:`uses_cuda`)."""
    from daemon.model.build import build_engine_forecaster, check_forecaster

    version, m = prepared.version, settings.model
    t0 = time.perf_counter()
    try:
        forecaster = build_engine_forecaster(prepared.settings)
        check_forecaster(forecaster, settings)
    except (ForecasterError, ConfigError) as exc:
        raise LoadRefused("load_failed", f"building {version} failed: {exc}") from exc
    finally:
        shutil.rmtree(prepared.dest, ignore_errors=True)  # the weights are in memory now
    load_s = prepared.fetch_s + time.perf_counter() - t0
    t1 = time.perf_counter()
    check_weights_finite(forecaster)
    windows = smoke_windows(states, m.horizon, int(settings.default_bar_interval_s * 1e9))
    try:
        results = forecaster.forecast(windows, m.horizon)
    except Exception as exc:
        raise LoadRefused(
            "smoke_failed", f"smoke forecast of {version} failed: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        forget = getattr(forecaster, "drop", None)
        if callable(forget):
            forget([w.series_id for w in windows])
    check_smoke(results, windows, m.horizon, len(m.quantile_levels))
    return LoadedModel(forecaster, load_s, time.perf_counter() - t1)


def load_version(
    registry: Any, version: str, settings: Settings, cache_root: Path, states: Mapping[str, SymbolState]
) -> LoadedModel:
    """Fetch, verify, check, build and smoke-test one version (blocking: run it in a worker thread)."""
    return build_version(
        prepare_version(registry, version, settings, cache_root, public_key_of(settings)), settings, states
    )


def public_key_of(settings: Settings) -> Any | None:
    """The signer's public key of ``KRONOS_MODEL__REGISTRY_PUBLIC_KEY`` (None: signatures not checked)."""
    path = settings.model.registry_public_key
    if path is None:
        return None
    from kronos_contract.signing import SignatureError, load_public_key

    try:
        return load_public_key(path)
    except SignatureError as exc:
        raise ConfigError(f"KRONOS_MODEL__REGISTRY_PUBLIC_KEY: {exc}") from exc


def uses_cuda(settings: Settings) -> bool:
    """Whether the model runs on CUDA. There, building a version and its smoke forecast run on the
    daemon's model thread between calls, not beside it: with CUDA graphs captured on one thread
    (``torch.cuda.graph``'s default error mode), allocations or syncs from another thread in the
    meantime break the capture, so one thread does all the CUDA work."""
    device = settings.model.device
    if device == "auto":
        import torch

        return bool(torch.cuda.is_available())
    return device.startswith("cuda")
