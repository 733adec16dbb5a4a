"""The live decisions as pure logic (daemon/model/policy.py), the loss rows (daemon/scoring/paired.py),
the symbol sampling of challengers and the registry's challengers document (kronos_contract/challengers.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from daemon.api.catalog import registry_listing
from daemon.model.challengers import selected
from daemon.model.policy import Evidence, compare, one_sided_p, rollback_due, weigh
from daemon.scoring.paired import LossRow, loss_row, paired
from daemon.scoring.pending import PendingForecast
from kronos_contract import challengers as listing
from kronos_contract.registry import Registry, RegistryError
from tests.support.hotswap import TINY, publish

SYMBOLS = ("AAA", "BBB", "CCC")


def rows(version: str, crps: np.ndarray, walk: float | np.ndarray = 1.0) -> dict[tuple[str, int], LossRow]:
    """Loss rows over SYMBOLS x origins: ``crps[k]`` for the k-th (symbol, origin)."""
    walks = np.broadcast_to(np.asarray(walk, dtype=float), crps.shape)
    out = {}
    for k, (c, w) in enumerate(zip(crps, walks, strict=True)):
        symbol, origin = SYMBOLS[k % 3], 1_700_000_000_000_000_000 + (k // 3) * 60_000_000_000
        out[(symbol, origin)] = LossRow(version, symbol, origin, float(c), float(w), float(c))
    return out


def evidence(champ: np.ndarray, chall: np.ndarray, walk: float = 1.0) -> Evidence:
    return compare("v1", "v2", rows("v1", champ, walk), rows("v2", chall, walk), horizon=4)


def noise(n: int, seed: int, scale: float = 0.1) -> np.ndarray:
    return 1.0 + np.random.default_rng(seed).normal(0, scale, n)


def test_a_clearly_better_challenger_that_beats_the_walk_is_promoted() -> None:
    ev = evidence(noise(300, 1), noise(300, 2) - 0.2, walk=0.95)
    assert ev.n == 300 and ev.dm_statistic is not None and ev.dm_statistic < 0
    assert ev.pvalue is not None and ev.pvalue < 1e-6
    assert ev.skill_vs_walk is not None and ev.skill_vs_walk > 0
    assert weigh(ev, min_forecasts=200, level=0.01) == "promote"


def test_better_than_the_champion_but_not_the_walk_is_not_promoted() -> None:
    ev = evidence(noise(300, 1), noise(300, 2) - 0.2, walk=0.5)  # the walk beats both
    assert ev.pvalue is not None and ev.pvalue < 1e-6
    assert weigh(ev, 200, 0.01) == "undecided"


def test_too_few_forecasts_wait_however_strong_the_difference() -> None:
    ev = evidence(noise(60, 1), noise(60, 2) - 0.5, walk=2.0)
    assert weigh(ev, min_forecasts=200, level=0.01) == "undecided"
    assert weigh(ev, min_forecasts=60, level=0.01) == "promote"


def test_a_worse_challenger_is_kept_out_and_an_equal_one_undecided() -> None:
    worse = evidence(noise(300, 1), noise(300, 2) + 0.2, walk=2.0)
    assert weigh(worse, 200, 0.01) == "keep"
    equal = evidence(noise(300, 1), noise(300, 2), walk=2.0)  # same distribution, other draws
    assert equal.pvalue is not None and 0.01 < equal.pvalue < 0.99
    assert weigh(equal, 200, 0.01) == "undecided"


def test_only_forecasts_both_versions_made_are_paired() -> None:
    champ = rows("v1", noise(30, 1))
    chall = dict(list(rows("v2", noise(30, 2)).items())[:12])  # a sampled fraction of the symbols' forecasts
    pairs = paired(chall, champ)
    assert sum(len(p) for p in pairs.values()) == 12
    assert all(a.symbol == b.symbol and a.origin == b.origin for p in pairs.values() for a, b in p)
    assert compare("v1", "v2", champ, {}, 4).n == 0


def test_one_sided_p_value() -> None:
    assert one_sided_p(0.0) == pytest.approx(0.5)
    assert one_sided_p(-2.326) == pytest.approx(0.01, abs=1e-4)
    assert one_sided_p(2.326) == pytest.approx(0.99, abs=1e-4)
    assert one_sided_p(None) is None


def test_rollback_is_due_only_over_a_full_window_below_the_threshold() -> None:
    good = noise(90, 1) * 0.9  # skill about +10% vs a walk of 1.0
    bad = noise(30, 2) * 1.3  # skill about -30%
    history = rows("v5", np.concatenate([good, bad]))
    check = rollback_due(history, window=30, threshold=-0.05)
    assert check.due and check.n == 30 and check.skill_vs_walk is not None and check.skill_vs_walk < -0.2
    assert not rollback_due(history, window=60, threshold=-0.2).due  # half good, half bad: about -10%
    assert not rollback_due(rows("v5", bad[:20]), window=30, threshold=-0.05).due  # not a full window yet


def test_a_loss_row_is_the_crps_of_the_published_distribution_and_of_the_walk() -> None:
    rng = np.random.default_rng(0)
    closes = list(100 * np.exp(np.cumsum(rng.normal(0, 0.01, 120))))
    ts = [1_700_000_000_000_000_000 + i * 60_000_000_000 for i in range(120)]
    origin = 110
    realised = np.asarray(closes[origin + 1 : origin + 5])
    sharp = PendingForecast(
        "v2", ts[origin], closes[origin], (0.1, 0.5, 0.9), realised.copy(), np.zeros((3, 4)), np.zeros((3, 4)),
        paths=np.repeat(realised[None, :], 8, axis=0),
    )  # fmt: skip
    row = loss_row("AAA", sharp, realised, ts, closes)
    assert row is not None and row.symbol == "AAA" and row.origin == ts[origin]
    assert row.crps == pytest.approx(0.0, abs=1e-12)  # every path on the outcome
    assert row.published == row.crps  # not calibrated: published as the model made it
    assert row.walk > 0
    assert LossRow.parse("v2", row.member()) == row


def test_symbols_are_sampled_by_a_stable_hash() -> None:
    names = [f"S{i:04d}" for i in range(2000)]
    picked = [s for s in names if selected(s, 0.25)]
    assert 0.2 < len(picked) / len(names) < 0.3
    assert picked == [s for s in names if selected(s, 0.25)]  # the same on every call (and process)
    assert all(selected(s, 1.0) for s in names)


def test_registry_challengers_decisions_and_blocked_versions(tmp_path: Path) -> None:
    reg = Registry(str(tmp_path / "registry"))
    publish(reg, "v1", TINY, promote=True)
    publish(reg, "v2", TINY, promote=False)
    publish(reg, "v3", TINY, promote=False)
    assert listing.challengers(reg) == []
    with pytest.raises(RegistryError, match="is the champion"):
        listing.challenge(reg, "v1")
    with pytest.raises(RegistryError, match="does not exist"):
        listing.challenge(reg, "v9")
    listing.challenge(reg, "v2")
    listing.challenge(reg, "v3")
    listing.challenge(reg, "v2")  # twice: once
    assert listing.challengers(reg) == ["v2", "v3"]
    listed = registry_listing(str(tmp_path / "registry"))  # GET /v1/models reads them too
    assert listed["challengers"] == ["v2", "v3"]
    assert {v["version"]: v["role"] for v in listed["versions"]} == {"v1": "champion", "v2": "challenger", "v3": "challenger"}
    assert reg.gc(keep=0) == []  # challengers are never collected
    listing.withdraw(reg, "v3")
    with pytest.raises(RegistryError, match="not a challenger"):
        listing.withdraw(reg, "v3")
    reg.promote("v2")
    stored = listing.record(reg, {"decision": "promote", "version": "v2", "champion": "v1", "n": 300,
                                  "pvalue": 0.001, "applied": True})  # fmt: skip
    assert stored["at"].endswith("Z") and listing.challengers(reg) == []
    reg.rollback()
    listing.record(reg, {"decision": "rollback", "version": "v1", "rolled_back_from": "v2", "applied": True})
    assert set(listing.blocked(reg)) == {"v2"}
    assert [d["decision"] for d in listing.decisions(reg)] == ["promote", "rollback"]
    with pytest.raises(RegistryError, match="unknown decision"):
        listing.record(reg, {"decision": "maybe", "version": "v2"})
