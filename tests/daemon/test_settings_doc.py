"""The generated settings page (docs/configuration/settings.md) lists every setting, and is current."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import BaseModel, Field

from daemon.settings import ENV_PREFIX, NESTED_DELIMITER, Settings, unknown_env_names
from trainer.settings import ENV_PREFIX as TRAIN_PREFIX
from trainer.settings import TrainSettings

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "configuration" / "settings.md"


def _generator() -> ModuleType:
    """docs/hooks/settings_page.py: an mkdocs hook, so not an importable package module."""
    spec = importlib.util.spec_from_file_location("settings_page", ROOT / "docs" / "hooks" / "settings_page.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _settings_vars() -> set[str]:
    """Every variable the classes read, walked independently of the generator."""
    names = set()
    for name, field in Settings.model_fields.items():
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            names |= {
                f"{ENV_PREFIX}{name.upper()}{NESTED_DELIMITER}{sub.upper()}" for sub in group.model_fields
            }
        else:
            names.add(f"{ENV_PREFIX}{name.upper()}")
    return names | {f"{TRAIN_PREFIX}{name.upper()}" for name in TrainSettings.model_fields}


def _page_rows() -> dict[str, list[str]]:
    """Table rows of the committed page by variable: [variable, default, accepts, meaning]."""
    rows = {}
    for line in PAGE.read_text().splitlines():
        found = re.match(r"\| `(KRONOS_[A-Z0-9_]+)` \|", line)
        if found:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows[found.group(1)] = cells
    return rows


def test_the_page_lists_every_setting_and_only_settings() -> None:
    code, page = _settings_vars(), set(_page_rows())
    assert sorted(code - page) == [], "settings missing from docs/configuration/settings.md"
    assert sorted(page - code) == [], "the settings page names settings that do not exist"
    daemon_rows = {v for v in page if not v.startswith(TRAIN_PREFIX)}
    assert unknown_env_names(dict.fromkeys(daemon_rows, "x")) == [], "the daemon would not read these"


def test_every_row_says_its_default_and_meaning() -> None:
    for name, cells in _page_rows().items():
        assert len(cells) == 4, f"{name}: {cells}"
        assert cells[1] and cells[3], f"{name} has no default or no meaning: {cells}"


def test_the_committed_page_is_current() -> None:
    assert PAGE.read_text() == _generator().render(), (
        "docs/configuration/settings.md is stale: run `python docs/hooks/settings_page.py` (or `make docs`) "
        "and commit it"
    )


def test_a_setting_without_a_description_stops_the_generator() -> None:
    class Group(BaseModel):
        described: int = Field(default=1, description="a setting")
        bare: int = 2

    generator = _generator()
    with pytest.raises(generator.UndocumentedSetting, match=r"Group\.bare has no description"):
        generator._rows(Group.model_fields, "KRONOS_GROUP__", "Group")
