"""Creating, reading and replacing objects: metadata, status codes and Status bodies as a client sees them."""

from __future__ import annotations

from typing import Any

import kubernetes
import pytest

CMS = "/api/v1/namespaces/default/configmaps"
DEPLOYS = "/apis/apps/v1/namespaces/default/deployments"


def test_create_stamps_metadata_and_answers_201(http: Any) -> None:
    status, first, _ = http.post(CMS, {"metadata": {"name": "a"}, "data": {"k": "v"}})
    assert status == 201
    assert first["apiVersion"] == "v1" and first["kind"] == "ConfigMap"
    meta = first["metadata"]
    assert meta["namespace"] == "default"
    assert len(meta["uid"]) == 36
    assert meta["creationTimestamp"].endswith("Z")
    assert "generation" not in meta  # ConfigMaps have none, as on a real server

    _, second, _ = http.post(CMS, {"metadata": {"name": "b"}})
    assert int(second["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert second["metadata"]["uid"] != meta["uid"]


def test_get_returns_what_was_stored(http: Any) -> None:
    _, created, _ = http.post(CMS, {"metadata": {"name": "a"}, "data": {"k": "v"}})
    status, fetched, _ = http.get(f"{CMS}/a")
    assert status == 200
    assert fetched == created


def test_duplicate_create_is_409_already_exists(http: Any) -> None:
    http.post(CMS, {"metadata": {"name": "a"}})
    status, body, _ = http.post(CMS, {"metadata": {"name": "a"}})
    assert status == 409
    assert body["kind"] == "Status" and body["reason"] == "AlreadyExists"
    assert body["message"] == 'configmaps "a" already exists'
    assert body["details"] == {"name": "a", "kind": "configmaps"}


def test_missing_object_is_404_status(http: Any) -> None:
    status, body, _ = http.get(f"{DEPLOYS}/nope")
    assert status == 404
    assert body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'deployments.apps "nope" not found',
        "reason": "NotFound",
        "code": 404,
        "details": {"name": "nope", "kind": "deployments", "group": "apps"},
    }


def test_unknown_resource_is_404(http: Any) -> None:
    status, body, _ = http.get("/apis/nowhere.dev/v1/namespaces/default/things")
    assert status == 404
    assert body["message"] == "the server could not find the requested resource"


def test_generate_name_makes_a_unique_name(http: Any) -> None:
    names = {http.post(CMS, {"metadata": {"generateName": "job-"}})[1]["metadata"]["name"] for _ in range(5)}
    assert len(names) == 5
    assert all(name.startswith("job-") and len(name) == len("job-") + 5 for name in names)


def test_create_in_a_missing_namespace_is_404(http: Any) -> None:
    status, body, _ = http.post("/api/v1/namespaces/ghost/configmaps", {"metadata": {"name": "a"}})
    assert status == 404
    assert body["message"] == 'namespaces "ghost" not found'


def test_invalid_names_and_labels_are_422_with_causes(http: Any) -> None:
    status, body, _ = http.post(CMS, {"metadata": {"name": "Bad_Name"}})
    assert status == 422
    assert body["reason"] == "Invalid"
    assert body["message"].startswith(
        'ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": '
        "a lowercase RFC 1123 subdomain"
    )
    assert body["details"]["causes"][0]["field"] == "metadata.name"

    status, body, _ = http.post(CMS, {"metadata": {"name": "ok", "labels": {"hash": "x" * 64}}})
    assert status == 422
    assert "must be no more than 63 characters" in body["message"]


def test_namespace_mismatch_and_preset_resource_version_are_rejected(http: Any) -> None:
    status, body, _ = http.post(CMS, {"metadata": {"name": "a", "namespace": "kube-system"}})
    assert status == 400
    assert "does not match the namespace" in body["message"]
    status, body, _ = http.post(CMS, {"metadata": {"name": "a", "resourceVersion": "5"}})
    assert status == 500
    assert body["message"] == "resourceVersion should not be set on objects to be created"


def test_deployment_defaults_and_validation(http: Any, make_deployment: Any) -> None:
    manifest = make_deployment("web")
    del manifest["spec"]["replicas"]
    status, dep, _ = http.post(DEPLOYS, manifest)
    assert status == 201
    assert dep["spec"]["replicas"] == 1  # defaulted by the server
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    assert dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert dep["metadata"]["generation"] == 1
    assert "status" not in dep  # no controller runs

    broken = make_deployment("broken")
    broken["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
    status, body, _ = http.post(DEPLOYS, broken)
    assert status == 422
    assert "`selector` does not match template `labels`" in body["message"]


def test_dry_run_does_not_store(http: Any) -> None:
    status, body, _ = http.post(CMS, {"metadata": {"name": "a"}}, query={"dryRun": "All"})
    assert status == 201 and body["metadata"]["name"] == "a"
    assert http.get(f"{CMS}/a")[0] == 404


def test_put_replaces_and_detects_stale_resource_versions(http: Any) -> None:
    _, cm, _ = http.post(CMS, {"metadata": {"name": "a"}, "data": {"x": "1"}})
    stale = dict(cm)
    cm["data"] = {"y": "2"}
    status, replaced, _ = http.put(f"{CMS}/a", cm)
    assert status == 200
    assert replaced["data"] == {"y": "2"}
    assert int(replaced["metadata"]["resourceVersion"]) > int(cm["metadata"]["resourceVersion"])

    status, body, _ = http.put(f"{CMS}/a", stale)
    assert status == 409
    assert body["reason"] == "Conflict"
    assert body["message"] == (
        'Operation cannot be fulfilled on configmaps "a": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )


def test_stale_resource_version_in_a_merge_patch_is_409(http: Any) -> None:
    _, cm, _ = http.post(CMS, {"metadata": {"name": "a"}})
    http.patch(f"{CMS}/a", {"data": {"x": "1"}})
    status, body, _ = http.patch(
        f"{CMS}/a", {"metadata": {"resourceVersion": cm["metadata"]["resourceVersion"]}, "data": {"x": "2"}}
    )
    assert status == 409 and body["reason"] == "Conflict"


def test_noop_update_keeps_the_resource_version(http: Any) -> None:
    _, cm, _ = http.post(CMS, {"metadata": {"name": "a"}, "data": {"x": "1"}})
    _, same, _ = http.patch(f"{CMS}/a", {"data": {"x": "1"}})
    assert same["metadata"]["resourceVersion"] == cm["metadata"]["resourceVersion"]


@pytest.mark.parametrize(
    "kind, patch, expected",
    [
        ("merge", {"data": {"b": "2", "a": None}}, {"b": "2"}),
        (
            "json",
            [{"op": "add", "path": "/data/b", "value": "2"}, {"op": "remove", "path": "/data/a"}],
            {"b": "2"},
        ),
        ("strategic", {"data": {"b": "2", "a": None}}, {"b": "2"}),
    ],
)
def test_patch_content_types(http: Any, kind: str, patch: Any, expected: dict[str, str]) -> None:
    http.post(CMS, {"metadata": {"name": "a"}, "data": {"a": "1"}})
    status, body, _ = http.patch(f"{CMS}/a", patch, kind=kind, query={"fieldManager": "tests"})
    assert status == 200, body
    assert body["data"] == expected


def test_json_patch_failing_test_op_is_422(http: Any) -> None:
    http.post(CMS, {"metadata": {"name": "a"}})
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
        {"op": "add", "path": "/data", "value": {"x": "1"}},
    ]
    status, body, _ = http.patch(f"{CMS}/a", ops, kind="json")
    assert status == 422 and body["reason"] == "Invalid"
    assert "data" not in http.get(f"{CMS}/a")[1]


def test_strategic_merge_merges_containers_by_name(http: Any, make_deployment: Any) -> None:
    http.post(DEPLOYS, make_deployment("web"))
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "main", "image": "example/agent:2.0"},
                        {
                            "name": "sidecar",
                            "image": "example/proxy:1.0",
                            "env": [{"name": "A", "value": "1"}],
                        },
                    ]
                }
            }
        }
    }
    status, dep, _ = http.patch(f"{DEPLOYS}/web", patch, kind="strategic")
    assert status == 200
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"]) for c in containers] == [
        ("main", "example/agent:2.0"),
        ("sidecar", "example/proxy:1.0"),
    ]
    assert containers[0]["terminationMessagePath"] == "/dev/termination-log"  # kept from before

    delete = {"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}}}}
    _, dep, _ = http.patch(f"{DEPLOYS}/web", delete, kind="strategic")
    assert [c["name"] for c in dep["spec"]["template"]["spec"]["containers"]] == ["main"]


def test_server_side_apply_creates_then_merges(http: Any) -> None:
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"a": "1"}}
    status, body, _ = http.patch(f"{CMS}/applied", manifest, kind="apply", query={"fieldManager": "me"})
    assert status == 201
    manifest["data"] = {"b": "2"}
    status, body, _ = http.patch(f"{CMS}/applied", manifest, kind="apply", query={"fieldManager": "me"})
    assert status == 200
    assert body["data"] == {"a": "1", "b": "2"}  # merged: no field ownership is emulated


