"""Render charts/tourniquet the way `helm template` does, with Helm's own engine and no helm binary.

helm-python-sdk binds Helm's Go SDK (v4) through ctypes, so this is Helm's real chart loader, values
coalescing, values.schema.json validation, template engine (Go text/template, sprig, include, tpl,
.Files, .Capabilities) and linter, not a re-implementation. What it cannot do offline is listed in
charts/tourniquet/README.md ("What the tests cover").
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tourniquet"
RELEASE = "tq"
NAMESPACE = "tourniquet-system"
FULLNAME = f"{RELEASE}-tourniquet"

# The variants every test renders. Each one is a values override a platform team would plausibly use.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"watchNamespaces": ["payments", "support"]},
    "ha": {"replicas": 2},
    "ha-namespaced": {"replicas": 3, "watchNamespaces": ["payments", "support"]},
    "ledger": {
        "watchNamespaces": ["support"],
        "ledger": {"secretNames": ["refund-ledger", "pricing-ledger"], "defaultSecret": {"name": "agents-ledger"}},
    },
    "observability": {
        "service": {"enabled": True},
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Operators"}},
        "detection": {
            "prometheusUrl": "http://prometheus-operated.monitoring.svc:9090",
            "receiver": {"tokenSecret": {"name": "tourniquet-receiver", "key": "token"}},
        },
    },
    "customised": {
        "fullnameOverride": "incident-operator",
        "image": {"digest": "sha256:" + "ab" * 32},
        "imagePullSecrets": [{"name": "registry"}],
        "serviceAccount": {"create": False, "name": "existing-account"},
        "rbac": {"oncall": {"create": False}},
        "operator": {
            "verbose": True,
            "logFormat": "json",
            "extraArgs": ["--priority=5"],
            "extraEnv": [{"name": "TOURNIQUET_PROMETHEUS_TOKEN_FILE", "value": "/etc/prometheus-token/token"}],
        },
        "extraVolumes": [{"name": "prometheus-token", "secret": {"secretName": "prometheus-token"}}],
        "extraVolumeMounts": [{"name": "prometheus-token", "mountPath": "/etc/prometheus-token", "readOnly": True}],
        "priorityClassName": "system-cluster-critical",
        "podAnnotations": {"example.com/team": "platform"},
        "podLabels": {"team": "platform"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}
                    ]
                }
            }
        },
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "tourniquet"}},
            }
        ],
    },
}


@functools.cache
def chart() -> helm.Chart:
    return helm.Chart.load(str(CHART))


@functools.cache
def _rendered(key: str) -> tuple[tuple[str, str], ...]:
    values = VARIANTS[key]
    return tuple(sorted(chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True).items()))


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifests `helm template` would print for these values (NOTES.txt left out)."""
    manifests = chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return list(_documents(sorted(manifests.items())))


def render_variant(name: str) -> list[dict[str, Any]]:
    return list(_documents(_rendered(name)))


def _documents(manifests: Any) -> Iterator[dict[str, Any]]:
    for path, text in manifests:
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {})
                yield doc


def notes(values: dict[str, Any]) -> str:
    manifests = chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def crds() -> list[dict[str, Any]]:
    """What `helm install` applies from crds/ (the chart's and its subcharts') before the templates."""
    return [doc for entry in chart().crds for doc in yaml.safe_load_all(entry["data"]) if doc]


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]
