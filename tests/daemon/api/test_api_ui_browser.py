"""The dashboard at /ui in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium), against a running daemon with real Kafka, Redis and the tiny model.

The page is opened without a key (it says one is needed), given the key, and then must show the live
forecast's numbers as Redis holds them (the fan chart's band and mean, the realised bars), the scores of
the serving version and a dead letter; a new bar produced to Kafka must redraw the chart (over the
stream) with the new forecast and the realised bar. A screenshot goes to results/tmp/ui/dashboard.png,
or with ``TEST_RESULTS_DIR=results`` to the committed results/ui/dashboard.png (docs/dashboard.md).

Chromium and chromedriver: ``$CHROMIUM`` and ``$CHROMEDRIVER``, else /usr/bin/chromium and
/usr/bin/chromedriver (``scripts/ensure-chromium``, run by ``scripts/run-tests``); without them the
test skips, and fails under CI=true.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from daemon.api.ui.chart import iso_to_ns
from daemon.io.messages import quantile_key
from daemon.state.base import bars_key, decode_bar, forecast_key
from tests.support.api import BARS, SYMBOLS, ApiDaemon
from tests.support.launcher import T0, Topics, bar_record, encode, metric, produce, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[3]
RESULTS = Path(os.environ.get("TEST_RESULTS_DIR") or ROOT / "results" / "tmp")


def _tool(variable: str, default: str) -> str | None:
    """``$variable`` when set (None if it is not an executable), else ``default``, else on PATH."""
    named = os.environ.get(variable)
    if named:
        return named if os.access(named, os.X_OK) else None
    return default if os.access(default, os.X_OK) else shutil.which(Path(default).name)


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Chromium through chromedriver (Selenium); quit after the test."""
    chromium, driver_path = (
        _tool("CHROMIUM", "/usr/bin/chromium"),
        _tool("CHROMEDRIVER", "/usr/bin/chromedriver"),
    )
    if not chromium or not driver_path:
        reason = (
            "no chromium or chromedriver: run scripts/ensure-chromium (Debian's chromium, chromium-driver)"
        )
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,1150"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def _until(driver: Any, check: Callable[[Any], Any], what: str, timeout_s: float = 30.0) -> Any:
    """Wait in the browser (blocking: run it in a thread, the daemon shares this event loop)."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(check, f"timed out waiting for {what}")


def _chart(driver: Any) -> dict[str, Any]:
    """What the page's chart shows, read from the rendered SVG's elements."""
    script = """
    const svg = document.querySelector('#chart svg');
    if (!svg) return null;
    const fan = svg.querySelector('g.fan.latest');
    const nums = (s) => s ? s.split(' ').map(Number) : null;
    return {
      symbol: svg.dataset.symbol, as_of: svg.dataset.asOf, id: svg.dataset.forecastId,
      lo: fan && nums(fan.querySelector('path.band').dataset.loValues),
      hi: fan && nums(fan.querySelector('path.band').dataset.hiValues),
      mean: fan && nums(fan.querySelector('polyline.mean').dataset.values),
      names: fan && [fan.querySelector('path.band').dataset.lo, fan.querySelector('path.band').dataset.hi],
      bars: Array.from(svg.querySelectorAll('circle.bar')).map((c) => [c.dataset.ts, Number(c.dataset.close)]),
      previous: !!svg.querySelector('g.fan.previous'),
      visible: svg.getBoundingClientRect().width > 0,
    };
    """
    got: dict[str, Any] | None = driver.execute_script(script)
    return got or {}


def _expected(forecast: dict[str, Any], ring: list[tuple[int, float]]) -> dict[str, Any]:
    lo, hi = quantile_key(min(forecast["quantile_levels"])), quantile_key(max(forecast["quantile_levels"]))
    return {
        "as_of": forecast["as_of"],
        "id": forecast["id"],
        "names": [lo, hi],
        "lo": forecast["quantiles"][lo]["close"],
        "hi": forecast["quantiles"][hi]["close"],
        "mean": forecast["mean"]["close"],
        "bars": [(ts, close) for ts, close in ring],
    }


def _shown(chart: dict[str, Any]) -> dict[str, Any]:
    return {
        "as_of": chart.get("as_of"),
        "id": chart.get("id"),
        "names": chart.get("names"),
        "lo": chart.get("lo"),
        "hi": chart.get("hi"),
        "mean": chart.get("mean"),
        "bars": [(iso_to_ns(ts), close) for ts, close in chart.get("bars", [])],
    }


async def _in_redis(
    redis: aioredis.Redis, prefix: str, symbol: str
) -> tuple[dict[str, Any] | None, list[tuple[int, float]]]:
    """The symbol's latest forecast and its ring's (epoch ns, close), as the daemon wrote them."""
    raw = await redis.get(forecast_key(prefix, symbol))
    ring = [decode_bar(r, "ring") for r in await redis.lrange(bars_key(prefix, symbol), -64, -1)]
    return (json.loads(raw) if raw else None), [(ts, values[3]) for ts, values in ring]


def _iso(i: int) -> str:
    return (T0 + timedelta(minutes=i)).isoformat().replace("+00:00", "Z")


def _status(state: str) -> Callable[[Any], bool]:
    return lambda d: d.find_element("id", "status").get_attribute("data-state") == state


async def test_the_dashboard_shows_the_live_forecast_and_follows_a_new_bar(
    api_daemon: ApiDaemon,
    redis_url: str,
    topics: Topics,
    kafka_bootstrap: str,
    model_version: str,
    browser: Any,
) -> None:
    daemon, key, symbol = api_daemon.daemon, api_daemon.key, SYMBOLS[0]  # the picker's first
    await produce(kafka_bootstrap, topics.input, [(symbol.encode(), b"not json")])  # one dead letter
    await wait_until(
        lambda: metric(daemon, "kronos_invalid_messages_total", kind="json") == 1, 30, "the dead letter"
    )
    redis = aioredis.Redis.from_url(redis_url)
    prefix = api_daemon.settings.redis.key_prefix
    try:
        # without a key the page says it needs one (and shows no data)
        await asyncio.to_thread(browser.get, f"{api_daemon.url}/ui")
        await asyncio.to_thread(_until, browser, _status("unauthorized"), "the page to ask for a key")
        assert not await asyncio.to_thread(_chart, browser)

        def give_key() -> None:
            field = browser.find_element("id", "api-key")
            field.send_keys(key)
            field.submit()

        await asyncio.to_thread(give_key)
        forecast, ring = await _in_redis(redis, prefix, symbol)
        assert forecast is not None and forecast["as_of"] == _iso(BARS - 1)
        want = _expected(forecast, ring)
        await asyncio.to_thread(
            _until, browser, lambda d: _shown(_chart(d))["as_of"] == want["as_of"], f"the chart of {symbol}"
        )
        chart = await asyncio.to_thread(_chart, browser)
        assert chart["symbol"] == symbol and chart["visible"]
        assert _shown(chart) == want  # every number of the fan and every realised close, as Redis holds them

        # the picker lists the symbols with forecasts; the key stays in this tab's sessionStorage only
        options = await asyncio.to_thread(
            browser.execute_script, "return Array.from(document.querySelectorAll('#symbol option')).map(o => o.value)"
        )  # fmt: skip
        assert options == sorted(SYMBOLS)
        storage = await asyncio.to_thread(
            browser.execute_script,
            "return [sessionStorage.getItem('kronos-api-key'), localStorage.length, document.cookie, location.href]",
        )
        assert storage[0] == key and storage[1] == 0 and storage[2] == "" and key not in storage[3]
        assert key not in (await asyncio.to_thread(lambda: browser.page_source))

        # scores of the serving version (scored by the daemon as the bars arrived), and the dead letter
        async with httpx.AsyncClient(base_url=api_daemon.url, headers=api_daemon.headers) as api:
            scores = (await api.get("/v1/scores")).json()["versions"][model_version]
            events = (await api.get("/v1/events")).json()
        assert scores["count"] > 0 and events["dead_letters"]["by_kind"]["json"] == 1

        def scores_and_dead_letters(d: Any) -> bool:
            row = d.find_elements("css selector", f"#scores tr[data-version='{model_version}'] td")
            dead = d.find_elements("css selector", "#dead-letters tr[data-kind='json'] td")
            coverage = row[6].text if len(row) > 6 else ""
            shown = float(coverage.rstrip("%")) if coverage.endswith("%") else None
            return (
                row[1].text == "champion, serving"  # from /v1/models
                and shown is not None  # the page's percentage, one decimal, of what the API returns
                and abs(shown - 100 * scores["coverage"]) <= 0.051
                and len(dead) == 2
                and dead[1].text == "1"
            )

        await asyncio.to_thread(_until, browser, scores_and_dead_letters, "the scores and the dead letter")

        # a new bar: the daemon forecasts it, the stream tells the page, the chart is redrawn
        await asyncio.to_thread(_until, browser, _status("live"), "the page's stream to be open")
        new_close = round(ring[-1][1] * 1.003, 4)
        await produce(
            kafka_bootstrap,
            topics.input,
            [encode(bar_record(symbol, T0 + timedelta(minutes=BARS), new_close))],
        )
        new_as_of = _iso(BARS)

        async def forecast_at(as_of: str) -> bool:
            got, _ = await _in_redis(redis, prefix, symbol)
            return got is not None and got["as_of"] == as_of

        await wait_until(lambda: forecast_at(new_as_of), 30, "the new bar's forecast in Redis")
        await asyncio.to_thread(
            _until,
            browser,
            lambda d: _shown(_chart(d))["as_of"] == new_as_of,
            "the chart to follow the new bar",
        )
        forecast, ring = await _in_redis(redis, prefix, symbol)
        assert forecast is not None
        chart = await asyncio.to_thread(_chart, browser)
        assert _shown(chart) == _expected(forecast, ring)
        assert chart["bars"][-1] == [new_as_of, new_close]  # the realised bar is drawn
        assert chart["previous"]  # an earlier forecast, being realised by the latest bars
        assert chart["id"] != want["id"]

        shot = RESULTS / "ui" / "dashboard.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        assert await asyncio.to_thread(browser.save_screenshot, str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        await redis.aclose()


@pytest.mark.parametrize("api_overrides", [{"auth": "none"}])
async def test_with_auth_off_the_page_needs_no_key(
    api_daemon: ApiDaemon, redis_url: str, browser: Any
) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    try:
        forecast, _ = await _in_redis(redis, api_daemon.settings.redis.key_prefix, SYMBOLS[0])
        assert forecast is not None
        await asyncio.to_thread(browser.get, f"{api_daemon.url}/ui")
        await asyncio.to_thread(
            _until,
            browser,
            lambda d: _shown(_chart(d))["as_of"] == forecast["as_of"],
            "the chart without a key",
        )
        chart = await asyncio.to_thread(_chart, browser)
        assert chart["mean"] == forecast["mean"]["close"]
        assert await asyncio.to_thread(browser.execute_script, "return sessionStorage.length") == 0
    finally:
        await redis.aclose()