def test_generation_counts_spec_changes_only(http: Any, make_deployment: Any) -> None:
    http.post(DEPLOYS, make_deployment("web"))
    _, dep, _ = http.patch(f"{DEPLOYS}/web", {"metadata": {"labels": {"tier": "x"}}})
    assert dep["metadata"]["generation"] == 1
    _, dep, _ = http.patch(f"{DEPLOYS}/web", {"spec": {"paused": True}})
    assert dep["metadata"]["generation"] == 2
    _, dep, _ = http.patch(f"{DEPLOYS}/web/status", {"status": {"replicas": 3}})
    assert dep["metadata"]["generation"] == 2


def test_status_subresource_isolation(http: Any, make_deployment: Any) -> None:
    http.post(DEPLOYS, make_deployment("web"))
    _, dep, _ = http.patch(f"{DEPLOYS}/web", {"status": {"replicas": 99}, "spec": {"replicas": 2}})
    assert "status" not in dep and dep["spec"]["replicas"] == 2  # the main endpoint ignores .status

    _, dep, _ = http.patch(
        f"{DEPLOYS}/web/status",
        {"status": {"replicas": 2}, "spec": {"replicas": 7}, "metadata": {"labels": {"hacked": "yes"}}},
    )
    assert dep["status"] == {"replicas": 2}
    assert dep["spec"]["replicas"] == 2  # /status ignores everything but .status
    assert "hacked" not in dep["metadata"]["labels"]

    dep["status"] = {"replicas": 1}
    dep["spec"]["replicas"] = 5
    _, dep, _ = http.put(f"{DEPLOYS}/web", dep)
    assert dep["status"] == {"replicas": 2} and dep["spec"]["replicas"] == 5


