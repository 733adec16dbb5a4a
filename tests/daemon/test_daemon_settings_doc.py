"""The README's settings table and the settings classes name the same variables."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from daemon.settings import ENV_PREFIX, NESTED_DELIMITER, Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def _settings_vars() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            names |= {
                f"{ENV_PREFIX}{name.upper()}{NESTED_DELIMITER}{sub.upper()}" for sub in group.model_fields
            }
        else:
            names.add(f"{ENV_PREFIX}{name.upper()}")
    return names


def _readme_vars() -> set[str]:
    """Variables in the first column of the table under 'Running the daemon for real'; a short name
    (``TOP_P``) continues the group of the row's first full name."""
    text = README.read_text()
    section = text.split("## Running the daemon for real", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = line.split("|")[1]
        prefix = ""
        for name in re.findall(r"`([A-Z0-9_]+)`", first_cell):
            if name.startswith(ENV_PREFIX):
                names.add(name)
                prefix = (
                    name.rsplit(NESTED_DELIMITER, 1)[0] + NESTED_DELIMITER
                    if NESTED_DELIMITER in name
                    else ENV_PREFIX
                )
            else:
                names.add(prefix + name)
        listed = re.search(r"\(with ([^)]*)\)", line)  # the security row: "(with `SASL_MECHANISM`, ...)"
        for name in re.findall(r"`([A-Z0-9_]+)`", listed.group(1) if listed else ""):
            names.add(f"{ENV_PREFIX}KAFKA{NESTED_DELIMITER}{name}")
    return names


def test_every_setting_is_documented_and_every_documented_one_exists() -> None:
    code, table = _settings_vars(), _readme_vars()
    anywhere = table | set(re.findall(r"KRONOS_[A-Z0-9_]*[A-Z0-9]", README.read_text()))
    assert sorted(code - anywhere) == [], "settings the README does not name"
    daemon_groups = {"KAFKA", "REDIS", "MODEL", "BATCH", "SCORING"}
    in_group = {v for v in code if v.split(NESTED_DELIMITER)[0].removeprefix(ENV_PREFIX) in daemon_groups}
    assert sorted(in_group - table) == [], "daemon settings missing from the settings table"
    assert sorted(table - code) == [], "the settings table names settings that do not exist"
