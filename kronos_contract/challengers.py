"""Challengers beside the champion, and the decisions taken about them, in the model registry.

One JSON document at the registry's root, ``challengers.json``, replaced atomically like the pointer::

    {
      "challengers": [{"version": "v2", "added_at": "...Z", "by": "cli"}],
      "decisions": [{"decision": "promote", "version": "v2", "champion": "v1", "n": 412,
                     "crps": {"v2": 0.0041, "v1": 0.0047, "walk": 0.0049}, "dm_statistic": -3.1,
                     "pvalue": 0.001, "skill_vs_walk": 0.16, "at": "...Z", "applied": true, ...}],
      "blocked": {"v3": {"reason": "rolled back", "at": "...Z"}},
      "updated_at": "...Z"
    }

- ``challengers``: versions the daemons score in the shadow of the champion (``kronos-stream models
  challenge VERSION`` / ``withdraw VERSION``; the retrain CronJob adds its candidate). A challenger
  that becomes champion leaves the list.
- ``decisions``: every decision of the live policy (promote, keep, rollback), newest last, with its
  figures; the last ``DECISIONS_KEEP`` are kept.
- ``blocked``: versions rolled back from; the policy never promotes them again on its own (a person
  can: ``models promote``).

Readers are tolerant: a missing document is an empty one, unknown keys are kept.
Writers: the deciding daemon replica (under a Redis lock) and people through the CLI; each write
reads, changes and replaces the whole document.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kronos_contract.registry import Registry, RegistryError

DOCUMENT = "challengers.json"
DECISIONS_KEEP = 200
DECISIONS = ("promote", "keep", "rollback")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def read(registry: Registry) -> dict[str, Any]:
    """The document, normalised: ``challengers`` (list of dicts), ``decisions`` (list), ``blocked`` (dict)."""
    doc = registry.read_document(DOCUMENT)
    raw = doc.get("challengers") or []
    entries: list[dict[str, Any]] = []
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, str):
            entries.append({"version": item})
        elif isinstance(item, dict) and isinstance(item.get("version"), str):
            entries.append(dict(item))
    doc["challengers"] = entries
    doc["decisions"] = [d for d in doc.get("decisions") or [] if isinstance(d, dict)]
    blocked = doc.get("blocked")
    doc["blocked"] = dict(blocked) if isinstance(blocked, dict) else {}
    return doc


def _write(registry: Registry, doc: dict[str, Any]) -> None:
    doc["updated_at"] = _now()
    doc["decisions"] = doc["decisions"][-DECISIONS_KEEP:]
    registry.write_document(DOCUMENT, doc)


def challengers(registry: Registry) -> list[str]:
    """The challengers' versions, in the order they were added."""
    return [c["version"] for c in read(registry)["challengers"]]


def blocked(registry: Registry) -> dict[str, Any]:
    """Versions the policy must not promote on its own (rolled back from), with why and when."""
    return dict(read(registry)["blocked"])


def challenge(registry: Registry, version: str, by: str = "cli") -> dict[str, Any]:
    """Add ``version`` (a complete version, not the champion) to the challengers; returns the document.
    Adding one already there changes nothing."""
    registry.manifest(version)  # RegistryError when it does not exist
    if registry.champion() == version:
        raise RegistryError(f"{version!r} is the champion; a challenger must be another version")
    doc = read(registry)
    if any(c["version"] == version for c in doc["challengers"]):
        return doc
    doc["challengers"].append({"version": version, "added_at": _now(), "by": by})
    _write(registry, doc)
    return doc


def withdraw(registry: Registry, version: str) -> dict[str, Any]:
    """Remove ``version`` from the challengers (RegistryError when it is not one)."""
    doc = read(registry)
    kept = [c for c in doc["challengers"] if c["version"] != version]
    if len(kept) == len(doc["challengers"]):
        raise RegistryError(
            f"{version!r} is not a challenger in {registry.url}; challengers: "
            f"{[c['version'] for c in doc['challengers']]}"
        )
    doc["challengers"] = kept
    _write(registry, doc)
    return doc


def record(registry: Registry, decision: dict[str, Any]) -> dict[str, Any]:
    """Append a decision (``decision`` in DECISIONS, ``version``, figures...) with its time.

    A ``promote`` that was applied takes the version off the challengers; a ``rollback`` blocks the
    version it rolled back from (``rolled_back_from``). Returns the stored decision."""
    kind = decision.get("decision")
    if kind not in DECISIONS:
        raise RegistryError(f"unknown decision {kind!r}; one of {DECISIONS}")
    stored = {**decision, "at": decision.get("at") or _now()}
    doc = read(registry)
    doc["decisions"].append(stored)
    if kind == "promote" and stored.get("applied"):
        doc["challengers"] = [c for c in doc["challengers"] if c["version"] != stored.get("version")]
    if kind == "rollback" and stored.get("rolled_back_from"):
        doc["blocked"][str(stored["rolled_back_from"])] = {"reason": "rolled back", "at": stored["at"]}
    _write(registry, doc)
    return stored


def decisions(registry: Registry, version: str | None = None) -> list[dict[str, Any]]:
    """Recorded decisions, oldest first (those about ``version`` when given)."""
    found = read(registry)["decisions"]
    return [d for d in found if version is None or d.get("version") == version]
