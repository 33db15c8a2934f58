"""The Kubernetes manifests: valid against the Kubernetes schemas, and consistent with the code.

The schemas come with kubernetes-validate (offline). The rest checks what a
schema cannot: that every command line parses with this CLI, that probes ask
paths the endpoints serve on ports the containers open, that selectors
select, that no password is written into a manifest, and that no readiness
probe is leader-only (which would stall rolling updates).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from coordinator import Coordinator, CoordinatorConfig
from coordinator.cli import build_parser
from coordinator.cli._settings import config_settings, resolve_settings
from coordinator.integrations.http import http_app

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
#: Native sidecars (restartPolicy: Always on an init container) need 1.29; and the newest known.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
COORDINATOR_IMAGE = "registry.example.com/pg-coordinator:"
MOUNT = "/coordinator"  # where deployment-library.yaml's app mounts the endpoints
ENDPOINTS = {route.path for route in http_app(Coordinator("postgresql://x/y")).routes}


def documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(DEPLOY.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            assert isinstance(document, dict), path.name
            yield path.name, document


def manifest(name: str) -> dict[str, Any]:
    (document,) = [d for file, d in documents() if file == name]
    return document


#: Kinds of the Prometheus Operator: no Kubernetes schema knows them; checked below instead.
OPERATOR_KINDS = {"PodMonitor"}


def resources() -> list[tuple[str, dict[str, Any]]]:
    """The Kubernetes resources, less the Operator's kinds."""
    return [(f, d) for f, d in documents() if d["kind"] not in {"Kustomization", *OPERATOR_KINDS}]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for file, document in resources():
        if document["kind"] in ("Deployment", "Job"):
            yield file, document["spec"]["template"]["spec"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version: str) -> None:
    checked = [file for file, document in resources()]
    for file, document in resources():
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{file} ({document['kind']}) is invalid in Kubernetes {version}: {error}")
    kinds = sorted(d["kind"] for _, d in resources())
    assert kinds == sorted(
        [
            "ConfigMap",
            "Job",
            "Deployment",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "NetworkPolicy",
        ]
    ), checked


