"""Griffe extension (mkdocstrings): Sphinx roles in docstrings read as code on the API pages.

The code's docstrings name other objects the Sphinx way (``:class:`~kronos_core.engine.KronosEngine```,
``:func:`load_settings```). Markdown would print the role as text; this turns each into a code span of
the name as a reader would write it (the last part when the target starts with ``~``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")


def _plain(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class SphinxRoles(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_plain, obj.docstring.value)
