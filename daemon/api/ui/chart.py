"""The dashboard's fan chart, rendered to SVG on the server (no charting library, nothing from a CDN).

The chart puts a symbol's recent bars (their closes) and its latest forecast on one axis of bar
positions: the bars at 0..n-1, the forecast's steps after the last one (the forecast is made at the
last bar, ``as_of``). The forecast is drawn as the band between its outermost close quantiles
(p10-p90 by default) and its close mean. A ``previous`` forecast (one made some bars ago, whose steps
the realised bars are filling in) is drawn faded over the bars after its ``as_of``.

Every drawn number is also in a ``data-*`` attribute (``repr`` of the float, so it reads back exactly),
which is what the browser test compares with Redis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any

WIDTH, HEIGHT = 900, 360
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 16, 36  # margins (px)


@dataclass(frozen=True)
class Fan:
    """One forecast's close fan: ``lo``/``hi`` the outermost quantiles (names such as ``p10``)."""

    as_of_ns: int
    mean: list[float]  # [H]
    lo: list[float]  # [H]
    hi: list[float]  # [H]
    lo_name: str
    hi_name: str
    timestamps: list[str]  # [H] ISO, as in the forecast
    forecast_id: str = ""
    model_version: str = ""


def fan_from_forecast(forecast: Mapping[str, Any]) -> Fan:
    """The close fan of a forecast message (the JSON on the output topic and in Redis)."""
    levels = sorted(float(x) for x in forecast["quantile_levels"])
    names = [_level_name(x) for x in levels]
    quantiles = forecast["quantiles"]
    return Fan(
        as_of_ns=iso_to_ns(forecast["as_of"]),
        mean=[float(v) for v in forecast["mean"]["close"]],
        lo=[float(v) for v in quantiles[names[0]]["close"]],
        hi=[float(v) for v in quantiles[names[-1]]["close"]],
        lo_name=names[0],
        hi_name=names[-1],
        timestamps=list(forecast["timestamps"]),
        forecast_id=str(forecast.get("id", "")),
        model_version=str(forecast.get("model_version", "")),
    )


def _level_name(level: float) -> str:
    # the message's own quantile keys: 0.1 -> "p10", 0.025 -> "p2.5" (daemon.io.messages)
    from daemon.io.messages import quantile_key

    return quantile_key(level)


