"""The Helm chart, rendered by Helm's own engine: every manifest valid for Kubernetes 1.30 and 1.33,
hardened, wired to the operator's real command line, and each optional piece consistent with the rest."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import click
import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from kubemu.crvalidate import validate_custom_resource
from tests.chart.render import (
    CHART,
    FULLNAME,
    NAMESPACE,
    ROOT,
    VARIANTS,
    chart,
    crds,
    notes,
    only,
    render,
    render_variant,
)

K8S_VERSIONS = ["1.30.0", "1.33.0"]
# Kinds kubernetes-validate has no schema for (their CRDs are not part of Kubernetes); each one is
# checked below against a hand-written expectation or its own CRD instead.
CUSTOM_KINDS = {"ServiceMonitor", "KopfPeering", "ClusterKopfPeering"}


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    return dict(containers[0])


def env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(docs).get("env", [])}


# ---------------------------------------------------------------- Kubernetes schemas


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_manifest_validates_strictly(variant: str, version: str) -> None:
    docs = render_variant(variant)
    assert {"Deployment", "ClusterRole", "ClusterRoleBinding"} <= {d["kind"] for d in docs}
    errors = []
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{doc['kind']} {doc['metadata'].get('name')}: {error.path}: {error.message}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_crds_helm_installs_validate_strictly(version: str) -> None:
    documents = crds()
    assert {d["metadata"]["name"] for d in documents} == {
        "agentdeployments.tourniquet.dev",
        "agentincidents.tourniquet.dev",
        "agentregressioncases.tourniquet.dev",
        "agentdrills.tourniquet.dev",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    }
    for doc in documents:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_chart_ships_the_generated_crds() -> None:
    """crds/ is `tourniquet crds` output (test_crds checks it against the models); never hand-edited."""
    for path in sorted((CHART / "crds").glob("*.yaml")):
        assert path.read_text() == (ROOT / "crds" / path.name).read_text(), path.name


@pytest.mark.parametrize("kind", sorted(CUSTOM_KINDS))
def test_the_validator_really_has_no_schema_for_the_custom_kinds(kind: str) -> None:
    api_version = "monitoring.coreos.com/v1" if kind == "ServiceMonitor" else "kopf.dev/v1"
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate({"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}}, "1.33.0")


def test_a_broken_manifest_does_fail_validation() -> None:
    """The strict validation catches what a typo in a template would produce."""
    deployment = only(render({}), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError, match="imagePullPolcy"):
        kubernetes_validate.validate(deployment, "1.33.0", strict=True)


# ---------------------------------------------------------------- the operator's Deployment


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_operator_runs_hardened(variant: str) -> None:
    docs = render_variant(variant)
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    main = container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert main["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert {"cpu", "memory"} <= set(main["resources"]["requests"])
    assert {"cpu", "memory"} <= set(main["resources"]["limits"])
    assert {"name": "tmp", "mountPath": "/tmp"} in main["volumeMounts"]
    expected_account = "existing-account" if variant == "customised" else FULLNAME
    assert pod["serviceAccountName"] == expected_account


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_probes_hit_kopfs_liveness_endpoint(variant: str) -> None:
    docs = render_variant(variant)
    main = container(docs)
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    liveness = next(a for a in main["args"] if a.startswith("--liveness="))
    assert liveness == f"--liveness=http://0.0.0.0:{ports['probes']}/healthz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert main[probe]["httpGet"] == {"path": "/healthz", "port": "probes"}, probe


def parse_run(args: list[str]) -> dict[str, Any]:
    """The rendered arguments, parsed by the real `tourniquet run` command line (not run)."""
    from tourniquet.cli import main

    command = main.commands["run"]
    # Under the group's context, as the command line does: a context made without it would make Click cache a
    # help option without the group's `-h`.
    parent = click.Context(main, info_name="tourniquet", **main.context_settings)
    context = command.make_context("run", list(args), parent=parent)
    return dict(context.params)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_arguments_are_what_tourniquet_run_accepts(variant: str) -> None:
    values = VARIANTS[variant]
    docs = render_variant(variant)
    params = parse_run(container(docs)["args"])
    namespaces = values.get("watchNamespaces", [])
    assert list(params["namespaces"]) == namespaces
    assert params["all_namespaces"] is (not namespaces)
    assert params["peering"] == ("tourniquet" if values.get("replicas", 1) > 1 else None)
    assert params["verbose"] is bool(values.get("operator", {}).get("verbose"))
    assert params["log_format"] == values.get("operator", {}).get("logFormat", "text")


def test_one_replica_is_recreated_not_rolled() -> None:
    docs = render_variant("default")
    deployment = only(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "command" not in container(docs)  # the image's entrypoint: tourniquet run
    assert not [d for d in docs if d["kind"] in ("KopfPeering", "ClusterKopfPeering")]


@pytest.mark.parametrize("variant", ["ha", "ha-namespaced"])
def test_several_replicas_peer_with_distinct_priorities(variant: str, tmp_path: Path) -> None:
    docs = render_variant(variant)
    deployment = only(docs, "Deployment")
    assert deployment["spec"]["replicas"] > 1
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    main = container(docs)
    assert env(docs)["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # Run the rendered command with a stand-in `tourniquet` that prints its arguments: each pod gets an
    # integer priority of its own, and the arguments reach `tourniquet run` intact.
    fake = tmp_path / "tourniquet"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    priorities = set()
    for pod in (f"{FULLNAME}-5d9c7b8f4-x2k9q", f"{FULLNAME}-5d9c7b8f4-7hq4z", f"{FULLNAME}-6f8b9c4d7-x2k9q"):
        result = subprocess.run(
            [*main["command"], *main["args"]],
            env={"PATH": f"{tmp_path}:{os.environ['PATH']}", "POD_NAME": pod},
            capture_output=True,
            text=True,
            check=True,
        )
        argv = result.stdout.splitlines()
        assert argv[0] == "run"
        params = parse_run(argv[1:])
        assert params["peering"] == "tourniquet"
        assert params["priority"] > 0
        priorities.add(params["priority"])
    assert len(priorities) == 3


def test_one_cluster_peering_object_when_serving_every_namespace() -> None:
    docs = render_variant("ha")
    peering = only(docs, "ClusterKopfPeering")
    assert peering["apiVersion"] == "kopf.dev/v1"
    assert peering["metadata"]["name"] == "tourniquet"
    assert "namespace" not in peering["metadata"]
    assert not [d for d in docs if d["kind"] == "KopfPeering"]
    assert validate_custom_resource(_peering_schema("ClusterKopfPeering"), peering, strict=True) == []


def test_one_peering_object_per_watched_namespace() -> None:
    docs = render_variant("ha-namespaced")
    peerings = [d for d in docs if d["kind"] == "KopfPeering"]
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["payments", "support"]
    assert {p["metadata"]["name"] for p in peerings} == {"tourniquet"}
    for peering in peerings:
        assert peering["apiVersion"] == "kopf.dev/v1"
        assert validate_custom_resource(_peering_schema("KopfPeering"), peering, strict=True) == []
    assert not [d for d in docs if d["kind"] == "ClusterKopfPeering"]


def _peering_schema(kind: str) -> dict[str, Any]:
    crd = next(d for d in crds() if d["spec"]["names"]["kind"] == kind)
    assert crd["spec"]["group"] == "kopf.dev"
    assert crd["spec"]["scope"] == ("Cluster" if kind.startswith("Cluster") else "Namespaced")
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_the_peering_crds_come_from_a_subchart_crds_directory() -> None:
    """Helm installs crds/ before the templates (so the peering objects can be created in the same
    install), skips a CRD that already exists (another Kopf operator's) and never deletes it."""
    assert [d["name"] for d in chart().dependencies] == ["kopf-peering"]
    names = [entry["name"] for entry in chart().crds]
    assert "crds/kopf.dev_peerings.yaml" in names


# ---------------------------------------------------------------- detection and observability wiring


def test_detection_settings_reach_the_operator() -> None:
    docs = render_variant("observability")
    variables = env(docs)
    assert variables["TOURNIQUET_PROMETHEUS_URL"] == "http://prometheus-operated.monitoring.svc:9090"
    # The token is a file from the Secret (the receiver re-reads it: rotation needs no restart).
    assert variables["TOURNIQUET_RECEIVER_TOKEN_FILE"] == "/etc/tourniquet/receiver/token"
    assert "TOURNIQUET_RECEIVER_TOKEN" not in variables
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "receiver-token")
    assert volume["secret"] == {"secretName": "tourniquet-receiver", "items": [{"key": "token", "path": "token"}]}
    mount = next(m for m in container(docs)["volumeMounts"] if m["name"] == "receiver-token")
    assert mount == {"name": "receiver-token", "mountPath": "/etc/tourniquet/receiver", "readOnly": True}
    ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    assert variables["TOURNIQUET_HTTP_PORT"] == str(ports["http"]) == "9090"


