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


def test_openapi_v3_follows_the_crds_so_kubectls_cache_does_too(http: Any, widget_crd: dict[str, Any]) -> None:
    assert "apis/example.dev/v1" not in http.get("/openapi/v3")[1]["paths"]
    http.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", widget_crd)
    index = http.get("/openapi/v3")[1]["paths"]
    assert {"api/v1", "apis/apps/v1", "apis/example.dev/v1"} <= set(index)
    url = index["apis/example.dev/v1"]["serverRelativeURL"]
    status, document, _ = http.get(url)
    assert status == 200
    patch = document["paths"]["/apis/example.dev/v1/namespaces/{namespace}/widgets/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {"group": "example.dev", "version": "v1", "kind": "Widget"}
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]  # kubectl leaves validation to us
    schema = document["components"]["schemas"]["dev.example.v1.Widget"]
    assert "model" in schema["properties"]["spec"]["properties"]

    # A changed CRD is a changed document under another URL: a client's cached copy is not reused.
    _, crd, _ = http.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.dev")
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["colour"] = {
        "type": "string"
    }
    http.put("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.dev", crd)
    assert http.get("/openapi/v3")[1]["paths"]["apis/example.dev/v1"]["serverRelativeURL"] != url
    assert http.get("/openapi/v3/apis/nothing.dev/v1")[0] == 404