def iso_to_ns(text: str) -> int:
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def ns_to_iso(ns: int) -> str:
    when = datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC).replace(microsecond=(ns % 10**9) // 1000)
    return when.isoformat().replace("+00:00", "Z")


def _nums(values: Sequence[float]) -> str:
    return " ".join(repr(float(v)) for v in values)


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    span = hi - lo
    raw = span / max(1, count)
    step = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5, 10):
        if raw <= mult * step:
            step *= mult
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def fan_chart_svg(
    symbol: str,
    bars: Sequence[tuple[int, float]],
    fan: Fan | None,
    previous: Fan | None = None,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> str:
    """The chart as an SVG document: ``bars`` (epoch ns, close) oldest first, ``fan`` the latest
    forecast (None: bars only), ``previous`` an older forecast drawn faded under the bars that realised it."""
    n = len(bars)
    horizon = len(fan.mean) if fan is not None else 0
    # Where the forecast starts: right after its as_of bar (normally the last bar shown).
    bar_ts = [ts for ts, _ in bars]
    start = bar_ts.index(fan.as_of_ns) + 1 if fan is not None and fan.as_of_ns in bar_ts else n
    prev_start = (
        bar_ts.index(previous.as_of_ns) + 1 if previous is not None and previous.as_of_ns in bar_ts else None
    )
    slots = max(n, start + horizon, 2)
    values = [c for _, c in bars]
    if fan is not None:
        values += fan.lo + fan.hi + fan.mean
    if previous is not None and prev_start is not None:
        values += previous.lo + previous.hi
    finite = [v for v in values if math.isfinite(v)]
    lo_v, hi_v = (min(finite), max(finite)) if finite else (0.0, 1.0)
    pad = (hi_v - lo_v) * 0.08 or max(abs(hi_v) * 0.01, 1e-6)
    lo_v, hi_v = lo_v - pad, hi_v + pad
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM

    def x(i: float) -> float:
        return round(_LEFT + plot_w * (i + 0.5) / slots, 2)

    def y(v: float) -> float:
        return round(_TOP + plot_h * (hi_v - v) / (hi_v - lo_v), 2)

    attrs = {
        "id": "fan-chart",
        "xmlns": "http://www.w3.org/2000/svg",
        "viewBox": f"0 0 {width} {height}",
        "width": str(width),
        "height": str(height),
        "role": "img",
        "data-symbol": symbol,
        "data-bars": str(n),
    }
    if fan is not None:
        attrs |= {
            "data-as-of": ns_to_iso(fan.as_of_ns),
            "data-forecast-id": fan.forecast_id,
            "data-model-version": fan.model_version,
        }
    out = ["<svg " + " ".join(f'{k}="{escape(v)}"' for k, v in attrs.items()) + ">"]
    label = f"{symbol}: {n} bars" + (f", forecast at {ns_to_iso(fan.as_of_ns)}" if fan else ", no forecast")
    out.append(f"<title>{escape(label)}</title>")
    # axes and grid
    out.append('<g class="axis y">')
    for t in _ticks(lo_v, hi_v):
        out.append(
            f'<line x1="{_LEFT}" x2="{width - _RIGHT}" y1="{y(t)}" y2="{y(t)}" class="grid"/>'
            f'<text x="{_LEFT - 6}" y="{y(t) + 4}" text-anchor="end">{t:.6g}</text>'
        )
    out.append("</g>")
    out.append('<g class="axis x">')
    stamps = [ns_to_iso(ts) for ts in bar_ts] + (fan.timestamps if fan else [])
    every = max(1, slots // 6)
    for i in range(0, len(stamps), every):
        out.append(
            f'<text x="{x(i)}" y="{height - 12}" text-anchor="middle">{escape(_short(stamps[i]))}</text>'
        )
    out.append("</g>")
    if previous is not None and prev_start is not None:
        out.append(_fan_group(previous, prev_start, x, y, "previous"))
    if fan is not None:
        out.append(_fan_group(fan, start, x, y, "latest"))
        out.append(
            f'<line class="now" x1="{x(start - 0.5)}" x2="{x(start - 0.5)}" y1="{_TOP}" y2="{height - _BOTTOM}"/>'
        )
    # the realised bars: a line through the closes and one dot per bar
    if n:
        points = " ".join(f"{x(i)},{y(c)}" for i, (_, c) in enumerate(bars))
        out.append(f'<polyline class="closes" points="{points}"/>')
        out.append('<g class="bars">')
        for i, (ts, c) in enumerate(bars):
            iso = ns_to_iso(ts)
            out.append(
                f'<circle class="bar" cx="{x(i)}" cy="{y(c)}" r="2.5" data-ts="{iso}" data-close="{c!r}">'
                f"<title>{escape(iso)} close {c:.6g}</title></circle>"
            )
        out.append("</g>")
    else:
        out.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="empty">no bars yet</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


def _fan_group(fan: Fan, start: int, x: Any, y: Any, role: str) -> str:
    steps = range(start, start + len(fan.mean))
    upper = [f"{x(i)},{y(v)}" for i, v in zip(steps, fan.hi, strict=True)]
    lower = [f"{x(i)},{y(v)}" for i, v in zip(steps, fan.lo, strict=True)]
    band = "M" + " L".join(upper + lower[::-1]) + " Z"
    mean = " ".join(f"{x(i)},{y(v)}" for i, v in zip(steps, fan.mean, strict=True))
    return (
        f'<g class="fan {role}" data-as-of="{ns_to_iso(fan.as_of_ns)}" data-forecast-id="{escape(fan.forecast_id)}">'
        f'<path class="band" d="{band}" data-lo="{fan.lo_name}" data-hi="{fan.hi_name}" '
        f'data-lo-values="{_nums(fan.lo)}" data-hi-values="{_nums(fan.hi)}">'
        f"<title>{fan.lo_name}-{fan.hi_name}</title></path>"
        f'<polyline class="mean" points="{mean}" data-values="{_nums(fan.mean)}"><title>mean</title></polyline>'
        "</g>"
    )


def _short(iso: str) -> str:
    # "2024-06-18T01:31:00Z" -> "06-18 01:31"
    return iso[5:16].replace("T", " ")
