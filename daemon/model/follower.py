"""Following the registry's champion pointer while the daemon keeps consuming.

With ``KRONOS_MODEL__REGISTRY`` (an fsspec URL of a :class:`kronos_contract.registry.Registry`) the
daemon serves the version the champion pointer names and follows the pointer:

* :class:`ModelFollower` polls the pointer every ``KRONOS_MODEL__REGISTRY_POLL_S`` and listens to the
  registry's Redis channel (``{key_prefix}:models``): a hint only wakes the poll, the pointer stays the
  truth.
* A new version is loaded and vetted (:mod:`daemon.model.vetting`) in a worker thread, off the event
  loop and off the model thread (on CUDA, built on the model thread between calls), then offered to
  the :class:`~daemon.model.swap.SwappableForecaster`, which swaps it in at the next model call.
* A version that fails any step is refused: the current model keeps serving, the reason is logged and
  counted (``kronos_model_swaps_total{result}``), and the version is retried later with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from daemon.errors import ConfigError, ForecasterError
from daemon.model.swap import ModelMetrics, SwappableForecaster, release_memory
from daemon.model.vetting import (
    LoadDeferred,
    LoadedModel,
    LoadRefused,
    build_version,
    prepare_version,
    public_key_of,
    uses_cuda,
)
from daemon.settings import Settings
from daemon.state.base import SymbolState
from kronos_core.stream_types import StreamForecaster

log = structlog.get_logger("kronos.models")


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
        self._model_thread = model_thread  # runs a blocking call on the model thread (daemon/model/runner.py)
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
