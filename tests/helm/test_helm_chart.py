"""The Helm chart, offline: lint, render, validate every object, and check the rendered manifests
against the code they deploy (settings classes, probe routes, CLI subcommands, shutdown bound).

Each case renders the chart's defaults or one values file of helm/kronos-stream/ci/.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from daemon.settings import KafkaSettings, Settings
from tests.helm.chart_helpers import (
    CASE_IDS,
    CASES,
    CHART,
    KUBE_VERSION,
    RELEASE,
    Rendered,
    chart_values,
    deep_merge,
    missing_tool,
    pod_labels,
    pod_specs,
    render,
    run_helm,
    template_args,
)
from trainer.settings import TrainSettings

# The settings classes each component reads: the daemon and the archiver read daemon.settings
# (the archiver's ArchiveSettings is its `archive` group), the retrain job trainer.settings.
COMPONENT_SETTINGS: dict[str, tuple[type[BaseSettings], ...]] = {
    "daemon": (Settings,),
    "archiver": (Settings,),
    "retrain": (TrainSettings,),
}
KUBE_VERSIONS = ("1.27.0", "latest")  # the chart's kubeVersion floor, and the newest schemas
CRD_KINDS = {"ScaledObject", "ServiceMonitor", "PrometheusRule"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "CronJob", "Pod"}


def settings_env_names(cls: type[BaseSettings]) -> set[str]:
    """Every environment name a settings class reads, walked from its pydantic model: the prefix
    plus each field, and GROUP<delimiter>FIELD for the fields of nested groups."""
    prefix = str(cls.model_config.get("env_prefix") or "")
    delimiter = cls.model_config.get("env_nested_delimiter")
    names = set()
    for name, field in cls.model_fields.items():
        top = (prefix + name).upper()
        names.add(top)
        group = field.annotation
        if delimiter and isinstance(group, type) and issubclass(group, BaseModel):
            names.update((top + delimiter + sub).upper() for sub in group.model_fields)
    return names


def literal_values(annotation: Any) -> set[Any]:
    """The members of a Literal (also inside Optional)."""
    values: set[Any] = set()
    for arg in typing.get_args(annotation) or ():
        values |= literal_values(arg) if typing.get_args(arg) else {arg}
    if typing.get_origin(annotation) is typing.Literal:
        values = set(typing.get_args(annotation))
    return {v for v in values if v is not type(None)}


def component(obj: dict[str, Any]) -> str:
    return str(obj["metadata"].get("labels", {}).get("app.kubernetes.io/component", ""))


def containers_env(rendered: Rendered, obj: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(container, env) per container: ConfigMap data by envFrom, then env entries (a value, or
    the valueFrom reference for secrets and the downward API)."""
    out = []
    for spec in pod_specs(obj):
        for container in spec["containers"]:
            env: dict[str, Any] = {}
            for source in container.get("envFrom") or []:
                if "configMapRef" in source:
                    env.update(rendered.config_map(source["configMapRef"]["name"]))
            for item in container.get("env") or []:
                env[item["name"]] = item.get("value", item.get("valueFrom"))
            out.append((container, env))
    return out


def workloads(rendered: Rendered) -> list[dict[str, Any]]:
    return [o for o in rendered.objects if o["kind"] in WORKLOAD_KINDS]


def daemon_workload(rendered: Rendered) -> dict[str, Any]:
    found = [
        o for o in rendered.objects if o["kind"] in ("Deployment", "StatefulSet") and component(o) == "daemon"
    ]
    assert len(found) == 1, f"{rendered.case}: one daemon workload"
    return found[0]


def env_of(rendered: Rendered, comp: str) -> dict[str, Any]:
    obj = next(o for o in workloads(rendered) if component(o) == comp)
    return containers_env(rendered, obj)[0][1]


@pytest.fixture(params=CASES, ids=CASE_IDS)
def rendered(request: pytest.FixtureRequest, render_case: Callable[[Path | None], Rendered]) -> Rendered:
    return render_case(request.param)


