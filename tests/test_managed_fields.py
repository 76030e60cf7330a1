"""Who wrote a field: `metadata.managedFields` as the real API server keeps them (the drift message names the
manager that scaled a drained consumer), and the emulator alike."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.conftest import DEPLOY, project_kubectl
from tourniquet.adapters.kube import DEPLOYMENTS, KubeApi


def deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "main", "image": "w:1"}]}},
        },
    }


def writers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    """The managedFields entries of the test's writers: not the Deployment controller's (on the real control
    plane it writes the status, and the revision annotation, whenever it gets to it)."""
    return [e for e in workload["metadata"].get("managedFields") or [] if e["manager"] != "kube-controller-manager"]


def owners_of_replicas(workload: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(manager, operation, subresource) of every entry that owns spec.replicas."""
    return [
        (entry["manager"], entry["operation"], entry.get("subresource", ""))
        for entry in writers(workload)
        if "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})
    ]


def kubectl(kubeconfig: str, namespace: str, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [project_kubectl(), f"--kubeconfig={kubeconfig}", "-n", namespace, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_managed_fields_name_the_last_writer_of_a_field(cluster: Any, kube: KubeApi, kubeconfig: str) -> None:
    namespace = cluster.namespace
    person = str(cluster.plane.admin_kubeconfig) if cluster.backend == "real" else kubeconfig
    kubectl(person, namespace, "create", "-f", "-", stdin=json.dumps(deployment("web", 2)))
    created = cluster.get(DEPLOY, "web", namespace)
    (entry,) = writers(created)
    assert (entry["manager"], entry["operation"], entry["apiVersion"]) == ("kubectl-create", "Update", "apps/v1")
    assert entry["fieldsType"] == "FieldsV1" and entry["time"].endswith("Z")
    assert "f:labels" in entry["fieldsV1"]["f:metadata"] and "f:template" in entry["fieldsV1"]["f:spec"]
    assert owners_of_replicas(created) == [("kubectl-create", "Update", "")]

    # The operator drains it: the field moves to the operator's entry.
    drained = await kube.patch(DEPLOYMENTS, namespace, "web", {"spec": {"replicas": 0}})
    print(json.dumps(drained["metadata"]["managedFields"], indent=1))
    assert owners_of_replicas(drained) == [("tourniquet", "Update", "")]
    creator = next(e for e in writers(drained) if e["manager"] == "kubectl-create")
    assert "f:template" in creator["fieldsV1"]["f:spec"], "the fields nobody else wrote stay the creator's"

    # kubectl scale writes /scale: the field moves to kubectl's entry for that subresource, and the
    # operator's entry, which owned nothing else, goes.
    kubectl(person, namespace, "scale", "deployment/web", "--replicas=3")
    scaled = cluster.get(DEPLOY, "web", namespace)
    assert scaled["spec"]["replicas"] == 3
    assert owners_of_replicas(scaled) == [("kubectl", "Update", "scale")]
    assert sorted(e["manager"] for e in writers(scaled)) == ["kubectl", "kubectl-create"]

    # A write that changes nothing leaves them alone.
    again = await kube.patch(DEPLOYMENTS, namespace, "web", {"spec": {"replicas": 3}})
    assert writers(again) == writers(scaled)
