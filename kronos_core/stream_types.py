"""Types shared by the streaming forecaster (kronos_core) and the daemon.

The daemon owns the bar history and persistence; kronos_core owns the numbers. For every new bar
the daemon hands the forecaster a :class:`SeriesWindow` (the raw bars of the window, the cached
tokens from Redis, a seed) and stores what comes back in a :class:`SeriesForecast` (the forecast and
the updated token cache). A forecast is a pure function of the window, the token cache, the seed
and the model, so a bar replayed after a crash yields the same forecast.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

FEATURES: tuple[str, ...] = ("open", "high", "low", "close", "volume", "amount")
StreamMode = Literal["exact", "incremental"]


def _ids_to_text(ids: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(ids, dtype="<i4").tobytes()).decode("ascii")


def _ids_from_text(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<i4").astype(np.int64)


@dataclass
class TokenState:
    """The token cache of one series: what produced its tokens and the tokens themselves.

    ``s1[i]``/``s2[i]`` are the token ids of the i-th bar of the window that starts at ``anchor_ts``
    and ends at ``last_ts``. ``mean``/``std`` are the frozen normalisation statistics the tokens
    were encoded with (incremental mode).
    """

    s1: np.ndarray  # int64 [N]
    s2: np.ndarray  # int64 [N]
    mean: np.ndarray  # float64 [6]
    std: np.ndarray  # float64 [6]
    anchor_ts: int  # epoch ns of the bar behind s1[0]
    last_ts: int  # epoch ns of the bar behind s1[-1]
    refreshed_ts: int  # epoch ns of the bar at which mean/std were frozen
    bars_since_refresh: int = 0

    def __post_init__(self) -> None:
        if len(self.s1) != len(self.s2):
            raise ValueError(f"token cache is inconsistent: {len(self.s1)} s1 ids but {len(self.s2)} s2 ids")

    def __len__(self) -> int:
        return len(self.s1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "s1": _ids_to_text(self.s1),
            "s2": _ids_to_text(self.s2),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "anchor_ts": int(self.anchor_ts),
            "last_ts": int(self.last_ts),
            "refreshed_ts": int(self.refreshed_ts),
            "bars_since_refresh": int(self.bars_since_refresh),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenState:
        try:
            return cls(
                s1=_ids_from_text(data["s1"]),
                s2=_ids_from_text(data["s2"]),
                mean=np.asarray(data["mean"], dtype=np.float64),
                std=np.asarray(data["std"], dtype=np.float64),
                anchor_ts=int(data["anchor_ts"]),
                last_ts=int(data["last_ts"]),
                refreshed_ts=int(data["refreshed_ts"]),
                bars_since_refresh=int(data.get("bars_since_refresh", 0)),
            )
        except KeyError as exc:
            raise ValueError(f"token cache record lacks the field {exc.args[0]!r}") from exc

    def fingerprint(self) -> str:
        """A short digest that tells two token caches apart (used to match warm sessions)."""
        h = hashlib.blake2b(digest_size=8)
        h.update(np.ascontiguousarray(self.s1, dtype="<i4").tobytes())
        h.update(np.ascontiguousarray(self.s2, dtype="<i4").tobytes())
        h.update(np.ascontiguousarray(self.mean, dtype="<f8").tobytes())
        h.update(np.ascontiguousarray(self.std, dtype="<f8").tobytes())
        h.update(f"{self.anchor_ts}:{self.last_ts}".encode())
        return h.hexdigest()


@dataclass(frozen=True)
class ContextTokens:
    """The token ids an exact forecast encoded its context into, and what they depend on.

    ``key`` names the tokenizer (a digest of its weights and of how the engine runs it), the lookback
    and the clipping: another forecaster whose key is the same (a version fine-tuned with the tokenizer
    frozen) would encode the same window into the same ids, and takes them instead of encoding it again.
    """

    key: str
    s1: np.ndarray  # int64 [L]
    s2: np.ndarray  # int64 [L]

    def __post_init__(self) -> None:
        if len(self.s1) != len(self.s2):
            raise ValueError(f"context tokens are inconsistent: {len(self.s1)} s1 ids but {len(self.s2)} s2 ids")


@dataclass
class SeriesWindow:
    """One series' input to the forecaster for one new bar.

    ``values``/``timestamps`` are the raw bars of the window, oldest first, the new bar last
    (at most ``max_context`` rows). ``token_state`` is the token cache from the store (incremental
    mode; ``None`` on a cold start or in exact mode). ``context_tokens``, exact mode: the ids another
    forecaster encoded the same window into; used instead of encoding it when their key is this
    forecaster's own, ignored otherwise.
    """

    series_id: str
    values: np.ndarray  # float64 [L, 6] raw open, high, low, close, volume, amount
    timestamps: np.ndarray  # datetime64[ns] [L]
    future_timestamps: np.ndarray  # datetime64[ns] [H]
    seed: int
    token_state: TokenState | None = None
    context_tokens: ContextTokens | None = None


@dataclass
class SeriesForecast:
    """The forecaster's answer for one :class:`SeriesWindow`."""

    series_id: str
    mean: np.ndarray  # float64 [H, 6] mean over sample paths
    samples: np.ndarray  # float64 [S, H, 6]
    quantiles: np.ndarray  # float64 [Q, H, 6], ordered as quantile_levels
    quantile_levels: tuple[float, ...]
    token_state: TokenState | None = None  # the cache to persist (incremental mode)
    context_tokens: ContextTokens | None = None  # exact mode: the context's ids, for another forecaster
    timings_ms: dict[str, float] = field(default_factory=dict)


class StreamForecaster(Protocol):
    """What the daemon needs from kronos_core."""

    model_version: str
    mode: StreamMode
    max_context: int
    quantile_levels: tuple[float, ...]

    def forecast(self, windows: Sequence[SeriesWindow], horizon: int) -> list[SeriesForecast]:
        """Forecast ``horizon`` bars for every window, batched; results in input order."""
        ...


def derive_seed(series_id: str, as_of_ns: int, model_version: str, base_seed: int = 0) -> int:
    """A 63-bit seed from (series, as-of time, model version): independent of batch composition."""
    h = hashlib.blake2b(f"{base_seed}|{series_id}|{as_of_ns}|{model_version}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)