def test_no_detection_settings_no_variables() -> None:
    docs = render_variant("default")
    variables = env(docs)
    assert "TOURNIQUET_PROMETHEUS_URL" not in variables
    assert "TOURNIQUET_RECEIVER_TOKEN_FILE" not in variables
    assert [v["name"] for v in only(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]] == ["tmp"]


def test_the_http_port_moves_together() -> None:
    docs = render({"http": {"port": 9191}, "service": {"enabled": True, "port": 80}})
    assert env(docs)["TOURNIQUET_HTTP_PORT"] == "9191"
    assert {"name": "http", "containerPort": 9191, "protocol": "TCP"} in container(docs)["ports"]
    assert only(docs, "Service")["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]


def test_the_receiver_service_selects_the_operator_pods() -> None:
    docs = render_variant("observability")
    service = only(docs, "Service")
    pod_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port_names = {p["name"] for p in container(docs)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names


# The Prometheus Operator's duration format.
DURATION = "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
# A minimal hand-written expectation for a monitoring.coreos.com/v1 ServiceMonitor (the fields the chart
# sets, with the types the Prometheus Operator's CRD gives them; nothing else allowed).
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                        },
                    },
                },
            },
        },
    },
}


def test_the_service_monitor_scrapes_the_operators_metrics() -> None:
    docs = render_variant("observability")
    monitor = only(docs, "ServiceMonitor")
    jsonschema.validate(monitor, SERVICE_MONITOR)
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = only(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("http", "/metrics")]
    assert {p["name"] for p in service["spec"]["ports"]} == {"http"}


