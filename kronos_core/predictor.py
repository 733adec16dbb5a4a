"""KronosPredictor: DataFrame in, forecast DataFrame out (the upstream pipeline API)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from kronos_core.device import resolve_device
from kronos_core.engine import KronosEngine, SamplingParams
from kronos_core.exceptions import InputError
from kronos_core.model import Kronos
from kronos_core.preprocess import (
    FEATURE_COLUMNS,
    PRICE_COLUMNS,
    PreparedSeries,
    check_pred_len,
    check_same_length,
    denormalize,
    forecast_frame,
    prepare_series,
)
from kronos_core.reference_generate import generate_recompute
from kronos_core.tokenizer import KronosTokenizer


def _check_sampling(T: float, top_k: int, top_p: float, sample_count: int) -> None:
    if not isinstance(T, int | float) or not T > 0:
        raise InputError(f"T (temperature) must be > 0, got {T!r}; use top_k=1 for greedy forecasts")
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 0:
        raise InputError(f"top_k must be an integer >= 0 (0 disables it), got {top_k!r}")
    if not isinstance(top_p, int | float) or not 0 < top_p <= 1:
        raise InputError(f"top_p must be in (0, 1], got {top_p!r}")
    if isinstance(sample_count, bool) or not isinstance(sample_count, int | np.integer) or sample_count < 1:
        raise InputError(f"sample_count must be a positive integer, got {sample_count!r}")


class KronosPredictor:
    """Forecast OHLCV bars with a tokenizer + predictor pair, upstream-compatible.

    Each call normalises the context window by its own mean/std, tokenizes it, generates
    ``pred_len`` token pairs, decodes and rescales; the forecast is the mean over
    ``sample_count`` sampled paths. ``engine="fast"`` (default) generates with the KV-cached
    :class:`~kronos_core.engine.KronosEngine` (same answers, far less work);
    ``engine="recompute"`` runs upstream's plain algorithm
    (:func:`kronos_core.reference_generate.generate_recompute`).

    ``quantize="int8"`` (opt-in, CPU and float32 only) runs the transformer blocks' products as int8
    dynamic quantization: faster on CPUs with int8 instructions, but not exact (the forecasts move by
    the quantization error; ``kronos-stream bench inference --compare-int8`` measures it).

    Randomness: ``seed`` (an int, or one per series in ``predict_batch``) gives reproducible
    draws that do not depend on what else shares the batch (fast engine only);
    ``generator`` draws from a ``torch.Generator``; neither uses torch's global RNG.
    """

    price_cols = list(PRICE_COLUMNS)
    vol_col = "volume"
    amt_vol = "amount"
    time_cols = ["minute", "hour", "weekday", "day", "month"]

    def __init__(
        self,
        model: Kronos,
        tokenizer: KronosTokenizer,
        device: str | torch.device | None = None,
        max_context: int = 512,
        clip: float = 5,
        *,
        engine: Literal["fast", "recompute"] = "fast",
        dtype: torch.dtype | None = None,
        quantize: Literal["int8"] | None = None,
    ) -> None:
        if not isinstance(model, Kronos):
            raise InputError(f"model must be a kronos_core.Kronos, got {type(model).__name__}")
        if not isinstance(tokenizer, KronosTokenizer):
            raise InputError(f"tokenizer must be a kronos_core.KronosTokenizer, got {type(tokenizer).__name__}")
        if isinstance(max_context, bool) or not isinstance(max_context, int) or max_context < 2:
            raise InputError(f"max_context must be an integer >= 2, got {max_context!r}")
        if not clip > 0:
            raise InputError(f"clip must be > 0, got {clip!r}")
        if engine not in ("fast", "recompute"):
            raise InputError(f"engine must be 'fast' or 'recompute', got {engine!r}")
        if engine == "recompute" and dtype not in (None, torch.float32):
            raise InputError("dtype is only supported with engine='fast'")
        if engine == "recompute" and quantize is not None:
            raise InputError("quantize is only supported with engine='fast'")
        if (model.s1_bits, model.s2_bits) != (tokenizer.s1_bits, tokenizer.s2_bits):
            raise InputError(
                f"model and tokenizer disagree on token bits: model (s1, s2) = {(model.s1_bits, model.s2_bits)}, "
                f"tokenizer = {(tokenizer.s1_bits, tokenizer.s2_bits)}"
            )
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer.to(self.device).eval()
        self.max_context = max_context
        self.clip = clip
        self.engine_kind = engine
        self.engine = KronosEngine(
            model, tokenizer, device=self.device, max_context=max_context, dtype=dtype, quantize=quantize
        )

    def _paths(
        self,
        series: Sequence[PreparedSeries],
        pred_len: int,
        T: float,
        top_k: int,
        top_p: float,
        sample_count: int,
        verbose: bool,
        generator: torch.Generator | None,
        seeds: Sequence[int] | None,
    ) -> list[np.ndarray]:
        """Normalised sample paths [S, pred_len, 6] per series."""
        if self.engine_kind == "fast":
            params = SamplingParams(T=float(T), top_k=int(top_k), top_p=float(top_p), sample_count=int(sample_count))
            paths = self.engine.generate(
                [s.x for s in series], [s.x_stamp for s in series], [s.y_stamp for s in series],
                pred_len, params, seeds=seeds, generator=generator,
            )  # [B, S, P, 6]
            return list(paths)
        if seeds is not None:
            raise InputError("seed is only supported with engine='fast'; pass a torch.Generator instead")
        results: list[np.ndarray | None] = [None] * len(series)
        by_length: dict[int, list[int]] = {}
        for i, s in enumerate(series):
            by_length.setdefault(len(s.x), []).append(i)
        for members in by_length.values():

            def stack(attr: str, members: list[int] = members) -> torch.Tensor:
                arr = np.stack([getattr(series[i], attr) for i in members]).astype(np.float32)
                return torch.from_numpy(arr).to(self.device)

            paths = generate_recompute(
                self.tokenizer, self.model, stack("x"), stack("x_stamp"), stack("y_stamp"),
                pred_len=pred_len, max_context=self.max_context, clip=self.clip, T=T, top_k=top_k,
                top_p=top_p, sample_count=sample_count, generator=generator, verbose=verbose,
            ).cpu().numpy()  # [b, S, P, 6]
            for row, i in enumerate(members):
                results[i] = paths[row]
        return [r for r in results if r is not None]

    def _single_paths(
        self, df: pd.DataFrame, x_timestamp: Any, y_timestamp: Any, pred_len: int, T: float, top_k: int,
        top_p: float, sample_count: int, verbose: bool, generator: torch.Generator | None, seed: int | None,
    ) -> tuple[PreparedSeries, np.ndarray]:
        """Validate one series and generate its normalised sample paths [S, pred_len, 6]."""
        pred_len = check_pred_len(pred_len, self.max_context)
        _check_sampling(T, top_k, top_p, sample_count)
        series = prepare_series(df, x_timestamp, y_timestamp, pred_len, self.clip)
        seeds = None if seed is None else [int(seed)]
        (paths,) = self._paths([series], pred_len, T, top_k, top_p, sample_count, verbose, generator, seeds)
        return series, paths

    def predict(
        self,
        df: pd.DataFrame,
        x_timestamp: Any,
        y_timestamp: Any,
        pred_len: int,
        T: float = 1.0,
        top_k: int = 0,
        top_p: float = 0.9,
        sample_count: int = 1,
        verbose: bool = True,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> pd.DataFrame:
        """Forecast ``pred_len`` bars after ``df``; a frame indexed by ``y_timestamp`` with columns
        open, high, low, close, volume, amount (the mean over ``sample_count`` paths)."""
        series, paths = self._single_paths(
            df, x_timestamp, y_timestamp, pred_len, T, top_k, top_p, sample_count, verbose, generator, seed
        )
        return forecast_frame(np.mean(paths, axis=0), series)

    def predict_samples(
        self,
        df: pd.DataFrame,
        x_timestamp: Any,
        y_timestamp: Any,
        pred_len: int,
        T: float = 1.0,
        top_k: int = 0,
        top_p: float = 0.9,
        sample_count: int = 20,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> np.ndarray:
        """Every sample path in price units.  # [sample_count, pred_len, 6] (open .. amount)"""
        series, paths = self._single_paths(
            df, x_timestamp, y_timestamp, pred_len, T, top_k, top_p, sample_count, False, generator, seed
        )
        return np.asarray(denormalize(paths, series.mean, series.std))

    def predict_quantiles(
        self,
        df: pd.DataFrame,
        x_timestamp: Any,
        y_timestamp: Any,
        pred_len: int,
        quantile_levels: Sequence[float] = (0.1, 0.5, 0.9),
        T: float = 1.0,
        top_k: int = 0,
        top_p: float = 0.9,
        sample_count: int = 20,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> tuple[dict[float, pd.DataFrame], pd.DataFrame]:
        """Quantile bands over ``sample_count`` paths and the mean path.

        Returns ``(bands, mean)``: ``bands[q]`` is a frame like :meth:`predict`'s for level ``q``
        (ordered: for ``q1 < q2`` every value of ``bands[q1]`` is <= that of ``bands[q2]``).
        """
        levels = [float(q) for q in quantile_levels]
        if not levels or not all(0.0 < q < 1.0 for q in levels):
            raise InputError(f"quantile_levels must be numbers in (0, 1), got {list(quantile_levels)!r}")
        series, paths = self._single_paths(
            df, x_timestamp, y_timestamp, pred_len, T, top_k, top_p, sample_count, False, generator, seed
        )
        samples = denormalize(paths, series.mean, series.std)  # [S, P, 6]
        q_values = np.quantile(samples, levels, axis=0)  # [Q, P, 6]
        bands = {
            q: pd.DataFrame(q_values[i], columns=list(FEATURE_COLUMNS), index=series.y_index)
            for i, q in enumerate(levels)
        }
        return bands, forecast_frame(np.mean(paths, axis=0), series)

    def predict_batch(
        self,
        df_list: Sequence[pd.DataFrame],
        x_timestamp_list: Sequence[Any],
        y_timestamp_list: Sequence[Any],
        pred_len: int,
        T: float = 1.0,
        top_k: int = 0,
        top_p: float = 0.9,
        sample_count: int = 1,
        verbose: bool = True,
        *,
        generator: torch.Generator | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[pd.DataFrame]:
        """:meth:`predict` for many series, results in input order.

        Unlike upstream, contexts may differ in length: the fast engine batches them all together
        (padding and per-row positions), and each gets exactly the answer :meth:`predict` would give.
        """
        names = ("df_list", "x_timestamp_list", "y_timestamp_list")
        lists = (df_list, x_timestamp_list, y_timestamp_list)
        for name, value in zip(names, lists, strict=True):
            if not isinstance(value, list | tuple):
                raise InputError(f"{name} must be a list or tuple, got {type(value).__name__}")
        check_same_length(lists, names)
        if not df_list:
            raise InputError("df_list is empty; pass at least one series")
        if seeds is not None and len(seeds) != len(df_list):
            raise InputError(f"got {len(seeds)} seeds for {len(df_list)} series; pass one seed per series")
        pred_len = check_pred_len(pred_len, self.max_context)
        _check_sampling(T, top_k, top_p, sample_count)
        series = [
            prepare_series(df, xt, yt, pred_len, self.clip, label=f"series {i}")
            for i, (df, xt, yt) in enumerate(zip(df_list, x_timestamp_list, y_timestamp_list, strict=True))
        ]
        paths = self._paths(series, pred_len, T, top_k, top_p, sample_count, verbose, generator, seeds)
        return [forecast_frame(np.mean(p, axis=0), s) for p, s in zip(paths, series, strict=True)]
