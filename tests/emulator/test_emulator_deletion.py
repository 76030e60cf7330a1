"""Deletion: finalizers, namespace termination, preconditions, and garbage collection on demand only."""

from __future__ import annotations

from typing import Any

from kubemu.server import ApiServerThread

CMS = "/api/v1/namespaces/default/configmaps"
DEPLOYS = "/apis/apps/v1/namespaces/default/deployments"


def test_finalizers_hold_the_object_until_released(http: Any) -> None:
    http.post(CMS, {"metadata": {"name": "a", "finalizers": ["example.dev/hold"]}})
    since = http.get(CMS)[1]["metadata"]["resourceVersion"]

    status, body, _ = http.delete(f"{CMS}/a", {"propagationPolicy": "Background"})
    assert status == 200
    assert body["metadata"]["deletionTimestamp"] and body["metadata"]["finalizers"] == ["example.dev/hold"]
    assert http.get(f"{CMS}/a")[0] == 200
    assert http.delete(f"{CMS}/a")[0] == 200  # deleting again changes nothing

    status, body, _ = http.patch(f"{CMS}/a", {"metadata": {"finalizers": ["example.dev/hold", "more"]}})
    assert (
        status == 422 and "no new finalizers can be added if the object is being deleted" in body["message"]
    )

    status, body, _ = http.patch(f"{CMS}/a", {"metadata": {"finalizers": None}})
    assert status == 200
    assert http.get(f"{CMS}/a")[0] == 404
    _, events = http.watch(CMS, {"resourceVersion": since, "timeoutSeconds": "0.2"})
    assert [e["type"] for e in events] == ["MODIFIED", "DELETED"]


def test_immediate_deletion_answers_a_status_for_built_ins(http: Any) -> None:
    _, created, _ = http.post(CMS, {"metadata": {"name": "a"}})
    status, body, _ = http.delete(f"{CMS}/a")
    assert status == 200
    assert body["kind"] == "Status" and body["status"] == "Success"
    assert body["details"] == {"name": "a", "kind": "configmaps", "uid": created["metadata"]["uid"]}


def test_delete_preconditions(http: Any) -> None:
    http.post(CMS, {"metadata": {"name": "a"}})
    status, body, _ = http.delete(f"{CMS}/a", {"preconditions": {"uid": "not-the-uid"}})
    assert status == 409 and "Precondition failed: UID in precondition: not-the-uid" in body["message"]
    assert http.get(f"{CMS}/a")[0] == 200


def test_deleting_a_namespace_terminates_its_content(http: Any) -> None:
    http.post("/api/v1/namespaces", {"metadata": {"name": "doomed"}})
    space = "/api/v1/namespaces/doomed/configmaps"
    http.post(space, {"metadata": {"name": "plain"}})
    http.post(space, {"metadata": {"name": "held", "finalizers": ["example.dev/hold"]}})

    status, ns, _ = http.delete("/api/v1/namespaces/doomed")
    assert status == 200 and ns["status"]["phase"] == "Terminating"
    assert http.get(f"{space}/plain")[0] == 404
    assert http.get(f"{space}/held")[1]["metadata"]["deletionTimestamp"]
    status, body, _ = http.post(space, {"metadata": {"name": "late"}})
    assert status == 403 and "because it is being terminated" in body["message"]

    http.patch(f"{space}/held", {"metadata": {"finalizers": []}})
    assert http.get("/api/v1/namespaces/doomed")[0] == 404


def test_system_namespaces_cannot_be_deleted(http: Any) -> None:
    status, body, _ = http.delete("/api/v1/namespaces/default")
    assert status == 403 and body["reason"] == "Forbidden"


def test_owner_deletion_leaves_dependents_until_garbage_is_collected(
    api: ApiServerThread, http: Any, make_deployment: Any
) -> None:
    _, owner, _ = http.post(DEPLOYS, make_deployment("web"))
    ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": owner["metadata"]["uid"]}
    http.post(CMS, {"metadata": {"name": "child", "ownerReferences": [ref]}})
    _, grandchild, _ = http.get(f"{CMS}/child")
    child_ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "child",
        "uid": grandchild["metadata"]["uid"],
    }
    http.post(CMS, {"metadata": {"name": "grandchild", "ownerReferences": [child_ref]}})
    http.post(CMS, {"metadata": {"name": "unrelated"}})

    http.delete(f"{DEPLOYS}/web")
    assert http.get(f"{CMS}/child")[0] == 200  # no garbage collector runs by itself

    deleted = api.call(api.emulator.collect_garbage)
    assert deleted == [("v1/configmaps", "default", "child"), ("v1/configmaps", "default", "grandchild")]
    assert [item["metadata"]["name"] for item in http.get(CMS)[1]["items"]] == ["unrelated"]


def test_owner_references_need_a_uid(http: Any) -> None:
    ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}
    status, body, _ = http.post(CMS, {"metadata": {"name": "child", "ownerReferences": [ref]}})
    assert status == 422 and "metadata.ownerReferences[0].uid: Required value" in body["message"]


def test_delete_collection_with_a_selector(http: Any) -> None:
    for name, app in [("a", "x"), ("b", "x"), ("c", "y")]:
        http.post(CMS, {"metadata": {"name": name, "labels": {"app": app}}})
    status, _, _ = http.delete(CMS, query={"labelSelector": "app=x"})
    assert status == 200
    assert [item["metadata"]["name"] for item in http.get(CMS)[1]["items"]] == ["c"]