# --- helm itself -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_helm_lint_strict(helm: str, case: Path | None) -> None:
    args = ["lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION]
    if case is not None:
        args += ["--values", str(case)]
    proc = run_helm(helm, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def kube_validate() -> Any:
    try:
        return importlib.import_module("kubernetes_validate")
    except ModuleNotFoundError:
        missing_tool("kubernetes-validate is not installed (pip install kubernetes-validate: the dev extra)")


def test_every_object_validates_against_the_kubernetes_schemas(
    rendered: Rendered, kube_validate: Any
) -> None:
    kinds = set()
    for obj in rendered.objects:
        if obj["kind"] in CRD_KINDS:
            continue
        for version in KUBE_VERSIONS:
            target = kube_validate.latest_version() if version == "latest" else version
            try:
                kube_validate.validate(obj, target, strict=True)
            except kube_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                pytest.fail(
                    f"{rendered.case}: {obj['kind']}/{obj['metadata']['name']} on {target}: {where}: {exc.message}"
                )
        kinds.add(obj["kind"])
    assert {"ConfigMap", "Service", "ServiceAccount", "PodDisruptionBudget", "CronJob", "Pod"} <= kinds


def test_custom_resources_are_well_formed(all_rendered: list[Rendered]) -> None:
    """ScaledObject and ServiceMonitor have no bundled schema: check what the chart relies on."""
    seen = set()
    for r in all_rendered:
        by_kind_name = {(o["kind"], o["metadata"]["name"]) for o in r.objects}
        for so in r.of_kind("ScaledObject"):
            seen.add("ScaledObject")
            assert so["apiVersion"] == "keda.sh/v1alpha1"
            target = so["spec"]["scaleTargetRef"]
            assert (target["kind"], target["name"]) in by_kind_name, "the target is a rendered workload"
            assert isinstance(so["spec"]["minReplicaCount"], int) and so["spec"]["minReplicaCount"] >= 1
            assert isinstance(so["spec"]["maxReplicaCount"], int)
            for trigger in so["spec"]["triggers"]:
                assert trigger["type"] == "kafka"
                assert all(isinstance(v, str) for v in trigger["metadata"].values()), "KEDA wants strings"
                env = env_of(r, "daemon")
                assert trigger["metadata"]["consumerGroup"] == env["KRONOS_KAFKA__GROUP_ID"]
                assert trigger["metadata"]["topic"] == env["KRONOS_KAFKA__INPUT_TOPIC"]
                assert trigger["metadata"]["bootstrapServers"] == env["KRONOS_KAFKA__BOOTSTRAP_SERVERS"]
        for sm in r.of_kind("ServiceMonitor"):
            seen.add("ServiceMonitor")
            assert sm["apiVersion"] == "monitoring.coreos.com/v1"
            wanted = sm["spec"]["selector"]["matchLabels"]
            services = [s for s in r.of_kind("Service") if wanted.items() <= s["metadata"]["labels"].items()]
            assert len(services) == 1, (
                "the ServiceMonitor selects the metrics Service only (one scrape per pod)"
            )
            ports = {p["name"] for s in services for p in s["spec"]["ports"]}
            for endpoint in sm["spec"]["endpoints"]:
                assert endpoint["port"] in ports
                status, ctype = ops_answer(endpoint["path"], live=True, ready=True)
                assert status == 200 and ctype.startswith("text/plain"), "the path serves Prometheus text"
        for rule in r.of_kind("PrometheusRule"):
            seen.add("PrometheusRule")
            assert rule["apiVersion"] == "monitoring.coreos.com/v1"
            assert rule["metadata"]["labels"].items() >= r.values["metrics"]["prometheusRule"]["labels"].items()
            for group in rule["spec"]["groups"]:
                assert group["name"] and group["rules"], "a group with rules"
                for item in group["rules"]:
                    assert set(item) == {"alert", "expr", "for", "labels", "annotations"}, item
                    assert isinstance(item["expr"], str) and item["labels"]["severity"]
    assert seen == CRD_KINDS, "some values file renders each custom resource"


# --- configuration against the settings classes -------------------------------------------------


@pytest.mark.parametrize("comp", sorted(COMPONENT_SETTINGS))
def test_every_kronos_variable_is_a_settings_field(rendered: Rendered, comp: str) -> None:
    objs = [o for o in workloads(rendered) if component(o) == comp]
    if not objs:
        pytest.skip(f"{rendered.case}: no {comp} workload")
    known = set().union(*(settings_env_names(c) for c in COMPONENT_SETTINGS[comp]))
    used = {name for obj in objs for _, env in containers_env(rendered, obj) for name in env}
    used = {n for n in used if n.upper().startswith("KRONOS_")}
    assert used, "the component is configured by KRONOS_* variables"
    unknown = sorted(used - known)
    assert not unknown, f"{comp}: KRONOS_* variables no settings class reads: {unknown}"


def test_settings_derivation_sees_nested_groups() -> None:
    names = settings_env_names(Settings)
    assert {"KRONOS_MODE", "KRONOS_HTTP_PORT", "KRONOS_KAFKA__GROUP_INSTANCE_ID"} <= names
    assert "KRONOS_KAFKA__NO_SUCH_FIELD" not in names and "KRONOS_KAFKA" in names


@pytest.mark.parametrize("comp", ["daemon", "archiver"])
def test_environment_loads_into_the_daemon_settings(
    rendered: Rendered, comp: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole environment of the daemon and the archiver (both read daemon.settings) is valid:
    values, not only names."""
    from daemon.settings import load_settings

    env = env_of(rendered, comp)
    for name in [k for k in os.environ if k.upper().startswith("KRONOS_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if not name.startswith("KRONOS_"):
            continue
        if isinstance(value, dict):  # secretKeyRef / fieldRef: a stand-in of the right kind
            value = "pod-0" if "fieldRef" in value else "secret"
        monkeypatch.setenv(name, str(value))
    settings = load_settings()
    values = rendered.values
    assert settings.kafka.input_topic == values["kafka"]["inputTopic"]
    assert settings.kafka.security_protocol == values["kafka"]["securityProtocol"]
    if comp == "daemon":
        assert settings.http_port == int(env["KRONOS_HTTP_PORT"])
        assert settings.kafka.compression_type == values["kafka"]["compressionType"]
        levels = values["daemon"]["config"].get("model", {}).get("quantile_levels")
        if levels is not None:  # a list travels as JSON
            assert list(settings.model.quantile_levels) == levels
        assert settings.mode == values["daemon"]["config"].get("mode", Settings.model_fields["mode"].default)
        assert settings.redis.username == (values["redis"]["username"] or None)
        assert (settings.redis.ssl_ca_certs is not None) == bool(values["redis"]["tls"]["caSecret"])
        assert (settings.model.registry_public_key is not None) == bool(values["signing"]["publicKeySecret"])


def test_retrain_environment_loads_into_the_trainer_settings(
    rendered: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_of(rendered, "retrain")
    for name in [k for k in os.environ if k.upper().startswith("KRONOS_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("KRONOS_"):
            monkeypatch.setenv(name, value if isinstance(value, str) else "secret")
    settings = TrainSettings()
    assert str(settings.registry) == env["KRONOS_TRAIN__REGISTRY"]


def test_retrain_job_and_daemons_share_the_registry_and_archive(rendered: Rendered) -> None:
    daemon_env, train_env = env_of(rendered, "daemon"), env_of(rendered, "retrain")
    assert daemon_env["KRONOS_MODEL__REGISTRY"] == train_env["KRONOS_TRAIN__REGISTRY"]
    archiver_env = env_of(rendered, "archiver")
    assert archiver_env["KRONOS_ARCHIVE__ROOT"] == train_env["KRONOS_TRAIN__ARCHIVE"]
    assert daemon_env["KRONOS_REDIS__KEY_PREFIX"] == train_env["KRONOS_TRAIN__KEY_PREFIX"], "hint channel"
    store = rendered.values["storage"]
    if store["type"] == "objectStore":
        assert daemon_env["KRONOS_MODEL__REGISTRY"] == store["objectStore"]["registryUrl"]
        assert not rendered.of_kind("PersistentVolumeClaim")
        for obj in workloads(rendered):
            for container, _ in containers_env(rendered, obj):
                if component(obj) != "test":
                    refs = [s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s]
                    assert refs == [store["objectStore"]["existingSecret"]], "credentials from the Secret"
    else:
        claim = rendered.one("PersistentVolumeClaim")
        assert set(claim["spec"]["accessModes"]) == {"ReadWriteMany"}, "pods on several nodes share it"
        for obj in workloads(rendered):
            if component(obj) in ("daemon", "archiver", "retrain"):
                for spec in pod_specs(obj):
                    claims = [
                        v["persistentVolumeClaim"]["claimName"]
                        for v in spec["volumes"]
                        if "persistentVolumeClaim" in v
                    ]
                    assert claims == [claim["metadata"]["name"]]


def test_secrets_only_by_reference(rendered: Rendered) -> None:
    assert not rendered.of_kind("Secret"), "the chart never holds a secret"
    for obj in workloads(rendered):
        for _, env in containers_env(rendered, obj):
            for name, value in env.items():
                if "PASSWORD" in name:
                    assert isinstance(value, dict) and "secretKeyRef" in value, (
                        f"{name} is not a Secret reference"
                    )
    for cm in rendered.of_kind("ConfigMap"):
        assert not [k for k in cm.get("data", {}) if "PASSWORD" in k]
    if rendered.values["redis"]["existingSecret"]:
        train = env_of(rendered, "retrain")
        assert "$(REDIS_PASSWORD)@" in train["KRONOS_TRAIN__REDIS_URL"], "the hint URL takes the Secret"


def test_container_commands_are_cli_subcommands(rendered: Rendered) -> None:
    from daemon.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    commands = set(typing.cast(dict[str, Any], sub.choices))
    for obj in workloads(rendered):
        for container, _ in containers_env(rendered, obj):
            args = list(container.get("args") or [])
            if container.get("command") == ["torchrun"]:
                assert args[args.index("-m") + 1] == "daemon.cli", "torchrun runs the project's CLI module"
                args = args[args.index("-m") + 2 :]
            assert args[0] in commands, f"{args[0]!r} is not a kronos-stream subcommand"


# --- probes, shutdown, scaling, security ----------------------------------------------------------


def test_probes_match_the_daemon(rendered: Rendered) -> None:
    obj = daemon_workload(rendered)
    container, env = containers_env(rendered, obj)[0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(env["KRONOS_HTTP_PORT"])
    # Route each probe's path through the daemon's own handler with liveness and readiness apart.
    for live, ready in ((True, False), (False, True)):
        for probe, wanted in (("startupProbe", live), ("livenessProbe", live), ("readinessProbe", ready)):
            get = container[probe]["httpGet"]
            assert ports.get(get["port"], get["port"]) == ports["http"]
            status, _ = ops_answer(get["path"], live=live, ready=ready)
            assert status == (200 if wanted else 503), (
                f"{probe} {get['path']} does not follow the right check"
            )
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "the model load gets minutes"
    services = [s for s in rendered.of_kind("Service") if s["metadata"]["name"].endswith("-metrics")]
    assert [p["targetPort"] for p in services[0]["spec"]["ports"]] == ["http"]


def ops_answer(path: str, *, live: bool, ready: bool) -> tuple[int, str]:
    """Status and content type of ``path`` on the daemon's own operations app (no socket)."""
    from starlette.testclient import TestClient

    from daemon.api.app import build_ops
    from daemon.ops.metrics import Metrics

    app = build_ops(Metrics().render, lambda: (live, {}), lambda: (ready, {}))
    with TestClient(app) as client:
        answer = client.get(path)
    return answer.status_code, answer.headers["content-type"]


def test_default_port_is_the_daemons() -> None:
    assert chart_values(None)["daemon"]["port"] == Settings.model_fields["http_port"].default


def test_grace_period_exceeds_the_shutdown_bound(rendered: Rendered) -> None:
    obj = daemon_workload(rendered)
    env = containers_env(rendered, obj)[0][1]
    bound = float(env.get("KRONOS_GRACEFUL_SHUTDOWN_S", Settings.model_fields["graceful_shutdown_s"].default))
    assert obj["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > bound


def test_retrain_cronjob(rendered: Rendered) -> None:
    job = rendered.one("CronJob", "-retrain")
    values = rendered.values["retrain"]
    spec = job["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] == values["startingDeadlineSeconds"] > 0
    job_spec = spec["jobTemplate"]["spec"]
    for key in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        assert job_spec[key] == values[key]
    pod = job_spec["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    assert container["command"] == ["torchrun"] and "--standalone" in args
    assert f"--nproc-per-node={values['nprocPerNode']}" in args
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu", 0)
    assert gpus == values["gpu"]
    if values["gpu"]:
        assert values["nprocPerNode"] <= values["gpu"], "one process per GPU at most"


def test_gpu_requests_need_the_cuda_image(rendered: Rendered) -> None:
    for obj in workloads(rendered):
        for container, _ in containers_env(rendered, obj):
            limits = container.get("resources", {}).get("limits", {})
            if limits.get("nvidia.com/gpu"):
                assert container["image"].endswith("-cuda")
                assert container["resources"]["requests"]["nvidia.com/gpu"] == limits["nvidia.com/gpu"]


def test_containers_are_non_root_and_read_only(rendered: Rendered) -> None:
    for obj in workloads(rendered):
        for spec in pod_specs(obj):
            pod_ctx = spec["securityContext"]
            assert pod_ctx["runAsNonRoot"] is True and pod_ctx["runAsUser"] != 0
            assert pod_ctx["seccompProfile"]["type"] == "RuntimeDefault"
            tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
            for container in spec["containers"]:
                ctx = container["securityContext"]
                assert ctx["runAsNonRoot"] is True and ctx.get("runAsUser", 1) != 0
                assert ctx["readOnlyRootFilesystem"] is True
                assert ctx["allowPrivilegeEscalation"] is False and not ctx.get("privileged")
                assert ctx["capabilities"]["drop"] == ["ALL"] and not ctx["capabilities"].get("add")
                assert ctx["seccompProfile"]["type"] == "RuntimeDefault"
                tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
                assert tmp and tmp[0]["name"] in tmp_volumes, "/tmp is a writable emptyDir"


def test_replicas_never_exceed_the_partitions(rendered: Rendered) -> None:
    partitions = rendered.values["kafka"]["partitions"]
    obj = daemon_workload(rendered)
    targets = {}
    for so in rendered.of_kind("ScaledObject"):
        assert so["spec"]["maxReplicaCount"] <= partitions
        targets[(so["spec"]["scaleTargetRef"]["kind"], so["spec"]["scaleTargetRef"]["name"])] = "keda"
    for hpa in rendered.of_kind("HorizontalPodAutoscaler"):
        assert hpa["spec"]["maxReplicas"] <= partitions
        key = (hpa["spec"]["scaleTargetRef"]["kind"], hpa["spec"]["scaleTargetRef"]["name"])
        assert key not in targets, "an HPA and a KEDA ScaledObject on the same workload"
        targets[key] = "hpa"
    if targets:
        assert "replicas" not in obj["spec"], "the autoscaler owns the replica count"
    else:
        assert obj["spec"]["replicas"] <= partitions


def test_statefulset_pod_name_is_the_group_instance_id(rendered: Rendered) -> None:
    obj = daemon_workload(rendered)
    env = containers_env(rendered, obj)[0][1]
    if obj["kind"] == "Deployment":
        assert "KRONOS_KAFKA__GROUP_INSTANCE_ID" not in env, "replicas of a Deployment would share the id"
        return
    assert env["KRONOS_KAFKA__GROUP_INSTANCE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    headless = rendered.one("Service", "-headless")
    assert obj["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None"


def test_selectors_match_the_pods(rendered: Rendered) -> None:
    daemon_labels = pod_labels(daemon_workload(rendered))
    for obj in rendered.objects:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            assert obj["spec"]["selector"]["matchLabels"].items() <= pod_labels(obj).items()
    for svc in rendered.of_kind("Service"):
        assert svc["spec"]["selector"].items() <= daemon_labels.items()
    for pdb in rendered.of_kind("PodDisruptionBudget"):
        assert pdb["spec"]["selector"]["matchLabels"].items() <= daemon_labels.items()


def test_helm_test_hook_runs_the_check(rendered: Rendered) -> None:
    pod = rendered.one("Pod", "-test-check")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    args = pod["spec"]["containers"][0]["args"]
    assert args[0] == "check" and args[1] == "--url"
    service = rendered.one("Service", "-metrics")
    assert args[2].startswith(f"http://{service['metadata']['name']}.")
    assert args[2].endswith(f":{service['spec']['ports'][0]['port']}/healthz")


def test_notes_render(helm: str, tmp_path: Path) -> None:
    """NOTES.txt renders for every case (`helm template` skips it: render it as a ConfigMap of a
    copy of the chart, since `helm install --dry-run` cannot be told the Kubernetes version)."""
    chart = tmp_path / "kronos-stream"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes_body.tpl").write_text(
        '{{- define "notes-body" -}}\n' + notes + "{{- end }}\n"
    )
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n"
        '{{ include "notes-body" . | indent 4 }}\n'
    )
    for case in CASES:
        args = template_args(case)
        args[2] = str(chart)
        proc = run_helm(helm, *args, "--show-only", "templates/zz-notes.yaml")
        assert proc.returncode == 0, proc.stderr
        text = yaml.safe_load(proc.stdout)["data"]["notes"]
        assert f"helm test {RELEASE}" in text and "kubectl" in text and "{{" not in text


# --- bad values ---------------------------------------------------------------------------------

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
BAD_VALUES = {
    "negative replicas": {"daemon": {"replicas": -1}},
    "unknown daemon mode": {"daemon": {"config": {"mode": "turbo"}}},
    "unknown workload kind": {"daemon": {"kind": "DaemonSet"}},
    "unknown autoscaling mode": {"autoscaling": {"mode": "both"}},
    "unknown storage type": {"storage": {"type": "nfs"}},
    "daemon gpu without the cuda image": {"daemon": {"gpu": 1}},
    "retrain gpu without the cuda image": {"retrain": {"gpu": 2}},
    "root allowed": {"securityContext": {"runAsNonRoot": False}},
    "writable root filesystem": {"securityContext": {"readOnlyRootFilesystem": False}},
    "no partitions": {"kafka": {"partitions": 0}},
    "unknown key": {"daemon": {"replica": 2}},
    "unknown producer codec": {"kafka": {"compressionType": "brotli"}},
    "unknown alert rule": {"metrics": {"prometheusRule": {"rules": {"lagg": {"enabled": True}}}}},
    "bad alert duration": {"metrics": {"prometheusRule": {"rules": {"consumerLag": {"for": "15 minutes"}}}}},
    "coverage nominal above 1": {"metrics": {"prometheusRule": {"rules": {"coverage": {"nominal": 80}}}}},
    "dashboard label not a string": {"metrics": {"grafanaDashboard": {"labels": {"grafana_dashboard": 1}}}},
    "a network peer that is no peer": {"networkPolicy": {"kafka": {"to": [{"cidr": "10.0.0.0/8"}]}}},
    "a port out of range": {"networkPolicy": {"redis": {"ports": [70000]}}},
    "unknown signing key": {"signing": {"key": "x"}},
    "an API port out of range": {"api": {"port": 70000}},
    "unknown API auth": {"api": {"auth": "basic"}},
    "an API rate of zero": {"api": {"ratePerSecond": 0}},
    "an API keys entry with a slash": {"api": {"keys": {"key": "a/b"}}},
}


def flatten_sets(tree: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += flatten_sets(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value) if not isinstance(value, str) else value}")
    return out


def test_schema_accepts_the_shipped_values() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    for case in CASES:
        jsonschema.Draft7Validator(SCHEMA).validate(chart_values(case))


@pytest.mark.parametrize("bad", list(BAD_VALUES), ids=list(BAD_VALUES))
def test_schema_rejects_bad_values(bad: str) -> None:
    values = deep_merge(chart_values(None), BAD_VALUES[bad])
    errors = list(jsonschema.Draft7Validator(SCHEMA).iter_errors(values))
    assert errors, f"the schema accepts {bad}"


@pytest.mark.parametrize("bad", list(BAD_VALUES), ids=list(BAD_VALUES))
def test_helm_refuses_bad_values(helm: str, bad: str) -> None:
    proc = run_helm(helm, *template_args(None, tuple(flatten_sets(BAD_VALUES[bad]))))
    assert proc.returncode != 0, f"helm renders {bad}"
    assert "schema" in proc.stderr, proc.stderr


def test_schema_enums_follow_the_settings() -> None:
    props = SCHEMA["properties"]
    modes = set(props["daemon"]["properties"]["config"]["properties"]["mode"]["enum"]) - {None}
    assert modes == literal_values(Settings.model_fields["mode"].annotation)
    kafka = props["kafka"]["properties"]
    protocols = set(kafka["securityProtocol"]["enum"])
    assert protocols == literal_values(KafkaSettings.model_fields["security_protocol"].annotation)
    mechanisms = set(kafka["sasl"]["properties"]["mechanism"]["enum"]) - {""}
    assert mechanisms == literal_values(KafkaSettings.model_fields["sasl_mechanism"].annotation)
    codecs = set(kafka["compressionType"]["enum"])
    assert codecs == literal_values(KafkaSettings.model_fields["compression_type"].annotation)


RENDER_FAILURES = {
    "grace period not above the shutdown bound": (
        None,
        ("daemon.terminationGracePeriodSeconds=25",),
        "must exceed daemon.gracefulShutdownSeconds",
    ),
    "more replicas than partitions": (None, ("daemon.replicas=13",), "exceeds kafka.partitions"),
    "KEDA above the partitions": ("keda-values", ("autoscaling.maxReplicas=25",), "exceeds kafka.partitions"),
    "HPA above the partitions": (
        None,
        ("autoscaling.mode=hpa", "autoscaling.maxReplicas=13"),
        "exceeds kafka.partitions",
    ),
    "a chart-managed variable in a config map": (
        None,
        ("daemon.config.graceful_shutdown_s=5",),
        "KRONOS_GRACEFUL_SHUTDOWN_S is set by the chart",
    ),
    "SASL without a Secret": (
        None,
        ("kafka.securityProtocol=SASL_SSL", "kafka.sasl.mechanism=PLAIN", "kafka.sasl.username=u"),
        "kafka.sasl.existingSecret is required",
    ),
    "object store without URLs": (
        None,
        ("storage.type=objectStore",),
        "is required with storage.type objectStore",
    ),
    "network policy without the brokers": (None, ("networkPolicy.enabled=true",), "networkPolicy.kafka.to is required"),
    "network policy without Redis": (
        None,
        ("networkPolicy.enabled=true", "networkPolicy.kafka.to[0].ipBlock.cidr=10.1.0.0/24"),
        "networkPolicy.redis.to is required",
    ),
    "API keys without a Secret": (None, ("api.enabled=true",), "api.keys.existingSecret is required"),
    "API on the ops port": (None, ("api.enabled=true", "api.auth=none", "api.port=8080"), "api.port must differ"),
    "network policy without the object store": (
        "secure-values", ("networkPolicy.objectStore.to=null",), "networkPolicy.objectStore.to is required"
    ),
}


@pytest.mark.parametrize("name", list(RENDER_FAILURES), ids=list(RENDER_FAILURES))
def test_render_refuses_inconsistent_values(helm: str, name: str) -> None:
    stem, sets, message = RENDER_FAILURES[name]
    case = next((c for c in CASES if c is not None and c.stem == stem), None)
    proc = run_helm(helm, *template_args(case, sets))
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_kafka_ca_file_is_a_mounted_secret(all_rendered: list[Rendered]) -> None:
    seen = 0
    for r in all_rendered:
        for obj in workloads(r):
            for spec in pod_specs(obj):
                secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
                for container in spec["containers"]:
                    env = dict(containers_env(r, obj)[spec["containers"].index(container)][1])
                    cafile = env.get("KRONOS_KAFKA__SSL_CAFILE")
                    if not cafile:
                        continue
                    seen += 1
                    mounts = [m for m in container["volumeMounts"] if cafile.startswith(m["mountPath"] + "/")]
                    assert mounts and mounts[0]["name"] in secrets, f"{cafile} is not on a Secret volume"
                    assert secrets[mounts[0]["name"]] == r.values["kafka"]["tls"]["caSecret"]
                    assert cafile.endswith("/" + r.values["kafka"]["tls"]["caKey"])
    assert seen, "some values file sets a Kafka CA"


def test_fixed_model_folders_instead_of_the_registry(helm: str) -> None:
    folders = (
        "daemon.model.tokenizerDir=/data/models/tokenizer",
        "daemon.model.predictorDir=/data/models/predictor",
    )
    r = render(helm, None, ("daemon.modelSource=dirs", *folders))
    env = env_of(r, "daemon")
    assert "KRONOS_MODEL__REGISTRY" not in env
    assert env["KRONOS_MODEL__TOKENIZER_DIR"] == "/data/models/tokenizer"
    assert env["KRONOS_MODEL__PREDICTOR_DIR"] == "/data/models/predictor"
    proc = run_helm(helm, *template_args(None, ("daemon.modelSource=dirs",)))
    assert proc.returncode != 0 and "daemon.model.tokenizerDir is required" in proc.stderr


# --- locked down: NetworkPolicy, TLS, ACL user, signing keys -------------------------------------


def test_no_network_policy_unless_enabled(all_rendered: list[Rendered]) -> None:
    for r in all_rendered:
        policies = r.of_kind("NetworkPolicy")
        assert bool(policies) == r.values["networkPolicy"]["enabled"], r.case
    assert any(r.of_kind("NetworkPolicy") for r in all_rendered), "some values file enables it"


def _policy_ports(rule: dict[str, Any]) -> set[int]:
    return {p["port"] for p in rule.get("ports") or []}


def test_network_policies_allow_only_what_each_pod_needs(all_rendered: list[Rendered]) -> None:
    for r in (r for r in all_rendered if r.values["networkPolicy"]["enabled"]):
        np_values = r.values["networkPolicy"]
        policies = {component(p): p for p in r.of_kind("NetworkPolicy")}
        assert set(policies) == {"daemon", "archiver", "retrain"}
        for comp, policy in policies.items():
            spec = policy["spec"]
            assert spec["policyTypes"] == ["Ingress", "Egress"]
            # the policy selects exactly that component's pods
            pods = [o for o in workloads(r) if component(o) == comp]
            assert pods and all(
                set(spec["podSelector"]["matchLabels"].items()) <= set(pod_labels(o).items()) for o in pods
            )
            # egress: the named services' peers and ports, then DNS, nothing else
            wanted = {"daemon": ["kafka", "redis"], "archiver": ["kafka"], "retrain": ["redis"]}[comp]
            if r.values["storage"]["type"] == "objectStore":
                wanted.append("objectStore")
            egress = spec["egress"]
            assert len(egress) == len(wanted) + 1 + len(np_values["extraEgress"])
            for rule, name in zip(egress, wanted, strict=False):
                assert rule["to"] == np_values[name]["to"] and rule.get("to"), (comp, name)
                assert _policy_ports(rule) == set(np_values[name]["ports"])
            assert _policy_ports(egress[len(wanted)]) == {53}
            # ingress: the daemons' ops port (and the API's port); the others none
            if comp == "daemon":
                rule, *api_rules = spec["ingress"]
                if r.values["api"]["enabled"]:
                    (api_rule,) = api_rules
                    assert _policy_ports(api_rule) == {r.values["api"]["port"]}
                    assert api_rule.get("from", []) == np_values["apiFrom"]
                else:
                    assert api_rules == []
                assert _policy_ports(rule) == {r.values["daemon"]["port"]}
                peers = rule.get("from", [])
                assert peers[: len(np_values["metricsFrom"])] == np_values["metricsFrom"]
                tests = [p for p in peers if p.get("podSelector", {}).get("matchLabels", {}).get(
                    "app.kubernetes.io/component") == "test"]  # fmt: skip
                test_pod = r.one("Pod", "test-check")
                assert tests and set(tests[0]["podSelector"]["matchLabels"].items()) <= set(pod_labels(test_pod).items())
            else:
                assert spec["ingress"] == []


def _mounted_file(r: Rendered, obj: dict[str, Any], path: str) -> str:
    """The Secret a file path of a pod's container lies on."""
    for spec in pod_specs(obj):
        secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
        for container in spec["containers"]:
            for m in container.get("volumeMounts") or []:
                if path.startswith(m["mountPath"] + "/") and m["name"] in secrets:
                    assert m.get("readOnly") is True
                    return secrets[m["name"]]
    raise AssertionError(f"{r.case}: {path} is on no Secret volume")


def test_redis_tls_acl_user_and_signing_keys_come_by_secret_reference(all_rendered: list[Rendered]) -> None:
    secure = [r for r in all_rendered if r.case == "secure-values"]
    assert secure, "the ci/secure-values.yaml case"
    for r in all_rendered:
        v = r.values
        daemon = daemon_workload(r)
        env = containers_env(r, daemon)[0][1]
        retrain = next(o for o in workloads(r) if component(o) == "retrain")
        train = containers_env(r, retrain)[0][1]
        if v["redis"]["tls"]["caSecret"]:
            assert _mounted_file(r, daemon, env["KRONOS_REDIS__SSL_CA_CERTS"]) == v["redis"]["tls"]["caSecret"]
            assert "ssl_ca_certs=/etc/kronos/redis-ca/" in train["KRONOS_TRAIN__REDIS_URL"]
        else:
            assert "KRONOS_REDIS__SSL_CA_CERTS" not in env
        assert env.get("KRONOS_REDIS__USERNAME") == (v["redis"]["username"] or None)
        public, private = v["signing"]["publicKeySecret"], v["signing"]["privateKeySecret"]
        if public:
            assert _mounted_file(r, daemon, env["KRONOS_MODEL__REGISTRY_PUBLIC_KEY"]) == public
        else:
            assert "KRONOS_MODEL__REGISTRY_PUBLIC_KEY" not in env
        if private:
            assert _mounted_file(r, retrain, train["KRONOS_TRAIN__SIGNING_KEY"]) == private
        # the private key is the retrain job's alone
        for obj in workloads(r):
            if component(obj) != "retrain":
                for spec in pod_specs(obj):
                    names = {v2["secret"]["secretName"] for v2 in spec.get("volumes", []) if "secret" in v2}
                    assert not private or private not in names, (r.case, component(obj))
    r = secure[0]
    train = containers_env(r, next(o for o in workloads(r) if component(o) == "retrain"))[0][1]
    publisher = r.values["redis"]["publisher"]
    assert train["KRONOS_TRAIN__REDIS_URL"].startswith(f"rediss://{publisher['username']}:$(REDIS_PASSWORD)@")
    assert train["REDIS_PASSWORD"]["secretKeyRef"]["name"] == publisher["existingSecret"]



# --- the HTTP API ----------------------------------------------------------------------------------


def test_api_port_is_exposed_and_its_keys_come_by_secret_reference(all_rendered: list[Rendered]) -> None:
    enabled = [r for r in all_rendered if r.values["api"]["enabled"]]
    assert enabled and any(r.values["api"]["auth"] == "keys" for r in enabled), "a values file serves the API with keys"
    for r in all_rendered:
        api = r.values["api"]
        daemon = daemon_workload(r)
        container, env = containers_env(r, daemon)[0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        services = [s for s in r.of_kind("Service") if s["metadata"]["name"].endswith("-api")]
        if not api["enabled"]:
            assert "api" not in ports and not services and not any(k.startswith("KRONOS_API__") for k in env)
            continue
        assert ports["api"] == api["port"] == int(env["KRONOS_API__PORT"]) != ports["http"]
        (service,) = services
        assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(api["port"], "api")]
        assert service["spec"]["selector"].items() <= pod_labels(daemon).items(), "the Service selects the daemons"
        assert env["KRONOS_API__AUTH"] == api["auth"]
        assert float(env["KRONOS_API__RATE_PER_S"]) == api["ratePerSecond"]
        if api["auth"] == "keys":
            keys_file = env["KRONOS_API__KEYS_FILE"]
            assert _mounted_file(r, daemon, keys_file) == api["keys"]["existingSecret"]
            assert keys_file.endswith("/" + api["keys"]["key"])
        else:
            assert "KRONOS_API__KEYS_FILE" not in env
        settings = _daemon_settings_of(env)
        assert settings.api.port == api["port"] and settings.api.auth == api["auth"]


def _daemon_settings_of(env: dict[str, Any]) -> Settings:
    """The daemon's settings from a rendered environment (references stand in as plain strings)."""
    from daemon.settings import load_settings

    values = {k: ("secret" if isinstance(v, dict) else str(v)) for k, v in env.items() if k.startswith("KRONOS_")}
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.upper().startswith("KRONOS_")}
    try:
        os.environ.update(values)
        return load_settings()
    finally:
        for k in values:
            os.environ.pop(k, None)
        os.environ.update(saved)