def test_scale_subresource_round_trip_with_the_kubernetes_client(
    kube_client: Any, http: Any, make_deployment: Any
) -> None:
    apps = kubernetes.client.AppsV1Api(kube_client)
    http.post(DEPLOYS, make_deployment("web", replicas=3))

    scale = apps.read_namespaced_deployment_scale("web", "default")
    assert scale.kind == "Scale" and scale.api_version == "autoscaling/v1"
    assert scale.spec.replicas == 3 and scale.status.selector == "app=web"

    patched = apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 0}})
    assert patched.spec.replicas == 0
    assert apps.read_namespaced_deployment("web", "default").spec.replicas == 0

    scale = apps.read_namespaced_deployment_scale("web", "default")
    scale.spec.replicas = 4
    replaced = apps.replace_namespaced_deployment_scale("web", "default", scale)
    assert replaced.spec.replicas == 4
    deployment = apps.read_namespaced_deployment("web", "default")
    assert deployment.spec.replicas == 4
    assert deployment.metadata.generation == 3

    with pytest.raises(kubernetes.client.ApiException) as e:  # the old Scale carries a stale resourceVersion
        apps.replace_namespaced_deployment_scale("web", "default", scale)
    assert e.value.status == 409


def test_statefulset_scale(http: Any, make_deployment: Any) -> None:
    manifest = make_deployment("db", replicas=2)
    manifest["kind"] = "StatefulSet"
    manifest["spec"]["serviceName"] = "db"
    path = "/apis/apps/v1/namespaces/default/statefulsets"
    assert http.post(path, manifest)[0] == 201
    _, scale, _ = http.put(f"{path}/db/scale", {"metadata": {"name": "db"}, "spec": {"replicas": 0}})
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 0
    assert http.get(f"{path}/db")[1]["spec"]["replicas"] == 0
    status, body, _ = http.patch(f"{path}/db/scale", {"spec": {"replicas": -1}})
    assert status == 422 and "spec.replicas: Invalid value: -1" in body["message"]