def test_the_service_monitor_expectation_refuses_a_typo() -> None:
    monitor = only(render_variant("observability"), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        jsonschema.validate(monitor, SERVICE_MONITOR)


def test_a_service_monitor_brings_its_service() -> None:
    docs = render({"serviceMonitor": {"enabled": True}})
    assert only(docs, "Service") and only(docs, "ServiceMonitor")
    assert not [d for d in render_variant("default") if d["kind"] in ("Service", "ServiceMonitor")]


def _dashboard() -> tuple[dict[str, Any], dict[str, Any]]:
    configmap = next(d for d in render_variant("observability") if d["metadata"]["name"].endswith("-dashboard"))
    return configmap, json.loads(configmap["data"]["tourniquet.json"])


def test_the_grafana_dashboard_is_loaded_by_the_sidecar() -> None:
    configmap, dashboard = _dashboard()
    assert configmap["kind"] == "ConfigMap"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Operators"}
    assert dashboard["uid"] == "tourniquet-operator"
    assert dashboard == json.loads((CHART / "dashboards" / "tourniquet.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


OBSERVABILITY = ROOT / "operator" / "tourniquet" / "observability.py"
REVIEW_METRICS = ROOT / "operator" / "tourniquet" / "review_metrics.py"
# Labels Prometheus adds on scrape, and the histogram bucket label.
SCRAPE_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint", "le"}


def operator_metrics() -> dict[str, set[str]]:
    """The series observability.py and review_metrics.py export -> their label names (Counter "x" is exported as
    x_total)."""
    exported: dict[str, set[str]] = {}
    trees = [ast.parse(path.read_text()) for path in (OBSERVABILITY, REVIEW_METRICS)]
    for node in (n for tree in trees for n in ast.walk(tree)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        if node.func.id not in ("Counter", "Gauge", "Histogram", "Summary", "GaugeMetricFamily") or not node.args:
            continue
        name = ast.literal_eval(node.args[0])
        labels_node = (
            node.args[2]
            if len(node.args) > 2
            else next((k.value for k in node.keywords if k.arg in ("labelnames", "labels")), None)
        )
        labels = set(ast.literal_eval(labels_node)) if labels_node is not None else set()
        if node.func.id == "Counter":
            exported[name.removesuffix("_total") + "_total"] = labels
        elif node.func.id in ("Histogram", "Summary"):
            for suffix in ("_bucket", "_count", "_sum"):
                exported[name + suffix] = labels
        else:
            exported[name] = labels
    return exported


def test_the_dashboard_reads_the_operators_metrics() -> None:
    """Every series the dashboard queries is one the operator exports, grouped by labels it has; and
    every metric the operator exports is on the dashboard."""
    exported = operator_metrics()
    _, dashboard = _dashboard()
    problems, shown = [], set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            series = set(re.findall(r"\btourniquet_[a-z_]+", expr))
            shown |= series
            problems += [f"{panel['title']}: the operator exports no {s}" for s in series - set(exported)]
            labels = set().union(*(exported.get(s, set()) for s in series)) | SCRAPE_LABELS
            for group in re.findall(r"\bby \(([^)]*)\)", expr):
                used = {label.strip() for label in group.split(",")}
                problems += [f"{panel['title']}: {s} has no label {label}" for label in used - labels for s in series]
            for label in re.findall(r"[{,]\s*([a-z_]+)\s*[!=]~?", expr):
                if label not in labels:
                    problems.append(f"{panel['title']}: no series in {sorted(series)} has the label {label}")
    metrics = {re.sub(r"_(bucket|count|sum)$", "", s) for s in exported}
    problems += [f"{m} is not on the dashboard" for m in sorted(metrics) if not any(s.startswith(m) for s in shown)]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- values, lint, notes


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicas": -1}, "/replicas"),
        ({"watchNamespaces": "payments"}, "/watchNamespaces"),
        ({"watchNamespaces": ["Payments_Team"]}, "/watchNamespaces/0"),
        ({"replica": 2}, "additional properties 'replica'"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"serviceMonitor": {"interval": "30"}}, "/serviceMonitor/interval"),
        ({"detection": {"prometheusUrl": "prometheus:9090"}}, "/detection/prometheusUrl"),
        ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory"),
        ({"http": {"port": 70000}}, "/http/port"),
        ({"operator": {"logFormat": "yaml"}}, "/operator/logFormat"),
    ],
)
def test_values_schema_refuses_mistakes(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(complaint)):
        render(values)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_values_schema_accepts_the_variants(variant: str) -> None:
    chart().validate_schema(VARIANTS[variant])


def test_values_schema_covers_every_default() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(values) <= set(schema["properties"])
    chart().validate_schema({})


@pytest.mark.parametrize("version", ["v1.30.0", "v1.33.0"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_is_clean(variant: str, version: str) -> None:
    report = helm.lint(
        str(CHART), VARIANTS[variant], strict=True, with_subcharts=True, namespace=NAMESPACE, kube_version=version
    )
    findings = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors; not info
    assert report["errors"] == [] and findings == []


def test_notes_say_what_is_served_and_that_crds_stay() -> None:
    text = notes(VARIANTS["ha-namespaced"])
    assert "serving namespaces payments, support" in text
    assert "3 replicas elect the active operator" in text
    assert "keeps them" in text
    assert "serving every namespace" in notes({})


def test_the_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    undocumented = [key for key in values if f"`{key}" not in readme]
    assert not undocumented, f"charts/tourniquet/README.md does not mention {undocumented}"
