"""The Dockerfile's structure (no image can be built here): stages, variants, user, entrypoint.

The file is parsed into instructions (comments dropped, continuation lines joined) and split into
stages at each FROM; the last stage is the image that runs.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helm.chart_helpers import ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # blank lines and comments, also inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if not line:
            continue
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continuation line"
    return out


def parse_stages(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs (before the first FROM) with their defaults, and the stages."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, args in parse_instructions(text):
        if keyword == "FROM":
            parts = [p for p in args.split() if not p.startswith("--")]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede the first FROM, got {keyword}"
            key, _, default = args.partition("=")
            global_args[key] = default.strip('"')
        else:
            stages[-1].instructions.append((keyword, args))
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_stages(DOCKERFILE.read_text())


def user_is_root(spec: str) -> bool:
    user = spec.split(":", 1)[0].strip()
    return user in ("root", "0", "")


def test_parser_sees_through_continuations_and_comments() -> None:
    text = 'ARG A=1\n# c\nFROM x AS one\nRUN a \\\n  && b\n\nUSER 5\nFROM one\nENTRYPOINT ["e"]\n'
    args, stages = parse_stages(text)
    assert args == {"A": "1"}
    assert [(s.base, s.name) for s in stages] == [("x", "one"), ("one", None)]
    assert stages[0].instructions == [("RUN", "a && b"), ("USER", "5")]


def test_multi_stage_with_cpu_and_cuda_variants(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    global_args, stages = dockerfile
    assert len(stages) >= 2, "a build stage and a runtime stage"
    assert global_args.get("VARIANT") == "cpu", "the variant is a build argument, CPU by default"
    names = {s.name for s in stages}
    assert {"torch-cpu", "torch-cuda"} <= names
    # The builder picks its torch wheels through the variant; each variant names its wheel index.
    assert any(s.base == "torch-${VARIANT}" for s in stages)
    for variant, marker in (("cpu", "/whl/cpu"), ("cuda", "/whl/cu")):
        stage = next(s for s in stages if s.name == f"torch-{variant}")
        assert any(marker in args for kw, args in stage.instructions if kw == "ENV"), variant


def test_final_stage_runs_as_a_non_root_user(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    final = stages[-1]
    users = [args for kw, args in final.instructions if kw == "USER"]
    assert users, "the final stage sets a USER"
    assert not any(user_is_root(u) for u in users), f"a USER of the final stage is root: {users}"
    uid = users[-1].split(":", 1)[0]
    assert uid.isdigit() and int(uid) > 0, "a numeric uid (runAsNonRoot can verify it without /etc/passwd)"
    # Nothing runs as root: every RUN of the final stage comes after a non-root USER.
    first_user = next(i for i, (kw, _) in enumerate(final.instructions) if kw == "USER")
    runs = [i for i, (kw, _) in enumerate(final.instructions) if kw == "RUN"]
    assert all(i > first_user for i in runs), "a RUN of the final stage executes as root"


def test_final_stage_does_not_start_from_the_builder(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    built = {s.name for s in stages[:-1] if s.name}
    assert stages[-1].base not in built, "the runtime stage starts from a clean base, not the build stage"
    copies = [args for kw, args in stages[-1].instructions if kw == "COPY"]
    assert any("--from=builder" in c for c in copies), "the runtime takes the environment from the builder"


def test_exec_form_entrypoint_is_the_console_script(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    entrypoints = [args for kw, args in stages[-1].instructions if kw == "ENTRYPOINT"]
    assert len(entrypoints) == 1
    assert json.loads(entrypoints[0]) == ["kronos-stream"], "exec form: signals reach the daemon (PID 1)"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "kronos-stream" in scripts, "the entrypoint is the project's console script"
    cmd = [args for kw, args in stages[-1].instructions if kw == "CMD"]
    assert cmd and json.loads(cmd[-1]) == ["run"]


def test_no_dev_dependencies_installed(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    dev_names = {re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower() for spec in dev}
    runs = [args for s in stages for kw, args in s.instructions if kw == "RUN"]
    installs = [r for r in runs if "pip install" in r]
    assert installs, "the build installs the project with pip"
    for run in installs:
        assert "[dev" not in run and "-e " not in run, f"dev extra or editable install: {run}"
        words = {w.strip("'\"").lower() for w in run.split()}
        assert not (words & dev_names), f"dev tools installed: {words & dev_names}"


def dockerignore_includes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or a folder above it decides; `!`
    re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = (pattern[1:] if negate else pattern).strip("/")
        if any(fnmatch.fnmatch(prefix, pat) for prefix in prefixes):
            included = negate
    return included


def ignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_dockerignore_keeps_the_context_to_the_sources() -> None:
    patterns = ignore_patterns()
    for needed in ("pyproject.toml", "README.md", "daemon/cli/main.py", "kronos_core/model.py"):
        assert dockerignore_includes(patterns, needed), needed
    # Every package pyproject installs must be in the context.
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for pattern in include["include"]:
        package = pattern.rstrip("*")
        if (ROOT / package).is_dir():
            assert dockerignore_includes(patterns, f"{package}/__init__.py"), package
    for unwanted in (
        ".venv",
        ".cache",
        ".git",
        "tests",
        "results",
        "helm",
        ".services",
        "daemon/__pycache__",
    ):
        assert not dockerignore_includes(patterns, unwanted), unwanted


def test_the_build_context_builds_the_wheel(tmp_path: Path) -> None:
    """What `COPY . /src` sees (the .dockerignore applied) builds a wheel with every package,
    the bundled demo model, the dashboard's page and the console script: the builder stage's
    `pip install /src`."""
    patterns = ignore_patterns()
    context = tmp_path / "context"
    for top in sorted(ROOT.iterdir()):
        if top.name in (".git", ".venv", ".cache") or not dockerignore_includes(patterns, top.name):
            continue
        files = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
        for path in files:
            rel = path.relative_to(ROOT).as_posix()
            if dockerignore_includes(patterns, rel):
                (context / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, context / rel)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        if (ROOT / package / "__init__.py").is_file():
            assert package in tops, f"{package} is missing from the image's wheel"
    assert any(n.endswith("demo-model/predictor/model.safetensors") for n in names)
    for static in ("index.html", "dashboard.js", "dashboard.css"):  # the dashboard works offline
        assert f"daemon/api/ui/static/{static}" in names, f"the dashboard's {static} is missing from the wheel"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "kronos-stream = daemon.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
