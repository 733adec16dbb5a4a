"""API keys and the per-key rate limit.

A key is ``ks_`` and 43 URL-safe characters (256 random bits), shown once by
``kronos-stream api-key new NAME``. The daemon never sees keys, only their SHA-256: the keys file
(``KRONOS_API__KEYS_FILE``, a Kubernetes Secret mounted as a file) has one ``NAME:SHA256HEX`` a line
(``#`` comments and blank lines allowed). A request sends its key as ``Authorization: Bearer KEY`` or
``X-API-Key: KEY``; its hash is compared with every stored hash in constant time. The file is read
again when it changes (a rotated Secret), at most every few seconds.

Each key (with ``KRONOS_API__AUTH=none``: each client address) has a token bucket of
``KRONOS_API__BURST`` requests refilled at ``KRONOS_API__RATE_PER_S``; an empty bucket answers 429 with
``Retry-After``. Keys never reach a log: a request is known by its key's NAME.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
import time
from collections import OrderedDict
from pathlib import Path

import structlog
from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from daemon.api.errors import ApiError
from daemon.api.settings import ApiSettings
from daemon.errors import ConfigError

log = structlog.get_logger("kronos.api")

KEY_PREFIX = "ks_"
_LINE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,63}):(?P<hash>[0-9a-f]{64})$")
_RELOAD_EVERY_S = 5.0
_MAX_ANONYMOUS = 10_000  # client addresses with a bucket (auth none)

bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer KEY`")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: KEY`")


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_line(name: str, key: str) -> str:
    """The keys file's line for ``key`` (what goes into the Secret)."""
    if not _LINE.match(f"{name}:{'0' * 64}"):
        raise ConfigError(
            f"key name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return f"{name}:{hash_key(key)}"


def parse_keys(text: str, where: str) -> dict[str, str]:
    """``NAME:SHA256HEX`` lines -> {hash: name}; a bad line raises ConfigError naming its number only."""
    keys: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            raise ConfigError(
                f"{where} line {number} is not NAME:SHA256HEX (64 lowercase hex digits); make lines with "
                "`kronos-stream api-key new NAME`"
            )
        keys[m["hash"]] = m["name"]
    return keys


def read_keys(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the API keys file KRONOS_API__KEYS_FILE={path}: {exc.strerror or exc}"
        ) from exc
    keys = parse_keys(text, f"KRONOS_API__KEYS_FILE={path}")
    if not keys:
        raise ConfigError(
            f"the API keys file KRONOS_API__KEYS_FILE={path} holds no key; add a line made by "
            "`kronos-stream api-key new NAME`, or set KRONOS_API__AUTH=none to serve the API without keys"
        )
    return keys


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = float(burst), now

    def take(self, now: float) -> float:
        """Take one token: 0.0 if granted, else the seconds until one is available."""
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class Guard:
    """Who is calling (a key's name) and whether they may, now: a FastAPI dependency on every /v1 route."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.enabled = settings.auth == "keys"
        self._keys: dict[str, str] = {}
        self._mtime: float | None = None
        self._next_check = 0.0
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        if self.enabled:
            if settings.keys_file is None:
                raise ConfigError(
                    "the API needs keys: set KRONOS_API__KEYS_FILE to a file of hashed keys (make one with "
                    "`kronos-stream api-key new NAME`), or set KRONOS_API__AUTH=none to serve it without keys"
                )
            self._keys = read_keys(settings.keys_file)
            self._mtime = _mtime(settings.keys_file)

    def _reload(self, now: float) -> None:
        path = self.settings.keys_file
        if path is None or now < self._next_check:
            return
        self._next_check = now + _RELOAD_EVERY_S
        mtime = _mtime(path)
        if mtime == self._mtime:
            return
        try:
            self._keys = read_keys(path)
            self._mtime = mtime
            log.info("API keys file read again", path=str(path), keys=len(self._keys))
        except ConfigError as exc:  # a half-written Secret: keep the keys we have, say why
            log.error("API keys file unusable; keeping the previous keys", error=str(exc))

    def identify(self, key: str | None, client: str) -> str:
        """The caller's name: the key's NAME, or ``client`` when auth is off; ApiError 401 if unknown."""
        if not self.enabled:
            return f"anonymous@{client}"
        if not key:
            raise ApiError(
                401,
                "an API key is required: send `Authorization: Bearer KEY` or `X-API-Key: KEY`",
                {"WWW-Authenticate": "Bearer"},
            )
        self._reload(time.monotonic())
        digest = hash_key(key)
        found = None
        for stored, name in self._keys.items():  # every hash compared, in constant time each
            if hmac.compare_digest(stored, digest):
                found = name
        if found is None:
            raise ApiError(401, "unknown API key", {"WWW-Authenticate": "Bearer"})
        return found

    def admit(self, who: str) -> None:
        """Take a token from ``who``'s bucket; ApiError 429 with Retry-After when it is empty."""
        now = time.monotonic()
        bucket = self._buckets.get(who)
        if bucket is None:
            bucket = self._buckets[who] = TokenBucket(self.settings.rate_per_s, self.settings.burst, now)
            if len(self._buckets) > _MAX_ANONYMOUS:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(who)
        wait = bucket.take(now)
        if wait > 0:
            raise ApiError(
                429,
                f"rate limit of {self.settings.rate_per_s:g} requests/s (bursts of {self.settings.burst}) "
                f"exceeded; retry in {wait:.2f} s",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )

    async def __call__(
        self,
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),  # noqa: B008
        header_key: str | None = Security(api_key_header),  # noqa: B008
    ) -> str:
        key = credentials.credentials if credentials is not None else header_key
        who = self.identify(key, request.client.host if request.client else "unknown")
        self.admit(who)
        request.state.caller = who
        return who


def _mtime(path: Path) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None
