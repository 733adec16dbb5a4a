"""Fixtures of the chart tests (helpers in chart_helpers.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helm.chart_helpers import CASES, Rendered, find_helm, missing_tool, render


@pytest.fixture(scope="session")
def helm() -> str:
    path = find_helm()
    if path is None:
        missing_tool("helm not found: run scripts/ensure-helm (builds .cache/helm/bin/helm) or set HELM")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def render_case(helm: str) -> Callable[[Path | None], Rendered]:
    cache: dict[Path | None, Rendered] = {}

    def get(case: Path | None) -> Rendered:
        if case not in cache:
            cache[case] = render(helm, case)
        return cache[case]

    return get


@pytest.fixture(scope="session")
def all_rendered(render_case: Callable[[Path | None], Rendered]) -> list[Rendered]:
    return [render_case(case) for case in CASES]
