"""mkdocs hook: the files under results/ join the site at results/..., so pages link to them.

Pages link to results the way the repository lays them out: ``[results/chaos.md](../../results/chaos.md)``
from ``docs/operations/chaos.md`` names the committed file (so the link also works when the Markdown is
read on the forge), and ``mkdocs build --strict`` fails when a linked results file does not exist. Each
file is registered under its path relative to ``docs/`` (``../results/chaos.md``), which is where mkdocs
resolves such a link, and written to ``results/...`` in the site. Markdown results become pages of their own (outside the navigation), the
rest (JSON, PNG, logs) static files. ``results/tmp/`` (scratch output of test runs) is left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files, InclusionLevel

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results"
SKIPPED = ("tmp",)


def results_paths() -> list[str]:
    """Every results file the site carries, as a path relative to the repository root."""
    paths = []
    for path in sorted(RESULTS.rglob("*")):
        rel = path.relative_to(RESULTS)
        if path.is_file() and rel.parts[0] not in SKIPPED and not path.name.startswith("."):
            paths.append(str(path.relative_to(ROOT)))
    return paths


def on_files(files: Files, config: Any) -> Files:
    docs, site, dir_urls = config["docs_dir"], config["site_dir"], config["use_directory_urls"]
    for rel in results_paths():
        dest = File(rel, docs, site, dir_urls).dest_uri  # results/chaos/index.html, results/demo.png
        files.append(File(f"../{rel}", docs, site, dir_urls, dest_uri=dest, inclusion=InclusionLevel.NOT_IN_NAV))
    return files
