"""Helpers of the chart and image tests: finding helm, rendering, values merging.

helm comes from ``scripts/ensure-helm`` (``.cache/helm/bin/helm``; ``scripts/run-tests`` builds it
when missing), or ``$HELM``, or ``helm`` on PATH. Without it the helm tests skip locally and fail
under ``CI=true``; the same goes for the ``kubernetes-validate`` package.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "kronos-stream"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
# Each case: the chart's defaults alone, then each values file of ci/ on top of them.
CASES: list[Path | None] = [None, *CI_VALUES]
CASE_IDS = ["default", *(p.stem for p in CI_VALUES)]
RELEASE = "ks"
NAMESPACE = "forecasting"
# helm built by `go install` (no release ldflags) assumes Kubernetes v1.20; name a current one.
KUBE_VERSION = "1.31.0"


def missing_tool(what: str) -> None:
    """Skip locally; under CI=true a missing tool is a failure, not a silent pass."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} (CI=true: the chart tests must run)")
    pytest.skip(what)


def find_helm() -> str | None:
    for candidate in (os.environ.get("HELM"), str(ROOT / ".cache" / "helm" / "bin" / "helm")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("helm")


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Helm's values merge: maps merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def chart_values(case: Path | None) -> dict[str, Any]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if case is not None:
        values = deep_merge(values, yaml.safe_load(case.read_text()) or {})
    return values


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False)


def template_args(case: Path | None, sets: tuple[str, ...] = ()) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
    if case is not None:
        args += ["--values", str(case)]
    for item in sets:
        args += ["--set", item]
    return args


@dataclass
class Rendered:
    case: str
    values: dict[str, Any]
    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name_suffix: str = "") -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, f"{self.case}: expected one {kind} *{name_suffix}, got {len(found)}"
        return found[0]

    def config_map(self, name: str) -> dict[str, str]:
        for obj in self.of_kind("ConfigMap"):
            if obj["metadata"]["name"] == name:
                return dict(obj.get("data") or {})
        raise AssertionError(f"{self.case}: no ConfigMap {name}")


def render(helm: str, case: Path | None, sets: tuple[str, ...] = ()) -> Rendered:
    proc = run_helm(helm, *template_args(case, sets))
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    objects = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    return Rendered(case.stem if case else "default", chart_values(case), objects)


def pod_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The pod spec inside a workload (Deployment, StatefulSet, Job, CronJob) or a Pod."""
    kind = obj["kind"]
    if kind == "Pod":
        yield obj["spec"]
    elif kind in ("Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet"):
        yield obj["spec"]["template"]["spec"]
    elif kind == "CronJob":
        yield obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    if obj["kind"] == "Pod":
        return dict(obj["metadata"].get("labels") or {})
    if obj["kind"] == "CronJob":
        return dict(obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("labels") or {})
    return dict(obj["spec"]["template"]["metadata"].get("labels") or {})