def test_kustomization_lists_one_deployment_variant_and_everything_else() -> None:
    listed = manifest("kustomization.yaml")["resources"]
    files = {path.name for path in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == files - {"deployment-sidecar.yaml", "podmonitor.yaml"}


def test_every_coordinator_command_line_parses_and_its_settings_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each coordinator container's args and environment, resolved as the container would."""
    config_map = manifest("configmap.yaml")["data"]
    seen = set()
    for _file, pod in pod_specs():
        mounts = {v["name"]: v["configMap"]["name"] for v in pod.get("volumes", [])}
        for container in containers(pod):
            if not container["image"].startswith(COORDINATOR_IMAGE):
                continue
            for variable in container.get("env", []):
                value = variable.get("value", "placeholder-from-a-secret")
                monkeypatch.setenv(variable["name"], value)
            for mount in container.get("volumeMounts", []):
                assert mounts[mount["name"]] == manifest("configmap.yaml")["metadata"]["name"]
                (name,) = config_map
                (tmp_path / name).write_text(config_map[name])
                monkeypatch.setenv("COORDINATOR_CONFIG", str(tmp_path / name))
            args = build_parser().parse_args(container["args"])
            resolve_settings(args)
            seen.add(args.command)
            if args.command == "run":
                CoordinatorConfig(**config_settings(vars(args)))
                ports = {p["name"]: p["containerPort"] for p in container["ports"]}
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    assert ports[container[probe]["httpGet"]["port"]] == args.http.port
            for variable in container.get("env", []):
                monkeypatch.delenv(variable["name"])
            monkeypatch.delenv("COORDINATOR_CONFIG", raising=False)
    assert seen == {"migrate", "grant", "run"}


def coordinator_probes() -> Iterator[tuple[str, dict[str, Any], str, dict[str, Any]]]:
    """(file, container, kind, httpGet) of every probe that asks the coordinator's endpoints."""
    for file, pod in pod_specs():
        for container in containers(pod):
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                get = container.get(kind, {}).get("httpGet")
                if get is None:
                    continue
                if container["image"].startswith(COORDINATOR_IMAGE) or get["path"].startswith(
                    MOUNT + "/"
                ):
                    yield file, container, kind, get


def test_probes_ask_endpoints_that_exist_and_no_readiness_is_leader_only() -> None:
    """Liveness asks /livez; readiness and startup ask /readyz, whose policy is member."""
    expected = {"livenessProbe": "/livez", "readinessProbe": "/readyz", "startupProbe": "/readyz"}
    probes = list(coordinator_probes())
    assert len(probes) == 6  # startup, liveness and readiness in each variant
    for file, container, kind, get in probes:
        path = get["path"].removeprefix(MOUNT)
        assert path == expected[kind], (file, container["name"], kind)
        assert path in ENDPOINTS
        assert get["port"] in {port["name"] for port in container["ports"]}
    config = tomllib.loads(manifest("configmap.yaml")["data"]["coordinator.toml"])
    assert config["ready_when"] == "member"


def test_selectors_select_the_pods() -> None:
    labels = {}
    for file, document in resources():
        if document["kind"] == "Deployment":
            spec = document["spec"]
            labels[file] = spec["template"]["metadata"]["labels"]
            assert spec["selector"]["matchLabels"].items() <= labels[file].items()
    for name in ("service.yaml", "pdb.yaml"):
        document = manifest(name)
        selector = document["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        for pod_labels in labels.values():
            assert selector.items() <= pod_labels.items(), name


def test_no_password_is_written_into_a_manifest() -> None:
    for file, pod in pod_specs():
        for container in containers(pod):
            for variable in container.get("env", []):
                if "value" in variable and "://" in variable["value"]:
                    assert urlsplit(variable["value"]).password is None, (file, variable)
                if "PASSWORD" in variable["name"]:
                    assert "secretKeyRef" in variable["valueFrom"], (file, variable)


def test_pods_run_unprivileged_without_kubernetes_api_access() -> None:
    for file, pod in pod_specs():
        assert pod["automountServiceAccountToken"] is False, file
        assert pod["securityContext"]["runAsNonRoot"] is True, file
        for container in containers(pod):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, (file, container["name"])
            assert context["capabilities"]["drop"] == ["ALL"], (file, container["name"])


def test_migrate_job_grants_the_role_the_application_logs_in_as() -> None:
    job = manifest("migrate-job.yaml")["spec"]["template"]["spec"]
    (grant,) = job["containers"]
    args = build_parser().parse_args(grant["args"])
    environment = {v["name"]: v for v in grant["env"]}
    assert "secretKeyRef" in environment[args.password_env]["valueFrom"]
    for file, pod in pod_specs():
        for container in containers(pod):
            for variable in container.get("env", []):
                if variable["name"] == "COORDINATOR_DSN" and file != "migrate-job.yaml":
                    assert urlsplit(variable["value"]).username == args.role, file


def pod_labels() -> dict[str, dict[str, str]]:
    return {
        file: document["spec"]["template"]["metadata"]["labels"]
        for file, document in resources()
        if document["kind"] == "Deployment"
    }


def test_replicas_spread_over_nodes_and_zones() -> None:
    """No node or zone holds every candidate: a node's failure leaves a follower to take over."""
    for file, document in resources():
        if document["kind"] != "Deployment":
            continue
        template = document["spec"]["template"]
        spread = {c["topologyKey"]: c for c in template["spec"]["topologySpreadConstraints"]}
        assert set(spread) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}, file
        assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
        for constraint in spread.values():
            selector = constraint["labelSelector"]["matchLabels"]
            assert selector.items() <= template["metadata"]["labels"].items(), file


def test_network_policy_opens_the_ports_the_pods_serve_and_reaches_the_database() -> None:
    policy = manifest("networkpolicy.yaml")["spec"]
    for labels in pod_labels().values():
        assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    named = {
        port["name"]
        for _file, pod in pod_specs()
        for container in containers(pod)
        for port in container.get("ports", [])
    }
    opened = {port["port"] for rule in policy["ingress"] for port in rule["ports"]}
    assert opened == {"http", "coordinator"} <= named
    reached = {port["port"] for rule in policy["egress"] for port in rule["ports"]}
    dsn_ports = {
        urlsplit(variable["value"]).port
        for _file, pod in pod_specs()
        for container in containers(pod)
        for variable in container.get("env", [])
        if variable["name"] == "COORDINATOR_DSN"
    }
    assert dsn_ports <= reached
    assert 53 in reached


def test_pod_monitor_scrapes_metrics_where_each_variant_serves_them() -> None:
    monitor = manifest("podmonitor.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    for labels in pod_labels().values():
        assert spec["selector"]["matchLabels"].items() <= labels.items()
    ports = {}
    for file, pod in pod_specs():
        for container in containers(pod):
            for port in container.get("ports", []):
                ports.setdefault(port["name"], set()).add(file)
    scraped = {endpoint["port"]: endpoint["path"] for endpoint in spec["podMetricsEndpoints"]}
    assert scraped == {"http": MOUNT + "/metrics", "coordinator": "/metrics"}
    assert "/metrics" in ENDPOINTS
    assert ports["http"] >= {"deployment-library.yaml"}
    assert ports["coordinator"] == {"deployment-sidecar.yaml"}


def test_the_migrate_job_runs_before_each_release_under_helm_and_argo_cd() -> None:
    annotations = manifest("migrate-job.yaml")["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    assert annotations["argocd.argoproj.io/hook"] == "PreSync"
    assert annotations["argocd.argoproj.io/hook-delete-policy"] == "BeforeHookCreation"
