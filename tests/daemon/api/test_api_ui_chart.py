"""The dashboard's fan chart (server-rendered SVG): what it draws is what the forecast says."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from typing import Any

from daemon.api.ui.chart import Fan, fan_chart_svg, fan_from_forecast, iso_to_ns, ns_to_iso

SVG = "{http://www.w3.org/2000/svg}"
T0 = datetime(2024, 6, 18, 1, 30, tzinfo=UTC)


def _iso(i: int) -> str:
    return (T0 + timedelta(minutes=i)).isoformat().replace("+00:00", "Z")


def _forecast(as_of: int, horizon: int = 3) -> dict[str, Any]:
    return {
        "id": "f-1",
        "symbol": "AAA",
        "as_of": _iso(as_of),
        "model_version": "v1",
        "timestamps": [_iso(as_of + k + 1) for k in range(horizon)],
        "quantile_levels": [0.1, 0.5, 0.9],
        "mean": {"close": [10.1 + 0.01 * k for k in range(horizon)]},
        "quantiles": {
            "p10": {"close": [9.9 - 0.05 * k for k in range(horizon)]},
            "p50": {"close": [10.1] * horizon},
            "p90": {"close": [10.3 + 0.05 * k for k in range(horizon)]},
        },
    }


def _bars(n: int) -> list[tuple[int, float]]:
    return [(iso_to_ns(_iso(i)), 10.0 + 0.013 * i) for i in range(n)]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split()]


def test_the_chart_carries_the_forecast_and_the_bars_exactly() -> None:
    bars = _bars(5)
    forecast = _forecast(as_of=4)
    root = ET.fromstring(fan_chart_svg("AAA", bars, fan_from_forecast(forecast)))
    assert root.get("data-symbol") == "AAA"
    assert root.get("data-as-of") == forecast["as_of"]
    assert root.get("data-forecast-id") == "f-1"
    latest = root.find(f".//{SVG}g[@class='fan latest']")
    assert latest is not None
    band = latest.find(f"{SVG}path")
    mean = latest.find(f"{SVG}polyline")
    assert band is not None and mean is not None
    assert (band.get("data-lo"), band.get("data-hi")) == ("p10", "p90")
    assert _floats(band.get("data-lo-values", "")) == forecast["quantiles"]["p10"]["close"]
    assert _floats(band.get("data-hi-values", "")) == forecast["quantiles"]["p90"]["close"]
    assert _floats(mean.get("data-values", "")) == forecast["mean"]["close"]
    circles = root.findall(f".//{SVG}circle[@class='bar']")
    assert [(iso_to_ns(c.get("data-ts", "")), float(c.get("data-close", ""))) for c in circles] == bars
    # the fan starts right after the last bar, and higher prices are drawn higher (smaller y)
    xs = [float(p.split(",")[0]) for p in mean.get("points", "").split()]
    assert xs[0] > float(circles[-1].get("cx", "")) and xs == sorted(xs)
    lo_y = [float(p.split(",")[1]) for p in (band.get("d", "").strip("MZ ").split(" L"))][len(xs) :]
    hi_y = [float(p.split(",")[1]) for p in (band.get("d", "").strip("MZ ").split(" L"))][: len(xs)]
    assert all(h < lo for h, lo in zip(hi_y, reversed(lo_y), strict=True))


def test_a_previous_forecast_is_drawn_over_the_bars_that_realise_it() -> None:
    bars = _bars(6)
    previous = Fan(iso_to_ns(_iso(2)), [10.0, 10.1, 10.2], [9.8] * 3, [10.4] * 3, "p10", "p90", [])
    root = ET.fromstring(fan_chart_svg("AAA", bars, fan_from_forecast(_forecast(as_of=5)), previous))
    prev = root.find(f".//{SVG}g[@class='fan previous']")
    assert prev is not None and prev.get("data-as-of") == _iso(2)
    circles = root.findall(f".//{SVG}circle[@class='bar']")
    prev_x = [float(p.split(",")[0]) for p in prev.find(f"{SVG}polyline").get("points", "").split()]  # type: ignore[union-attr]
    assert prev_x == [float(c.get("cx", "")) for c in circles[3:6]]  # steps 1-3 after bar 2


def test_bars_only_and_awkward_symbols_render() -> None:
    root = ET.fromstring(fan_chart_svg('A<"&>', _bars(1), None))
    assert root.get("data-symbol") == 'A<"&>' and root.get("data-as-of") is None
    assert (
        ET.fromstring(fan_chart_svg("B", [], fan_from_forecast(_forecast(as_of=0)))).get("data-bars") == "0"
    )
    flat = [(ts, 5.0) for ts, _ in _bars(3)]  # no spread at all still has an axis
    assert ET.fromstring(fan_chart_svg("C", flat, None)).findall(f".//{SVG}text")


def test_times_round_trip() -> None:
    assert ns_to_iso(iso_to_ns("2024-06-18T01:31:00.250000Z")) == "2024-06-18T01:31:00.250000Z"
    assert iso_to_ns("2024-06-18T01:31:00+00:00") == iso_to_ns("2024-06-18T01:31:00Z")
