"""Serving the registry's champion and hot-swapping it while the daemon keeps consuming.

With ``KRONOS_MODEL__REGISTRY`` (an fsspec URL of a :class:`kronos_contract.registry.Registry`) the
daemon serves the version the champion pointer names and follows the pointer:

* :class:`ModelFollower` polls the pointer every ``KRONOS_MODEL__REGISTRY_POLL_S`` and listens to the
  registry's Redis channel (``{key_prefix}:models``): a hint only wakes the poll, the pointer stays the
  truth.
* A new version is loaded in a worker thread (off the event loop and off the model thread) by
  :func:`load_version`: fetched with every sha256 verified, its configs checked against the settings
  (six features, s1/s2 bits, the manifest's ``runtime.max_context`` not below ours), built, and a
  smoke forecast run on real cached windows (finite numbers of the right shapes). On CUDA it waits
  while the device has no room for both models.
* A loaded version is handed to :class:`SwappableForecaster`, which puts it in service at the start of
  the next model call (:meth:`SwappableForecaster.pin`): every round of the loop runs one version from
  its first window to its last forecast, and the old model is dropped once no call holds it.
* With ``KRONOS_MODEL__REGISTRY_PUBLIC_KEY`` a version must carry that key's Ed25519 signature of its
  manifest (``manifest.sig``, :mod:`kronos_contract.signing`); an unsigned or wrongly signed one is
  refused (``result="signature"``).
* A version that fails any step is refused: the current model keeps serving, the reason is logged and
  counted (``kronos_model_swaps_total{result}``), and the version is retried later with backoff.

Token caches need nothing here: the loop reuses a cached token state only when it was made by the
version it pins (the cache records its version), so after a swap each symbol's first forecast
re-tokenises its bar ring with the new tokenizer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import json
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram

from daemon.errors import ConfigError, DaemonError, ForecasterError
from daemon.io.messages import horizon_ns, infer_interval_ns
from daemon.settings import Settings
from daemon.state.base import SymbolState
from kronos_core.stream_types import FEATURES, SeriesForecast, SeriesWindow, StreamForecaster, StreamMode

log = structlog.get_logger("kronos.models")

_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# The results of kronos_model_swaps_total: ok, a refusal (LoadRefused.result) or deferred (LoadDeferred).
SWAP_RESULTS = ("ok", "checksum", "signature", "incompatible", "load_failed", "smoke_failed", "fetch_failed", "deferred")
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


class ModelMetrics:
    """Swap metrics, registered on the daemon's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.swaps = Counter(
            "kronos_model_swaps",
            "Model versions the daemon tried to put in service, by result (ok, checksum, signature, "
            "incompatible, load_failed, smoke_failed, fetch_failed, deferred).",
            ["result"],
            registry=registry,
        )
        # every result exported from the start (0), so increase() and the alert see the first refusal
        for result in SWAP_RESULTS:
            self.swaps.labels(result)
        self.load_seconds = Histogram(
            "kronos_model_load_seconds", "Fetching, verifying and building a model version.",
            buckets=_SECONDS_BUCKETS, registry=registry,
        )  # fmt: skip
        self.warmup_seconds = Histogram(
            "kronos_model_warmup_seconds", "The smoke forecast of a newly loaded model version.",
            buckets=_SECONDS_BUCKETS, registry=registry,
        )  # fmt: skip


# -- the swappable forecaster ---------------------------------------------------------------------


