"""``kronos-stream models challenge|withdraw|compare``: the registry's challengers and their live scores."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

ACTIONS = ("challenge", "withdraw", "compare")


def add_parsers(what: Any) -> None:
    challenge = what.add_parser("challenge", help="score a version in the shadow of the champion (a challenger)")
    challenge.add_argument("version")
    withdraw = what.add_parser("withdraw", help="stop scoring a challenger")
    withdraw.add_argument("version")
    compare = what.add_parser(
        "compare",
        help="live scores per version on the forecasts they share with the champion, with the one-sided "
        "Diebold-Mariano p-value (reads Redis: KRONOS_REDIS__*)",
    )
    compare.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace, registry: Any, settings: Any) -> int:
    from kronos_contract import challengers as listing

    action = args.models_command
    if action == "challenge":
        doc = listing.challenge(registry, args.version)
        print(json.dumps({"challengers": [c["version"] for c in doc["challengers"]]}))
        return 0
    if action == "withdraw":
        doc = listing.withdraw(registry, args.version)
        print(json.dumps({"challengers": [c["version"] for c in doc["challengers"]]}))
        return 0
    rows = asyncio.run(compare_rows(registry, settings))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
    return 0


async def compare_rows(registry: Any, settings: Any) -> list[dict[str, Any]]:
    """One row per version (champion first): its live figures against the champion."""
    from daemon.model.policy import compare, rollback_due, weigh
    from daemon.scoring.store_redis import RedisScoreStore
    from kronos_contract import challengers as listing

    champion = registry.champion()
    doc = listing.read(registry)
    c = settings.challengers
    store = RedisScoreStore.from_settings(settings)
    try:
        champ_rows = await store.losses.read(champion) if champion else {}
        check = rollback_due(champ_rows, c.rollback_window, c.rollback_skill)
        rows: list[dict[str, Any]] = [{
            "version": champion, "role": "champion", "forecasts": len(champ_rows), "paired": None,
            "crps": check.crps, "crps_walk": check.crps_walk, "skill_vs_walk": check.skill_vs_walk,
            "dm_statistic": None, "pvalue": None, "verdict": "rollback due" if check.due else None,
        }]  # fmt: skip
        for entry in doc["challengers"]:
            version = entry["version"]
            mine = await store.losses.read(version)
            ev = compare(champion or "", version, champ_rows, mine, settings.model.horizon)
            rows.append({
                "version": version, "role": "challenger", "forecasts": len(mine), "paired": ev.n,
                "crps": ev.crps_challenger, "crps_champion": ev.crps_champion, "crps_walk": ev.crps_walk,
                "skill_vs_walk": ev.skill_vs_walk, "dm_statistic": ev.dm_statistic, "pvalue": ev.pvalue,
                "verdict": weigh(ev, c.min_forecasts, c.level),
                "blocked": version in doc["blocked"],
            })  # fmt: skip
    finally:
        await store.close()
    last = doc["decisions"][-1] if doc["decisions"] else None
    if last is not None:
        rows[0]["last_decision"] = {k: last.get(k) for k in ("decision", "version", "champion", "applied", "at")}
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    def f(x: Any, spec: str = ".5g") -> str:
        return "-" if x is None else format(x, spec)

    lines = [f"{'version':<32} {'role':<10} {'n':>6} {'paired':>6} {'CRPS':>9} {'walk':>9} {'skill':>7} "
             f"{'DM':>7} {'p':>8}  verdict"]  # fmt: skip
    for r in rows:
        lines.append(
            f"{str(r['version']):<32} {r['role']:<10} {r['forecasts']:>6} {f(r['paired'], 'd'):>6} "
            f"{f(r['crps']):>9} {f(r['crps_walk']):>9} {f(r['skill_vs_walk'], '+.1%'):>7} "
            f"{f(r['dm_statistic'], '.2f'):>7} {f(r['pvalue'], '.2g'):>8}  {r.get('verdict') or ''}"
        )
    if rows and rows[0].get("last_decision"):
        lines.append(f"last decision: {json.dumps(rows[0]['last_decision'])}")
    lines.append("CRPS: mean per forecast, as a fraction of the last close; p: one-sided DM that the challenger is better")
    return "\n".join(lines)
