"""CRDs register themselves; their custom resources are pruned, defaulted and validated (schema + CEL)."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes
import pytest
import yaml

from kubemu.server import ApiServerThread

CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
WIDGETS = "/apis/example.dev/v1/namespaces/default/widgets"


@pytest.fixture()
def registered(http: Any, widget_crd: dict[str, Any]) -> dict[str, Any]:
    status, crd, _ = http.post(CRDS, yaml.safe_dump(widget_crd).encode(), content_type="application/yaml")
    assert status == 201, crd
    return crd


def test_posted_crd_is_established_and_discoverable(http: Any, registered: dict[str, Any]) -> None:
    conditions = {c["type"]: c["status"] for c in registered["status"]["conditions"]}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    assert registered["status"]["acceptedNames"]["kind"] == "Widget"
    assert registered["status"]["acceptedNames"]["listKind"] == "WidgetList"
    assert registered["metadata"]["generation"] == 1

    _, groups, _ = http.get("/apis")
    assert {
        "name": "example.dev",
        "versions": [{"groupVersion": "example.dev/v1", "version": "v1"}],
        "preferredVersion": {"groupVersion": "example.dev/v1", "version": "v1"},
    } in groups["groups"]
    _, resources, _ = http.get("/apis/example.dev/v1")
    by_name = {r["name"]: r for r in resources["resources"]}
    assert set(by_name) == {"widgets", "widgets/status", "widgets/scale"}
    assert by_name["widgets"]["kind"] == "Widget" and by_name["widgets"]["namespaced"] is True
    assert by_name["widgets"]["singularName"] == "widget"
    assert by_name["widgets"]["shortNames"] == ["wd"] and by_name["widgets"]["categories"] == ["all"]
    assert {"list", "watch", "patch"} <= set(by_name["widgets"]["verbs"])
    assert by_name["widgets/scale"]["kind"] == "Scale"


def test_cel_rule_violation_is_422_with_the_rule_message(
    http: Any, registered: dict[str, Any], make_widget: Any
) -> None:
    bad = make_widget("w1")
    bad["spec"]["model"]["version"] = "latest"
    status, body, _ = http.post(WIDGETS, bad)
    assert status == 422
    assert body["reason"] == "Invalid"
    assert body["message"] == (
        'Widget.example.dev "w1" is invalid: spec.model.version: Invalid value: "latest": '
        "pin an exact model version; a floating version makes rollback impossible"
    )
    assert body["details"] == {
        "name": "w1",
        "group": "example.dev",
        "kind": "Widget",
        "causes": [
            {
                "reason": "FieldValueInvalid",
                "field": "spec.model.version",
                "message": 'Invalid value: "latest": pin an exact model version; '
                "a floating version makes rollback impossible",
            }
        ],
    }
    assert http.get(f"{WIDGETS}/w1")[0] == 404


def test_all_schema_errors_are_reported_together(
    http: Any, registered: dict[str, Any], make_widget: Any
) -> None:
    bad = make_widget("w1", size=11, scaleMode="sideways", consumers=[{}])
    status, body, _ = http.post(WIDGETS, bad)
    assert status == 422
    assert body["message"].startswith('Widget.example.dev "w1" is invalid: [')
    fields = [cause["field"] for cause in body["details"]["causes"]]
    assert set(fields[:-1]) == {"spec.size", "spec.scaleMode", "spec.consumers[0].name"}
    assert fields[-1] == "<nil>"  # CEL rules were skipped: "some validation rules were not checked"
    assert (
        "spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10"
        in body["message"]
    )
    assert "spec.consumers[0].name: Required value" in body["message"]


def test_unknown_fields_are_pruned_or_rejected_when_strict(
    http: Any, registered: dict[str, Any], make_widget: Any
) -> None:
    manifest = make_widget("w1", extra="dropped")
    manifest["unknownTopLevel"] = 1
    status, body, headers = http.post(WIDGETS, manifest)
    assert status == 201
    assert "extra" not in body["spec"] and "unknownTopLevel" not in body
    assert 'unknown field \\"spec.extra\\"' in headers["Warning"]

    status, body, _ = http.post(WIDGETS, make_widget("w2", extra="x"), query={"fieldValidation": "Strict"})
    assert status == 400
    assert body["message"] == (
        'Widget in version "v1" cannot be handled as a Widget: '
        'strict decoding error: unknown field "spec.extra"'
    )


def test_schema_defaults_are_applied(http: Any, registered: dict[str, Any], make_widget: Any) -> None:
    _, body, _ = http.post(WIDGETS, make_widget("w1"))
    assert body["spec"]["size"] == 1 and body["spec"]["scaleMode"] == "patch"


def test_custom_resource_status_and_generation(
    http: Any, registered: dict[str, Any], make_widget: Any
) -> None:
    manifest = make_widget("w1")
    manifest["status"] = {"phase": "Forged"}
    _, body, _ = http.post(WIDGETS, manifest)
    assert "status" not in body and body["metadata"]["generation"] == 1

    _, body, _ = http.patch(f"{WIDGETS}/w1/status", {"status": {"phase": "Ready"}, "spec": {"size": 4}})
    assert body["status"] == {"phase": "Ready"} and body["spec"]["size"] == 1
    assert body["metadata"]["generation"] == 1

    _, body, _ = http.patch(f"{WIDGETS}/w1", {"spec": {"size": 2}, "status": {"phase": "Hacked"}})
    assert body["status"] == {"phase": "Ready"} and body["spec"]["size"] == 2
    assert body["metadata"]["generation"] == 2


def test_status_writes_are_validated(http: Any, widget_crd: dict[str, Any], make_widget: Any) -> None:
    status_schema = widget_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    status_schema["properties"] = {"phase": {"type": "string", "enum": ["Pending", "Ready"]}}
    assert http.post(CRDS, widget_crd)[0] == 201
    http.post(WIDGETS, make_widget("w1"))
    assert http.patch(f"{WIDGETS}/w1/status", {"status": {"phase": "Ready", "extra": 1}})[0] == 200
    status, body, _ = http.patch(f"{WIDGETS}/w1/status", {"status": {"phase": "Bogus"}})
    assert status == 422
    assert 'status.phase: Unsupported value: "Bogus": supported values: "Pending", "Ready"' in body["message"]
    assert http.get(f"{WIDGETS}/w1")[1]["status"] == {"phase": "Ready", "extra": 1}


def test_a_stricter_crd_ratchets_existing_objects(
    http: Any, registered: dict[str, Any], make_widget: Any
) -> None:
    http.post(WIDGETS, make_widget("w1", color="blue"))
    crd = http.get(f"{CRDS}/widgets.example.dev")[1]
    color = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "color"
    ]
    color["enum"] = ["red", "green"]
    status, updated, _ = http.put(f"{CRDS}/widgets.example.dev", crd)
    assert status == 200 and updated["metadata"]["generation"] == 2

    assert http.patch(f"{WIDGETS}/w1/status", {"status": {"phase": "Ready"}})[0] == 200  # spec unchanged
    assert http.patch(f"{WIDGETS}/w1", {"metadata": {"labels": {"a": "b"}}})[0] == 200
    status, body, _ = http.patch(f"{WIDGETS}/w1", {"spec": {"color": "purple"}})
    assert status == 422 and 'spec.color: Unsupported value: "purple"' in body["message"]
    assert http.post(WIDGETS, make_widget("w2", color="blue"))[0] == 422


def test_updates_are_validated_and_leave_the_object_unchanged(
    http: Any, registered: dict[str, Any], make_widget: Any
) -> None:
    _, created, _ = http.post(WIDGETS, make_widget("w1"))
    status, body, _ = http.patch(f"{WIDGETS}/w1", {"spec": {"model": {"version": "stable"}}})
    assert status == 422 and "pin an exact model version" in body["message"]
    replaced = copy.deepcopy(created)
    replaced["spec"]["size"] = 6
    status, body, _ = http.put(f"{WIDGETS}/w1", replaced)
    assert status == 422
    assert body["message"] == (
        'Widget.example.dev "w1" is invalid: spec: Invalid value: "object": size > 5 requires scaleMode=scale'
    )
    assert http.get(f"{WIDGETS}/w1")[1] == created


def test_custom_resource_scale_subresource(http: Any, registered: dict[str, Any], make_widget: Any) -> None:
    http.post(WIDGETS, make_widget("w1", size=3))
    _, scale, _ = http.get(f"{WIDGETS}/w1/scale")
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 3
    _, scale, _ = http.patch(f"{WIDGETS}/w1/scale", {"spec": {"replicas": 0}})
    assert scale["spec"]["replicas"] == 0
    assert http.get(f"{WIDGETS}/w1")[1]["spec"]["size"] == 0
    status, body, _ = http.patch(f"{WIDGETS}/w1/scale", {"spec": {"replicas": 7}})
    assert status == 422 and "size > 5 requires scaleMode=scale" in body["message"]


def test_strategic_merge_patch_is_unsupported_for_custom_resources(
    http: Any, registered: dict[str, Any], make_widget: Any
) -> None:
    http.post(WIDGETS, make_widget("w1"))
    status, body, _ = http.patch(f"{WIDGETS}/w1", {"spec": {"size": 2}}, kind="strategic")
    assert status == 415 and body["reason"] == "UnsupportedMediaType"


def test_put_of_a_custom_resource_needs_a_resource_version(
    http: Any, registered: dict[str, Any], make_widget: Any
) -> None:
    http.post(WIDGETS, make_widget("w1"))
    status, body, _ = http.put(f"{WIDGETS}/w1", make_widget("w1", size=2))
    assert status == 422
    assert (
        'metadata.resourceVersion: Invalid value: "0x0": must be specified for an update' in body["message"]
    )


def test_custom_objects_api_gets_the_created_object(
    kube_client: Any, registered: dict[str, Any], make_widget: Any
) -> None:
    custom = kubernetes.client.CustomObjectsApi(kube_client)
    created = custom.create_namespaced_custom_object(
        "example.dev", "v1", "default", "widgets", make_widget("w1")
    )
    assert created["metadata"]["name"] == "w1"  # a 201, so the v37 client returns the body
    patched = custom.patch_namespaced_custom_object(
        "example.dev", "v1", "default", "widgets", "w1", {"spec": {"color": "red"}}
    )
    assert patched["spec"]["color"] == "red"
    listed = custom.list_namespaced_custom_object(
        "example.dev", "v1", "default", "widgets", field_selector="spec.color=red"
    )
    assert [item["metadata"]["name"] for item in listed["items"]] == ["w1"]


def test_crd_with_a_broken_cel_rule_is_rejected(http: Any, widget_crd: dict[str, Any]) -> None:
    schema = widget_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["properties"]["spec"]["x-kubernetes-validations"] = [{"rule": "self.size >", "message": "broken"}]
    status, body, _ = http.post(CRDS, widget_crd)
    assert status == 422
    assert "x-kubernetes-validations[0].rule" in body["message"] and "compilation failed" in body["message"]
    assert http.get("/apis/example.dev/v1")[0] == 404


def test_deleting_a_crd_deletes_its_resources_then_unregisters(
    http: Any, registered: dict[str, Any], make_widget: Any
) -> None:
    http.post(WIDGETS, make_widget("plain"))
    held = make_widget("held")
    held["metadata"]["finalizers"] = ["example.dev/cleanup"]
    http.post(WIDGETS, held)

    status, crd, _ = http.delete(f"{CRDS}/widgets.example.dev")
    assert status == 200 and crd["metadata"]["deletionTimestamp"]
    assert http.get(f"{WIDGETS}/plain")[0] == 404
    assert http.get(f"{WIDGETS}/held")[1]["metadata"]["deletionTimestamp"]
    assert http.post(WIDGETS, make_widget("late"))[0] == 405  # no new instances while terminating

    http.patch(f"{WIDGETS}/held", {"metadata": {"finalizers": None}})
    assert http.get(f"{CRDS}/widgets.example.dev")[0] == 404
    assert http.get(WIDGETS)[0] == 404
    assert http.get("/apis/example.dev/v1")[0] == 404


def test_several_served_versions_share_one_store(
    http: Any, widget_crd: dict[str, Any], make_widget: Any
) -> None:
    beta = copy.deepcopy(widget_crd["spec"]["versions"][0])
    beta.update(name="v1beta1", storage=False)
    widget_crd["spec"]["versions"].insert(0, beta)
    assert http.post(CRDS, widget_crd)[0] == 201
    manifest = make_widget("w1")
    manifest["apiVersion"] = "example.dev/v1beta1"
    assert http.post("/apis/example.dev/v1beta1/namespaces/default/widgets", manifest)[0] == 201
    _, stored, _ = http.get(f"{WIDGETS}/w1")
    assert stored["apiVersion"] == "example.dev/v1"
    _, group, _ = http.get("/apis/example.dev")
    assert group["preferredVersion"]["version"] == "v1"
    assert [v["version"] for v in group["versions"]] == ["v1", "v1beta1"]


def test_apply_manifests_puts_crds_first(
    api: ApiServerThread, widget_crd: dict[str, Any], make_widget: Any
) -> None:
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "agents"}}
    manifest = make_widget("w1")
    manifest["metadata"]["namespace"] = "agents"
    results = api.apply_manifests([manifest, widget_crd, namespace])
    assert [r["kind"] for r in results] == ["CustomResourceDefinition", "Namespace", "Widget"]
    again = api.apply_manifests([manifest])  # idempotent: merges into the existing object
    assert again[0]["metadata"]["uid"] == results[2]["metadata"]["uid"]
    assert api.call(api.emulator.get_object, "example.dev/v1/widgets", "w1", namespace="agents") is not None