class SwappableForecaster:
    """A :class:`StreamForecaster` whose model can be replaced between calls.

    The loop calls :meth:`pin` once per model call (on the event loop) and uses what it returns for the
    whole call: windows, seeds, token-cache reuse, the forecasts' version. A version offered with
    :meth:`offer` goes into service at the next :meth:`pin`, never inside a call.
    """

    def __init__(
        self, forecaster: StreamForecaster, on_swap: Callable[[StreamForecaster, str], None] | None = None
    ) -> None:
        self._current = forecaster
        self._pending: StreamForecaster | None = None
        self._offered_at: float | None = None
        self._on_swap = on_swap
        self._describe(forecaster)

    def _describe(self, forecaster: StreamForecaster) -> None:
        # StreamForecaster's attributes, those of the model in service
        self.model_version: str = forecaster.model_version
        self.mode: StreamMode = forecaster.mode
        self.max_context: int = forecaster.max_context
        self.quantile_levels: tuple[float, ...] = forecaster.quantile_levels

    def forecast(self, windows: Sequence[SeriesWindow], horizon: int) -> list[SeriesForecast]:
        return self.pin().forecast(windows, horizon)

    def drop(self, series_ids: Sequence[str]) -> None:
        for f in (self._current, self._pending):
            forget = getattr(f, "drop", None)
            if callable(forget):
                forget(series_ids)

    @property
    def current(self) -> StreamForecaster:
        """The model in service (read only; calls go through :meth:`pin`)."""
        return self._current

    # swapping
    @property
    def target_version(self) -> str:
        """The version in service once the pending one (if any) is swapped in."""
        return (self._pending or self._current).model_version

    @property
    def pending_version(self) -> str | None:
        return None if self._pending is None else self._pending.model_version

    def offer(self, forecaster: StreamForecaster) -> None:
        """Serve ``forecaster`` from the next model call on (replaces a version still pending)."""
        self._pending = forecaster
        self._offered_at = time.monotonic()

    def withdraw(self) -> str | None:
        """Forget the pending version (the pointer went back to the one serving); returns it."""
        pending, self._pending = self._pending, None
        return None if pending is None else pending.model_version

    def pin(self) -> StreamForecaster:
        """The model for one call: a pending version goes into service here, between calls."""
        if self._pending is not None:
            old, self._current, self._pending = self._current, self._pending, None
            self._describe(self._current)
            waited = time.monotonic() - (self._offered_at or time.monotonic())
            log.info(
                "model swapped",
                old=old.model_version,
                new=self._current.model_version,
                waited_s=round(waited, 3),
            )
            if self._on_swap is not None:
                self._on_swap(self._current, old.model_version)
            del old  # released here; a call still holding it finishes on it first
        return self._current


def pin_forecaster(forecaster: StreamForecaster) -> StreamForecaster:
    """What one model call runs on: the pinned model of a swappable forecaster, else itself."""
    pin = getattr(forecaster, "pin", None)
    return pin() if callable(pin) else forecaster  # type: ignore[no-any-return]


# -- loading and vetting one version ------------------------------------------------------------


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


