"""Real challenger models beside the champion, against the session's real Kafka and Redis: a version
fine-tuned with the tokenizer frozen (the retrain job's default) takes the champion's context ids
instead of encoding every window again; one whose tokenizer was fine-tuned too encodes its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from kronos_contract import challengers as listing
from kronos_contract.registry import Registry
from tests.support.hotswap import TINY, perturbed_copy, publish
from tests.support.launcher import (
    Topics,
    bar_series,
    daemon_settings,
    interleave,
    metric,
    produce,
    running_daemon,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(180)]

BARS = 6


async def test_a_challenger_with_the_champions_tokenizer_takes_its_context_ids(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, group_id: str, topics: Topics, tmp_path: Path
) -> None:
    root = tmp_path / "registry"
    registry = Registry(str(root))
    publish(registry, "v1", TINY, promote=True)
    publish(registry, "v2", perturbed_copy(TINY, tmp_path / "v2", 0.05, seed=2, parts=("predictor",)), promote=False)
    publish(registry, "v3", perturbed_copy(TINY, tmp_path / "v3", 0.05, seed=3), promote=False)
    for version in ("v2", "v3"):
        listing.challenge(registry, version)
    model = {"registry": str(root), "registry_poll_s": 3600.0, "device": "cpu", "threads": 1,
             "cache_dir": str(tmp_path / "cache")}  # fmt: skip
    challengers = {"poll_s": 0.3, "policy": "off", "max": 2}
    settings = daemon_settings(kafka_bootstrap, redis_url, key_prefix, group_id, topics, model=model,
                               challengers=challengers)  # fmt: skip
    series = [bar_series(s, BARS, seed=i) for i, s in enumerate(("CA", "CB"))]
    async with running_daemon(settings, None) as d:
        await wait_until(lambda: metric(d, "kronos_challengers_loaded") == 2, 60, "both challengers loaded")
        await produce(kafka_bootstrap, topics.input, interleave(*series))
        every = 2 * BARS
        for version in ("v2", "v3"):
            await wait_until(
                lambda v=version: metric(d, "kronos_challenger_forecasts_total", model_version=v) >= every,
                90, f"{version}'s shadow forecasts of every bar",
            )  # fmt: skip
        shared = {v: metric(d, "kronos_challenger_shared_contexts_total", model_version=v) for v in ("v2", "v3")}
        made = {v: metric(d, "kronos_challenger_forecasts_total", model_version=v) for v in ("v2", "v3")}
    assert made == {"v2": every, "v3": every}
    assert shared == {"v2": every, "v3": 0.0}  # v3's tokenizer is its own: it encodes every window
