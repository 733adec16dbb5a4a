"""mkdocs hook: shape comments in docstrings are not cross-references.

kronos_core writes tensor shapes in brackets (``xs[b] [L_b, 6]``, ``# [B, S, pred_len, 6]``). Markdown
reads ``[b] [L_b, 6]`` as a reference link, and mkdocs-autorefs then warns that it cannot find the
target ``L_b, 6``, which ``--strict`` turns into a failed build. This filter drops that warning when
the target cannot be a Python name (it holds a comma, a space or a digit first); a missing reference
to a real name (``kronos_core.Missing``) still fails the build.
"""

from __future__ import annotations

import logging
import re
from typing import Any

_UNRESOLVED = re.compile(r"Could not find cross-reference target '(?P<target>[^']*)'")
_PYTHON_NAME = re.compile(r"^[A-Za-z_][\w.]*$")
LOGGER = "mkdocs.plugins.mkdocs_autorefs._internal.plugin"


class ShapeRefFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        found = _UNRESOLVED.search(record.getMessage())
        return not (found and not _PYTHON_NAME.match(found.group("target")))


def on_startup(command: str, dirty: bool) -> None:
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(f, ShapeRefFilter) for f in logger.filters):
        logger.addFilter(ShapeRefFilter())


def on_config(config: Any) -> Any:
    on_startup("build", False)  # on_startup runs only under the mkdocs CLI; builds from Python too
    return config
