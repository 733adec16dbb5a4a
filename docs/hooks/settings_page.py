"""Writes docs/configuration/settings.md from the settings classes (an mkdocs hook, and a script).

Every field of ``daemon.settings.Settings`` (and its groups) and of ``trainer.settings.TrainSettings``
becomes one row: the environment variable, its default, what it accepts and the field's
``description``. A field without a description stops the build: describe it in the class.

``mkdocs build`` and ``mkdocs serve`` regenerate the page before they read the docs (``on_pre_build``);
``python docs/hooks/settings_page.py`` does the same by hand. The page is committed so that it reads
on the forge too; ``tests/daemon/test_settings_doc.py`` fails when it is stale or misses a setting.
With ``KRONOS_DOCS_CHECK=1`` (the docs test's build) the hook only checks: a stale page stops the
build instead of being rewritten, so a test run never edits the working tree.
"""

from __future__ import annotations

import enum
import json
import os
import types
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "configuration" / "settings.md"

HEADER = """\
# All settings

<!-- Generated from daemon/settings.py and trainer/settings.py by docs/hooks/settings_page.py
     (run by `mkdocs build`). Do not edit: describe a setting in its class instead. -->

Every setting is an environment variable; how they are read is on [Configuration](index.md).
Defaults marked *manifest* come from the model's `manifest.json` when it names them.
"""

# Section title and a line that leads into the table, per group of daemon.settings.Settings.
GROUPS = {
    "kafka": ("Kafka", "Topics, consumer group, security and exactly-once; see "
              "[Kafka contracts](../contracts/kafka.md) and [Delivery](../delivery.md)."),
    "redis": ("Redis", "See [Redis contract](../contracts/redis.md)."),
    "model": ("Model", "Where the model comes from, how it runs and samples; see "
              "[Models](../models/registry.md), [Calendars](../calendars.md) and [Modes](../modes.md)."),
    "batch": ("Batching", "How the loop fetches; see [Daemon benchmarks](../benchmarks/daemon.md)."),
    "scoring": ("Online scoring", "See [Scoring and calibration](../scoring.md)."),
    "api": ("HTTP API", "The `/v1` routes, their keys and limits; see [HTTP API](../api.md)."),
    "challengers": ("Challengers", "Shadow challengers, promotion on live evidence and automatic rollback; "
                    "see [Challengers](../models/challengers.md)."),
    "archive": ("Archiver", "`kronos-stream archive`; see [Archive and registry](../models/registry.md). "
                "Kafka connection and security come from the `KRONOS_KAFKA__*` variables."),
}
TOP = ("Daemon", "Mode, HTTP, health, validation, outages; see [Operations](../operations/index.md).")
TRAIN = ("Trainer", "`kronos-stream train` (and the retrain CronJob): every setting is also a flag "
         "(`--steps`), which wins over the variable; see [Retraining](../models/retraining.md).")


class UndocumentedSetting(Exception):
    """A settings field has no description."""


def _type_text(annotation: Any) -> str:
    """What a variable accepts, in words: ``int``, ``true/false``, ``exact | incremental``..."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_text(args[0])
    if origin in (typing.Union, types.UnionType):
        parts = [_type_text(a) for a in args if a is not type(None)]
        return " or ".join(parts)
    if origin is typing.Literal:
        return " | ".join(f"`{str(v).lower() if isinstance(v, bool) else v}`" for v in args)
    if origin is tuple:
        return f"list of {_type_text(args[0])}"
    if origin is dict:
        return "JSON object"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " | ".join(f"`{m.value}`" for m in annotation)
    names = {bool: "`true`/`false`", int: "integer", float: "number", str: "text", Path: "path"}
    if annotation in names:
        return names[annotation]
    name = getattr(annotation, "__name__", str(annotation))
    return {"SecretStr": "secret", "datetime": "date/time (ISO 8601)"}.get(name, name)


def _bounds(field: Any) -> str:
    words = []
    for item in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(item, attr, None)
            if value is not None:
                words.append(f"{sign} {value:,}" if isinstance(value, int) else f"{sign} {value}")
    return ", ".join(words)


def _default_text(field: Any) -> str:
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple | list):
        return "`" + ",".join(str(v) for v in value) + "`"
    if isinstance(value, dict):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _rows(fields: dict[str, Any], prefix: str, owner: str, manifest: tuple[str, ...] = ()) -> list[str]:
    rows = ["| variable | default | accepts | meaning |", "|---|---|---|---|"]
    for name, field in fields.items():
        if not field.description:
            raise UndocumentedSetting(
                f"{owner}.{name} has no description: give it Field(description=...) so that the "
                "settings page can list it"
            )
        default = _default_text(field)
        if name in manifest:
            default += ", or *manifest*"
        accepts = _type_text(field.annotation)
        bounds = _bounds(field)
        if bounds:
            accepts += f" ({bounds})"
        rows.append(f"| `{prefix}{name.upper()}` | {_cell(default)} | {_cell(accepts)} | {_cell(field.description)} |")
    return rows


def render() -> str:
    """The page's Markdown, from the classes as they are imported now."""
    from pydantic import BaseModel

    from daemon.model.manifest import DEFAULTED
    from daemon.settings import ENV_PREFIX, NESTED_DELIMITER, Settings
    from trainer.settings import ENV_PREFIX as TRAIN_PREFIX
    from trainer.settings import TrainSettings

    parts = [HEADER]
    top = {}
    for name, field in Settings.model_fields.items():
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            title, lead = GROUPS.get(name, (name.capitalize(), ""))
            prefix = f"{ENV_PREFIX}{name.upper()}{NESTED_DELIMITER}"
            manifest = DEFAULTED if name == "model" else ()
            parts += [f"## {title}", "", lead, ""] if lead else [f"## {title}", ""]
            parts += _rows(group.model_fields, prefix, group.__name__, manifest) + [""]
        else:
            top[name] = field
    parts += [f"## {TOP[0]}", "", TOP[1], ""] + _rows(top, ENV_PREFIX, "Settings") + [""]
    parts += [f"## {TRAIN[0]}", "", TRAIN[1], ""] + _rows(TrainSettings.model_fields, TRAIN_PREFIX, "TrainSettings")
    return "\n".join(parts).rstrip("\n") + "\n"


def write(page: Path = PAGE) -> bool:
    """Write the page when its content changed (so ``mkdocs serve`` does not rebuild in a loop)."""
    text = render()
    if page.exists() and page.read_text() == text:
        return False
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text)
    return True


class StalePage(Exception):
    """The committed settings page differs from what the settings classes give."""


def on_pre_build(config: Any) -> None:
    """mkdocs hook: regenerate the page before the docs are read (or, checking, refuse a stale one)."""
    if os.environ.get("KRONOS_DOCS_CHECK") == "1":
        if not PAGE.exists() or PAGE.read_text() != render():
            raise StalePage(
                f"{PAGE.relative_to(ROOT)} is stale: run `python docs/hooks/settings_page.py` (or "
                "`make docs`) and commit the page"
            )
        return
    write()


if __name__ == "__main__":
    print(("wrote " if write() else "unchanged: ") + str(PAGE.relative_to(ROOT)))