def test_kubernetes_client_typed_calls(kube_client: Any) -> None:
    core = kubernetes.client.CoreV1Api(kube_client)
    created = core.create_namespaced_config_map(
        "default", {"metadata": {"name": "typed"}, "data": {"a": "1"}}
    )
    assert created.metadata.resource_version
    with pytest.raises(kubernetes.client.ApiException) as e:
        core.create_namespaced_config_map("default", {"metadata": {"name": "typed"}})
    assert e.value.status == 409
    names = [ns.metadata.name for ns in core.list_namespace().items]
    assert {"default", "kube-system", "kube-public"} <= set(names)
    core.delete_namespaced_config_map("typed", "default")
    assert core.list_namespaced_config_map("default").items == []


def test_an_immutable_configmap_keeps_its_data_as_on_a_real_server(http: Any) -> None:
    """A pinned bundle revision or an evidence record cannot be changed silently: 422, only labels move."""
    http.post(CMS, {"metadata": {"name": "pinned"}, "data": {"bundle.json": "{}"}, "immutable": True})
    refusal = "field is immutable when `immutable` is set"
    for kind, patch in [
        ("merge", {"data": {"bundle.json": '{"prompt": "changed"}'}}),
        ("merge", {"data": {"extra": "added"}}),
        ("merge", {"binaryData": {"blob": "AAAA"}}),
        ("merge", {"immutable": False}),
        ("json", [{"op": "remove", "path": "/data/bundle.json"}]),
    ]:
        status, body, _ = http.patch(f"{CMS}/pinned", patch, kind=kind)
        assert status == 422, (patch, body)
        assert body["reason"] == "Invalid" and refusal in body["message"], body["message"]
    _, current, _ = http.get(f"{CMS}/pinned")
    status, body, _ = http.put(f"{CMS}/pinned", {**current, "data": {"bundle.json": "[]"}})
    assert status == 422 and body["message"] == (
        'ConfigMap "pinned" is invalid: data: Forbidden: field is immutable when `immutable` is set'
    )
    assert http.get(f"{CMS}/pinned")[1]["data"] == {"bundle.json": "{}"}

    status, labelled, _ = http.patch(f"{CMS}/pinned", {"metadata": {"labels": {"tourniquet.dev/verdict": "bad"}}})
    assert status == 200 and labelled["metadata"]["labels"] == {"tourniquet.dev/verdict": "bad"}
    assert http.delete(f"{CMS}/pinned")[0] == 200  # deleting is allowed

    # A mutable one may become immutable, and a Secret is held the same way.
    http.post(CMS, {"metadata": {"name": "open"}, "data": {"a": "1"}})
    assert http.patch(f"{CMS}/open", {"data": {"a": "2"}, "immutable": True})[0] == 200
    assert http.patch(f"{CMS}/open", {"data": {"a": "3"}})[0] == 422
    secrets = "/api/v1/namespaces/default/secrets"
    http.post(secrets, {"metadata": {"name": "key"}, "data": {"k": "dg=="}, "immutable": True})
    assert http.patch(f"{secrets}/key", {"data": {"k": "dw=="}})[0] == 422
