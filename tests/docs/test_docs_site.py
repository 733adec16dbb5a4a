"""The docs site builds strictly, indexes every results file, and names only paths that exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# Repository paths as pages name them in code spans: `daemon/pipeline/loop.py`, `helm/kronos-stream/`.
# (Links into results/ are checked by the build; results paths in code spans are often a command's output.)
_PATH = re.compile(r"`((?:daemon|kronos_core|kronos_contract|trainer|scripts|tests|helm)/[\w./-]*)`")


def _pages() -> dict[Path, str]:
    return {page: page.read_text() for page in sorted(DOCS.rglob("*.md"))}


def _results_files() -> list[str]:
    return [
        str(p.relative_to(ROOT))
        for p in sorted((ROOT / "results").rglob("*"))
        if p.is_file() and p.relative_to(ROOT / "results").parts[0] != "tmp" and not p.name.startswith(".")
    ]


@pytest.mark.timeout(300)
def test_mkdocs_build_is_strict_and_green(tmp_path: Path) -> None:
    """A broken link, an unknown anchor, a page outside the navigation, a missing results file, an
    unresolvable API reference or a stale settings page fails the build (mkdocs.yml: strict)."""
    env = {**os.environ, "KRONOS_DOCS_CHECK": "1", "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    assert (tmp_path / "site" / "configuration" / "settings" / "index.html").exists()
    assert (tmp_path / "site" / "results" / "demo.png").exists()


def test_every_results_file_is_linked_from_a_page() -> None:
    text = "\n".join(_pages().values())
    unlinked = [path for path in _results_files() if f"{path})" not in text]
    assert unlinked == [], "results files no docs page links to (link them, or delete superseded runs)"


def test_paths_the_pages_name_exist() -> None:
    missing = []
    for page, text in _pages().items():
        for path in _PATH.findall(text):
            if any(mark in path for mark in ("{", "*", "...", "<")):
                continue
            if not (ROOT / path.rstrip("/")).exists():
                missing.append(f"{page.relative_to(ROOT)}: {path}")
    assert missing == [], "pages name files that do not exist"


def test_readme_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if "://" not in t]
    assert local, "the README links into the docs"
    assert [t for t in local if not (ROOT / t).exists()] == [], "README links to missing files"