def release_memory() -> None:
    """Collect the dropped model now and hand freed heap pages back to the OS (glibc)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


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


# -- following the pointer ------------------------------------------------------------------------


class ModelFollower:
    """Serves the registry's champion and swaps to whatever the pointer names next."""

    def __init__(
        self,
        settings: Settings,
        metrics: ModelMetrics,
        *,
        states: Callable[[], Mapping[str, SymbolState]] = dict,
        on_swap: Callable[[StreamForecaster, str], None] | None = None,
        registry: Any = None,
        model_thread: Callable[[Callable[[], LoadedModel]], Awaitable[LoadedModel]] | None = None,
        seed: Callable[[str, StreamForecaster, Callable[[Callable[[], Any]], Awaitable[Any]]], Awaitable[Any]] | None = None,
    ) -> None:
        m = settings.model
        if not m.registry:
            raise ConfigError("KRONOS_MODEL__REGISTRY is not set")
        self.settings = settings
        self.metrics = metrics
        self._states = states
        self._on_swap = on_swap
        self._model_thread = model_thread  # runs a blocking call on the loop's model thread
        self._seed = seed  # seeds a new version's calibration before its swap (daemon/scoring/seeding.py)
        if registry is None:
            from kronos_contract.registry import Registry, RegistryError

            try:
                registry = Registry(m.registry)
            except RegistryError as exc:
                raise ConfigError(f"KRONOS_MODEL__REGISTRY={m.registry!r} cannot be used: {exc}") from exc
        self.registry = registry
        self.public_key = public_key_of(settings)  # None: versions need no signature
        self._own_cache = m.cache_dir is None
        self.cache_root = (
            Path(m.cache_dir) if m.cache_dir else Path(tempfile.mkdtemp(prefix="kronos-models-"))
        )
        self.cache_root.mkdir(parents=True, exist_ok=True)
        self.forecaster: SwappableForecaster | None = None
        self._failures: dict[str, tuple[int, float]] = {}  # version -> (refusals, monotonic time of next try)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.checks = 0

    async def start(self) -> SwappableForecaster:
        """Load the champion (a refusal here stops the start-up with the reason)."""
        try:
            version = await asyncio.to_thread(self.registry.champion)
        except Exception as exc:  # RegistryError (unreadable pointer) or the storage's own errors
            raise ForecasterError(
                f"reading the champion of {self.settings.model.registry} failed: {type(exc).__name__}: {exc}"
            ) from exc
        if not version:
            raise ConfigError(
                f"the registry {self.settings.model.registry} has no champion; publish and promote a version "
                "(kronos-stream models promote VERSION)"
            )
        try:
            loaded = await self._load(version)
        except (LoadRefused, LoadDeferred) as exc:
            raise ForecasterError(f"the registry's champion {version} cannot serve: {exc}") from exc
        self.forecaster = SwappableForecaster(loaded.forecaster, self._swapped)
        return self.forecaster

    def run_in_background(self) -> None:
        self._tasks.append(asyncio.create_task(self._poll_forever(), name="kronos-models-poll"))
        if self.settings.model.registry_hint:
            self._tasks.append(asyncio.create_task(self._listen_forever(), name="kronos-models-hint"))

    def wake(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._own_cache:
            shutil.rmtree(self.cache_root, ignore_errors=True)

    # -- one check ------------------------------------------------------------------------------

    async def check(self) -> str | None:
        """Read the pointer; load and offer a version it names that is neither served nor refused.
        Returns the version offered, if any."""
        assert self.forecaster is not None, "start() first"
        self.checks += 1
        version = await asyncio.to_thread(self.registry.champion)
        if not version or version == self.forecaster.target_version:
            return None
        if version == self.forecaster.model_version:  # back to the one serving before the swap happened
            log.info(
                "champion moved back; the pending version is withdrawn", withdrawn=self.forecaster.withdraw()
            )
            return None
        refusals, next_try = self._failures.get(version, (0, 0.0))
        if time.monotonic() < next_try:
            return None
        log.info("new champion; loading", version=version, serving=self.forecaster.model_version)
        try:
            loaded = await self._load(version)
        except LoadDeferred as exc:
            self.metrics.swaps.labels("deferred").inc()
            log.warning("model swap deferred", version=version, reason=str(exc))
            self._failures[version] = (refusals, time.monotonic() + self.settings.model.registry_retry_s)
            return None
        except LoadRefused as exc:
            self.metrics.swaps.labels(exc.result).inc()
            delay = min(
                self.settings.model.registry_retry_s * 2**refusals, self.settings.model.registry_retry_max_s
            )
            self._failures[version] = (refusals + 1, time.monotonic() + delay)
            log.error(
                "model version refused; the current model keeps serving",
                version=version,
                result=exc.result,
                reason=exc.reason,
                serving=self.forecaster.model_version,
                retry_in_s=round(delay, 1),
            )
            return None
        self._failures.pop(version, None)
        if self._seed is not None:
            await self._seed(version, loaded.forecaster, self._blocking)
        self.forecaster.offer(loaded.forecaster)
        log.info("model version ready; swapping at the next model call", version=version)
        return version

    async def _load(self, version: str) -> LoadedModel:
        states = dict(self._states())  # snapshot on the event loop; the thread reads it only
        prepared = await asyncio.to_thread(
            prepare_version, self.registry, version, self.settings, self.cache_root, self.public_key
        )
        if self._model_thread is not None and uses_cuda(self.settings):
            log.info("building the new version on the model thread (CUDA), between calls", version=version)
        loaded: LoadedModel = await self._blocking(functools.partial(build_version, prepared, self.settings, states))
        self.metrics.load_seconds.observe(loaded.load_s)
        self.metrics.warmup_seconds.observe(loaded.warmup_s)
        log.info(
            "model version loaded",
            version=version,
            load_s=round(loaded.load_s, 3),
            warmup_s=round(loaded.warmup_s, 3),
        )
        return loaded

    async def _blocking(self, fn: Callable[[], Any]) -> Any:
        """Run a blocking model call: on the model thread on CUDA, else in a worker thread."""
        if self._model_thread is not None and uses_cuda(self.settings):
            return await self._model_thread(fn)
        return await asyncio.to_thread(fn)

    def _swapped(self, new: StreamForecaster, old_version: str) -> None:
        self.metrics.swaps.labels("ok").inc()
        if self._on_swap is not None:
            self._on_swap(new, old_version)
        asyncio.get_running_loop().run_in_executor(None, release_memory)

    # -- background tasks ---------------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        poll_s = self.settings.model.registry_poll_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=poll_s)
            self._wake.clear()
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the registry unreachable: keep serving, try at the next poll
                log.warning("reading the registry failed; retrying at the next poll", error=repr(exc))

    async def _listen_forever(self) -> None:
        """Wake the poll on every message on the registry's hint channel; reconnect with backoff."""
        import redis.asyncio as aioredis

        from daemon.state.redis_access import client_options, explain
        from kronos_contract.registry import hint_channel

        r = self.settings.redis
        channel = hint_channel(r.key_prefix)
        options = client_options(r)
        options.pop("socket_timeout")  # a subscriber waits for messages as long as it takes
        delay = 0.5
        while True:
            client = aioredis.Redis.from_url(r.url, **options)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(channel)
                    delay = 0.5
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            log.info("model hint received", channel=channel, data=_text(message.get("data")))
                            self.wake()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "model hint channel lost; polling continues",
                    error=explain(exc, r.username),
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()  # type: ignore[attr-defined]


def _text(data: Any) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else str(data)
