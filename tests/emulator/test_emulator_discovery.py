"""API discovery, as kubectl, the kubernetes client and Kopf read it."""

from __future__ import annotations

from typing import Any

import kubernetes
import pytest


def test_version_reports_a_current_kubernetes(http: Any) -> None:
    _, version, _ = http.get("/version")
    assert version["gitVersion"].startswith("v1.33.")
    assert (version["major"], version["minor"]) == ("1", "33")


@pytest.mark.parametrize("path", ["/api", "/api/"])
def test_core_api_versions(http: Any, path: str) -> None:
    _, body, _ = http.get(path)
    assert body["kind"] == "APIVersions" and body["versions"] == ["v1"]


@pytest.mark.parametrize("path", ["/api/v1", "/api/v1/"])
def test_core_resources_use_group_version_v1(http: Any, path: str) -> None:
    _, body, _ = http.get(path)
    assert body["groupVersion"] == "v1"  # not "/v1": kubectl could not map cm/ns otherwise
    by_name = {r["name"]: r for r in body["resources"]}
    assert by_name["configmaps"]["shortNames"] == ["cm"]
    assert by_name["namespaces"]["namespaced"] is False
    assert by_name["namespaces/status"]["verbs"] == ["get", "patch", "update"]


@pytest.mark.parametrize("path", ["/apis", "/apis/"])
def test_groups_have_a_stable_preferred_version(http: Any, path: str) -> None:
    groups = {g["name"]: g for g in http.get(path)[1]["groups"]}
    assert groups["apps"]["preferredVersion"]["groupVersion"] == "apps/v1"
    assert groups["autoscaling"]["preferredVersion"]["version"] == "v2"  # GA, highest first
    assert [v["version"] for v in groups["autoscaling"]["versions"]] == ["v2", "v1"]


@pytest.mark.parametrize("path", ["/apis/apps/v1", "/apis/apps/v1/"])
def test_group_version_resources(http: Any, path: str) -> None:
    by_name = {r["name"]: r for r in http.get(path)[1]["resources"]}
    assert by_name["deployments"]["kind"] == "Deployment"
    assert by_name["deployments/scale"] == {
        "name": "deployments/scale",
        "singularName": "",
        "namespaced": True,
        "group": "autoscaling",
        "version": "v1",
        "kind": "Scale",
        "verbs": ["get", "patch", "update"],
    }


def test_unknown_groups_are_404(http: Any) -> None:
    assert http.get("/apis/nowhere.dev")[0] == 404
    assert http.get("/apis/apps/v9")[0] == 404


def test_health_and_root_paths(http: Any) -> None:
    assert http.get("/healthz")[1] == "ok"
    assert "/apis/apps/v1" in http.get("/")[1]["paths"]


def test_kubernetes_client_discovery(kube_client: Any) -> None:
    groups = kubernetes.client.ApisApi(kube_client).get_api_versions()
    assert "networking.k8s.io" in {g.name for g in groups.groups}
    resources = kubernetes.client.AppsV1Api(kube_client).get_api_resources()
    assert "statefulsets/scale" in {r.name for r in resources.resources}
